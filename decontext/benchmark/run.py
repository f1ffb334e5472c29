"""Running a benchmark: every cell of a spec without a record, editor by editor, each written as its record.

Apart from ``cells`` (what a cell is and how it is computed) and ``real`` (the environment of a real editor,
which builds on the toy one): this module is the one that knows both.
"""

from __future__ import annotations

import time
from pathlib import Path

from .cells import Cache, ToyEnvironment, plan
from .spec import REAL_EDITORS, Spec


def environment(spec: Spec, editor_name: str, cache: Cache, model: str | None, log=print):
    """The environment of one of the spec's editors (a toy, or a real one with ``model`` overriding its
    weights, e.g. ``tiny``)."""
    if editor_name in REAL_EDITORS:
        from .real import RealEnvironment

        return RealEnvironment(spec, editor_name, cache, model, log)
    return ToyEnvironment(spec, editor_name, cache, log)


def seconds_since(began: float) -> float:
    return round(time.perf_counter() - began, 2)


def run_benchmark(
    spec: Spec, out: str | Path, overwrite: bool = False, model: str | None = None, command: str = "", log=print
) -> dict:
    """Compute every cell of ``spec`` without a record in ``out`` (see ``records``); returns
    ``{"cells": n, "computed": [keys], "skipped": n, "seconds": s}``. Loads nothing when every cell is recorded."""
    from ..runs import output_lock
    from .records import claim_folder, make_record, record_path, write_record

    out = Path(out)
    began = time.perf_counter()
    claim_folder(out, spec, overwrite)
    cells = plan(spec)
    report = {"cells": len(cells), "computed": [], "skipped": 0, "seconds": 0.0}
    with output_lock(out / ".lock"):
        todo = [c for c in cells if not record_path(out, c).exists()]
        report["skipped"] = len(cells) - len(todo)
        if not todo:
            log(f"{out}: all {len(cells)} cells are recorded; nothing to compute")
            return report
        cache = Cache(out / "cache")
        position = {c.key: k for k, c in enumerate(cells)}
        for editor_name in dict.fromkeys(c.editor for c in todo):
            env = environment(spec, editor_name, cache, model or spec.model or None, log)
            for cell in (c for c in todo if c.editor == editor_name):
                started = time.perf_counter()
                computed = env.values(cell)
                record = make_record(spec, cell, computed, env, command, seconds_since(started))
                record["cell"]["position"] = position[cell.key]  # the spec's order, for the report
                write_record(out, cell, record)
                report["computed"].append(cell.key)
                log(
                    f"[{len(report['computed']) + report['skipped']}/{len(cells)}] {cell.key}: "
                    f"{record['seconds']:.1f} s"
                )
        report["cache_made"] = list(cache.made)
    report["seconds"] = seconds_since(began)
    return report
