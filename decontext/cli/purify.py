"""``decontext purify``: purified copies of a run folder's protected images (docs/ROBUSTNESS.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="decontext purify",
        description="Purified copies of a run folder's protected images (docs/ROBUSTNESS.md); "
        "edit them into edits/<condition>@<breaker> and compute_metrics reports them beside the unpurified numbers.",
    )
    ap.add_argument("--run", required=True, help="run folder (runs/<name>)")
    ap.add_argument(
        "--breakers",
        nargs="+",
        required=True,
        help="breaker specs: jpeg, jpeg:quality=50, resize, blur, noise, noise_upscale, webp, vae",
    )
    ap.add_argument(
        "--conditions",
        nargs="+",
        default=["protected"],
        help="conditions whose images are purified (default: protected)",
    )
    ap.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the random breakers (each image's own from it and its file name; default 0)",
    )
    ap.add_argument("--device", default="auto", help="for the vae breaker: where the editor's VAE runs")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def main(argv=None) -> int:
    """``decontext purify --run runs/X --breakers jpeg resize blur``: the run-folder stage."""
    args = parser().parse_args(argv)
    from ..purify import parse_breakers, purify_run
    from ..runs import purified_condition

    try:
        breakers = parse_breakers(args.breakers)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    editor = None
    if any(b.kind == "vae" for b in breakers):
        from ..editors import load_editor

        run_json = Path(args.run) / "run.json"
        info = json.loads(run_json.read_text()) if run_json.is_file() else {}
        if "model" not in info:
            print(f"error: {run_json}: the vae breaker needs the run's model and editor (run.json)", file=sys.stderr)
            return 2
        editor = load_editor(info["model"], info.get("editor", "flux_kontext"), args.device, "float32")
    try:
        report = purify_run(args.run, breakers, args.conditions, args.seed, editor, progress=not args.no_progress)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"purified {report['written']}, kept {report['skipped']} (already there), failed {len(report['failed'])}: "
        + ", ".join(purified_condition(c, b.label) for c in args.conditions for b in breakers)
    )
    return 1 if report["failed"] else 0
