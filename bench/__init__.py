"""Benchmarks and evidence runs of this project (outside the installed library): run from the repository
root as modules, e.g. ``python -m bench.effect --identities 20`` (docs/EVIDENCE.md, docs/PERFORMANCE.md)."""


def save_json(path, record: dict) -> None:
    """A bench's record as indented JSON at ``path`` (its folder made), when a path was given."""
    if path is None:
        return
    import json
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(record, indent=1))
