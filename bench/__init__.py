"""Benchmarks and evidence runs of this project (outside the installed library): run from the repository
root as modules, e.g. ``python -m bench.effect --identities 20`` (docs/EVIDENCE.md, docs/PERFORMANCE.md)."""
