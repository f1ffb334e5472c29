"""One JSON record per cell, and the run folder that holds them.

``DIR/spec.json``: the spec and its digest (a run with another digest is refused unless ``--overwrite``,
which clears the records and the cache first); ``DIR/records/<cell>.json``: one record per cell,
written atomically when the cell is done (``images.write_json_atomic``), so a killed run resumes at the
first cell without a record and a finished run recomputes nothing; ``DIR/cache/``: what cells share.

A record: ``schema``, ``spec``, ``spec_digest``, ``cell`` (editor, method, budget, attacker), ``commit``,
``command``, ``seeds``, ``library_versions``, ``seconds`` (this cell's own compute; shared work is
counted by the cell that made it), ``identities`` and ``edits`` (the paired axes), ``values`` (per edit
and identity: identity and edit success of the method, of the noise control and of the clean photo
after the attacker; per identity: input PSNR and the attacker's cost to the clean photo), ``reference``
(the clean and another person's edits without attack: the denominator of "share of the way"), and
``attacker_info`` (a trained attacker's data and settings, e.g. the remover's training identities).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from ..images import write_json_atomic
from .spec import SCHEMA_VERSION, Spec


class FolderError(RuntimeError):
    """DIR holds another spec's records (exit 2: nothing is touched)."""


def commit() -> str | None:
    """The git commit of the code that ran (None outside a checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def refusal(out: Path, spec: Spec) -> str | None:
    """Why a run of ``spec`` may not use ``out`` without ``--overwrite`` (it holds another spec's records, or
    records without spec.json), as the FolderError says it; None when it may."""
    out = Path(out)
    marker = out / "spec.json"
    if marker.exists():
        recorded = json.loads(marker.read_text())
        if recorded.get("digest") == spec.digest:
            return None
        return (
            f"{out} holds the records of spec {recorded.get('name')!r} (digest {recorded.get('digest')}), "
            f"not of {spec.name!r} ({spec.digest}); pass --overwrite to replace them, or choose another --out"
        )
    if (out / "records").exists():
        return f"{out}/records exists without spec.json; pass --overwrite or choose another --out"
    return None


def claim_folder(out: Path, spec: Spec, overwrite: bool) -> None:
    """Make ``out`` this spec's folder: new, already this spec's, or (``overwrite``) cleared."""
    out.mkdir(parents=True, exist_ok=True)
    marker = out / "spec.json"
    problem = refusal(out, spec)
    if problem is None:
        if marker.exists():  # already this spec's
            return
    elif not overwrite:
        raise FolderError(problem)
    elif marker.exists():  # another spec's: its records and cache go (records without spec.json are kept)
        for sub in ("records", "cache"):
            shutil.rmtree(out / sub, ignore_errors=True)
    write_json_atomic(
        {"name": spec.name, "digest": spec.digest, "schema": SCHEMA_VERSION, "spec": spec.to_dict()}, marker
    )


def record_path(out: Path, cell) -> Path:
    return Path(out) / "records" / f"{cell.key}.json"


def unrecorded(out: Path, cells: list) -> list:
    """Those of ``cells`` without a record in ``out``, in their order."""
    return [c for c in cells if not record_path(out, c).exists()]


def make_record(spec: Spec, cell, computed: dict, env, command: str, seconds: float) -> dict:
    from ..runs import library_versions

    return {
        "schema": SCHEMA_VERSION,
        "spec": spec.name,
        "spec_digest": spec.digest,
        "cell": cell.to_dict(),
        "commit": commit(),
        "command": command,
        "seeds": {
            "spec": spec.seed,
            "identities": int(spec.identities.get("seed", spec.seed)),
            "edits": int(spec.edits.get("seed", spec.seed)),
            "protection": spec.seed,
            "attacker": spec.seed,
        },
        "library_versions": library_versions(),
        "seconds": seconds,
        "identities": env.identities,
        "edits": env.edit_names,
        "values": computed["values"],
        "reference": env.reference(),
        "attacker_info": computed["attacker_info"],
    }


def write_record(out: Path, cell, record: dict) -> Path:
    path = record_path(out, cell)
    write_json_atomic(record, path)
    return path


def read_records(out: Path) -> list[dict]:
    """Every record of a run folder, in file-name order."""
    folder = Path(out) / "records"
    if not folder.is_dir():
        raise FileNotFoundError(f"{out}: no records/ (run the benchmark into it first)")
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
