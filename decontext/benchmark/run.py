"""Running a benchmark: every cell of a spec without a record, editor by editor, each written as its record.

Apart from ``cells`` (what a cell is and how it is computed) and ``real`` (the environment of a real editor,
which builds on the toy one): this module is the one that knows both.
"""

from __future__ import annotations

import fnmatch
import time
from pathlib import Path

from .cells import Cache, Cell, ToyEnvironment, plan
from .spec import REAL_EDITORS, Spec, SpecError


def environment(spec: Spec, editor_name: str, cache: Cache, model: str | None, log=print):
    """The environment of one of the spec's editors (a toy, or a real one with ``model`` overriding its
    weights, e.g. ``tiny``)."""
    if editor_name in REAL_EDITORS:
        from .real import RealEnvironment

        return RealEnvironment(spec, editor_name, cache, model, log)
    return ToyEnvironment(spec, editor_name, cache, log)


def seconds_since(began: float) -> float:
    return round(time.perf_counter() - began, 2)


def select(cells: list[Cell], patterns: list[str] | None) -> list[Cell]:
    """The cells whose key matches one of the shell-style ``patterns`` (``*@16__*``, ``toy-v3__*``), in the
    spec's order; all of them when ``patterns`` is None. A pattern that matches no cell of the spec is refused
    (SpecError naming it and some keys) before anything is made or loaded, so a typo cannot pass for "nothing
    left to do"."""
    if patterns is None:
        return list(cells)
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(c.key, p) for c in cells)]
    if unmatched:
        examples = ", ".join(c.key for c in cells[:3])
        raise SpecError(
            f"--cells {' '.join(unmatched)}: matches no cell of this spec ({len(cells)} cells, e.g. {examples}; "
            "a key is EDITOR__METHOD@BUDGET__ATTACKER)"
        )
    return [c for c in cells if any(fnmatch.fnmatchcase(c.key, p) for p in patterns)]


def pending(spec: Spec, out: str | Path, cells: list[str] | None = None) -> dict:
    """What a run of ``spec`` into ``out`` would compute, touching nothing and loading no model (``--dry-run``):
    ``{"cells": n selected, "recorded": n, "left": [Cell], "refused": why or None}``. ``refused``: the reason a
    run refuses ``out`` without ``--overwrite`` (``records.refusal``); then nothing in it counts as recorded."""
    from .records import refusal, unrecorded

    chosen = select(plan(spec), cells)
    refused = refusal(Path(out), spec)
    left = chosen if refused else unrecorded(Path(out), chosen)
    return {"cells": len(chosen), "recorded": len(chosen) - len(left), "left": left, "refused": refused}


def describe_pending(spec: Spec, out: str | Path, state: dict) -> list[str]:
    """``pending``'s answer in lines: the totals, then what is left per editor and budget, by method, in the
    spec's order."""
    recorded, left = state["recorded"], len(state["left"])
    lines = [f"{spec.name} in {out}: {recorded} of {state['cells']} cells recorded, {left} to compute"]
    if state["refused"]:
        lines.append(f"  a run is refused: {state['refused']}")
    groups: dict[str, dict[str, int]] = {}
    for c in state["left"]:
        by_method = groups.setdefault(f"{c.editor}@{c.budget:g}", {})
        by_method[c.method] = by_method.get(c.method, 0) + 1
    for group, by_method in groups.items():
        counts = ", ".join(f"{m} {n}" for m, n in by_method.items())
        lines.append(f"  {group}: {sum(by_method.values())} left ({counts})")
    return lines


def run_benchmark(
    spec: Spec,
    out: str | Path,
    overwrite: bool = False,
    model: str | None = None,
    command: str = "",
    log=print,
    cells: list[str] | None = None,
    stop_after: float | None = None,
) -> dict:
    """Compute every cell of ``spec`` without a record in ``out`` (see ``records``), or only those whose key
    matches one of ``cells`` (``select``); with ``stop_after`` (seconds), start no new cell once that much time
    has passed (the first cell always starts), so a long spec runs in windows, each going on where the last
    stopped. Returns
    ``{"cells": n, "computed": [keys], "skipped": n, "left": n, "seconds": s}``; ``left``: the selected cells
    still without a record. Loads nothing when every selected cell is recorded."""
    from ..runs import output_lock
    from .records import claim_folder, make_record, unrecorded, write_record

    out = Path(out)
    began = time.perf_counter()
    every = plan(spec)
    chosen = select(every, cells)
    claim_folder(out, spec, overwrite)
    report = {"cells": len(chosen), "computed": [], "skipped": 0, "left": 0, "seconds": 0.0}
    with output_lock(out / ".lock"):
        todo = unrecorded(out, chosen)
        report["skipped"] = len(chosen) - len(todo)
        report["left"] = len(todo)
        if not todo:
            log(f"{out}: all {len(chosen)} {'selected ' if cells else ''}cells are recorded; nothing to compute")
            return report
        cache = Cache(out / "cache")
        position = {c.key: k for k, c in enumerate(every)}
        env, env_name = None, None
        for cell in todo:  # the spec's order: one editor's cells after another (``plan``)
            if stop_after is not None and report["computed"] and time.perf_counter() - began >= stop_after:
                break
            if env_name != cell.editor:  # one editor's models at a time: the last let go first
                env_name, env = cell.editor, None
                env = environment(spec, cell.editor, cache, model or spec.model or None, log)
            started = time.perf_counter()
            computed = env.values(cell)
            record = make_record(spec, cell, computed, env, command, seconds_since(started))
            record["cell"]["position"] = position[cell.key]  # the spec's order, for the report
            write_record(out, cell, record)
            report["computed"].append(cell.key)
            report["left"] -= 1
            log(f"[{len(report['computed']) + report['skipped']}/{len(chosen)}] {cell.key}: {record['seconds']:.1f} s")
        if report["left"]:
            log(
                f"stopped after {seconds_since(began) / 60:.0f} min (--stop-after) with {report['left']} cells left; "
                "the same command goes on from there"
            )
        report["cache_made"] = list(cache.made)
    report["seconds"] = seconds_since(began)
    return report
