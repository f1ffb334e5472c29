#!/usr/bin/env python
"""The tables of docs/EVIDENCE.md that committed raw results can give, rendered from those results alone.

Each generated table sits between two HTML comments in the doc that name it, its source files and this
command; everything between them is this module's output, nothing else:

    python -m bench.evidence_tables           # rewrite the generated blocks of docs/EVIDENCE.md
    python -m bench.evidence_tables --check   # exit 1 (and name the block) if a block differs from its records

A table of bench/effect.py is rendered by that bench's own formatter (``effect.table``) from its saved
``--json``. Tables whose raw results were never committed (the 2026-11-23 effect table at 8/16/32, the
robustness table of issue 15) are not generated: their numbers exist only in the doc.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "EVIDENCE.md"
RAW = "bench/results/cpu_2026-12-02"
COMMAND = "python -m bench.evidence_tables"


def load_effect(path: str) -> tuple[dict, dict, float]:
    """A bench/effect.py ``--json`` as the run held it: (scores per condition as arrays, per-condition PSNR and
    seconds, the way from clean to another person)."""
    raw = json.loads((ROOT / path).read_text(encoding="utf-8"))
    results = {key: {m: np.asarray(raw[key][m]) for m in ("toy_identity", "edit_success")} for key in raw}
    extra = {key: {k: v for k, v in raw[key].items() if k in ("psnr", "seconds_per_image")} for key in raw}
    extra = {key: info for key, info in extra.items() if info}
    way = results["clean"]["toy_identity"].mean() - results["another person"]["toy_identity"].mean()
    return results, extra, way


def effect_grid_v3() -> str:
    from bench.effect import table

    return "\n".join(table(*load_effect(f"{RAW}/toy_v3/effect_v3.json")))


# (row label, condition in the effect JSON) of the side-by-side grid; the protector's v3 cell is a transfer
GRID_ROWS = (
    ("DeContext, paper window (t in [0.98, 1), single 0-2)", "decontext@16"),
    ("DeContext, all timesteps", "decontext_all_t@16"),
    ("PhotoGuard encoder", "encoder@16"),
    ("flow_loss (diff-PGD-style denoising loss)", "flow_loss@16"),
    ("DANP", "danp@16"),
    ("amortized: the shipped `toy-decontext` protector (one forward pass)", "amortized@16"),
)
GRID_NOTES = {("toy-v3", "amortized@16"): ("**{}**", " (trained on v1: a transfer)")}


def effect_grid_side() -> str:
    """v1 beside v3: v1 from one run; v3 from two runs of the same seed (the DeContext and encoder rows from
    toy_v3/effect_v3.json, the rest from grid_side/effect_v3.json), merged only if their clean, another-person
    and noise scores are equal value for value."""
    from bench.effect import paired_bootstrap

    v1 = load_effect(f"{RAW}/grid_side/effect_v1.json")
    v3, v3_first = load_effect(f"{RAW}/grid_side/effect_v3.json"), load_effect(f"{RAW}/toy_v3/effect_v3.json")
    for key in ("clean", "another person", "noise@16"):
        for metric in ("toy_identity", "edit_success"):
            if not np.array_equal(v3[0][key][metric], v3_first[0][key][metric]):
                raise ValueError(f"the two toy-v3 runs differ in {key} {metric}: their rows cannot share a column")
    v3 = ({**v3_first[0], **v3[0]}, {**v3_first[1], **v3[1]}, v3[2])
    columns = {"toy-v1": v1, "toy-v3": v3}

    def pair(results: dict, key: str) -> str:
        return f"{np.mean(results[key]['toy_identity']):.3f} / {np.mean(results[key]['edit_success']):.3f}"

    def effect(column: str, key: str) -> str:
        results, _, way = columns[column]
        mean, low, high = paired_bootstrap(results[key]["toy_identity"], results["noise@16"]["toy_identity"])
        bold, note = GRID_NOTES.get((column, key), ("{}", ""))
        return bold.format(f"{mean:+.3f} [{low:+.3f}, {high:+.3f}], {-mean / way:.0%}") + note

    def seconds(column: str) -> str:
        extra = columns[column][1]
        return " / ".join(f"{extra[k]['seconds_per_image']:.1f}" for k in ("decontext@16", "flow_loss@16", "danp@16"))

    lines = [
        "| condition (identity diff vs noise @16 [95% CI], share of the way to another person) "
        "| `toy-v1` (world v1, colour) | `toy-v3` (world v3, shape) |",
        "|---|---|---|",
        f"| clean identity / edit success | {pair(v1[0], 'clean')} | {pair(v3[0], 'clean')} |",
        f"| noise @16 | {pair(v1[0], 'noise@16')} | {pair(v3[0], 'noise@16')} |",
        *(f"| {label} | {effect('toy-v1', key)} | {effect('toy-v3', key)} |" for label, key in GRID_ROWS),
        f"| PGD seconds per image (DeContext / flow_loss / DANP) | {seconds('toy-v1')} | {seconds('toy-v3')} |",
        "",
        '("share of the way" = -diff / (clean - another person), the neighbour in the list: '
        f"{v1[2]:.3f} on v1, {v3[2]:.3f} on v3.)",
    ]
    return "\n".join(lines)


TOY_RUN = "bench/results/toy"


def toy_benchmark() -> str:
    """The `toy` spec's records as they stand (a run resumed session by session): per editor and budget, the
    robust effect of every method and its effect after each attacker, by the benchmark report's own tables."""
    from decontext.benchmark.cells import plan
    from decontext.benchmark.report import PARTIAL, folder_results, markdown_table, tables, under_way
    from decontext.benchmark.spec import validate

    folder = ROOT / TOY_RUN
    spec = json.loads((folder / "spec.json").read_text(encoding="utf-8"))
    res = folder_results(folder)
    total = len(plan(validate(spec["spec"])))
    lines = [
        f"{res['cells']} of the spec's {total} cells recorded (spec digest {spec['digest']}); "
        f"{res['seconds'] / 3600:.1f} h of cell compute in the records."
    ]
    if under_way(res):
        lines += ["", PARTIAL]
    for title, header, rows in tables(res):
        if "robust effect" in title or "effect after each attacker" in title:
            lines += ["", f"**{title}**", "", *markdown_table(header, rows)]
    return "\n".join(lines)


# block name -> (its raw sources, the function that renders it)
BLOCKS = {
    "toy-benchmark": ((f"{TOY_RUN}/spec.json", f"{TOY_RUN}/records"), toy_benchmark),
    "effect-grid-v3": ((f"{RAW}/toy_v3/effect_v3.json",), effect_grid_v3),
    "effect-grid-v1-v3": (
        (f"{RAW}/grid_side/effect_v1.json", f"{RAW}/grid_side/effect_v3.json", f"{RAW}/toy_v3/effect_v3.json"),
        effect_grid_side,
    ),
}


def begin_marker(name: str) -> str:
    sources = ", ".join(BLOCKS[name][0])
    return f"<!-- begin generated table {name}: from {sources} by `{COMMAND}` -->"


def end_marker(name: str) -> str:
    return f"<!-- end generated table {name} -->"


def _span(doc: str, name: str) -> tuple[int, int]:
    """Where the block's text (between its markers, without them) is in ``doc``."""
    pattern = re.escape(begin_marker(name)) + r"\n(.*?)" + re.escape(end_marker(name))
    found = list(re.finditer(pattern, doc, flags=re.DOTALL))
    if len(found) != 1:
        raise ValueError(f"docs/EVIDENCE.md: expected one block {name!r} between its markers, found {len(found)}")
    return found[0].span(1)


def committed(doc: str, name: str) -> str:
    start, end = _span(doc, name)
    return doc[start:end]


def render(name: str) -> str:
    return BLOCKS[name][1]() + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 if a block differs")
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args(argv)
    doc = args.doc.read_text(encoding="utf-8")
    stale = []
    for name in BLOCKS:
        text = render(name)
        if committed(doc, name) != text:
            stale.append(name)
            start, end = _span(doc, name)
            doc = doc[:start] + text + doc[end:]
    if args.check:
        for name in stale:
            print(f"{args.doc}: block {name} differs from what its records give ({COMMAND} rewrites it)")
        return 1 if stale else 0
    if stale:
        args.doc.write_text(doc, encoding="utf-8")
    print(f"{args.doc}: {len(BLOCKS)} generated blocks, {len(stale)} rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
