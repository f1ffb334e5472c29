"""``decontext sweep``: a grid of protection settings, one run folder per point (decontext.sweep)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..editors import DEFAULT_FAMILY, FAMILIES
from ..sweep import AXES, HEADLINES, load_grid
from .common import family_arg


def _number(text: str):
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text else value


def parser() -> argparse.ArgumentParser:
    from ..sweep import __doc__ as doc

    ap = argparse.ArgumentParser(
        prog="decontext sweep", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--name", required=True, help="the sweep's folder: RUNS/NAME")
    ap.add_argument("--runs", default="runs", help="the folder of run folders (default runs)")
    ap.add_argument(
        "--editor",
        "--family",
        dest="editor",
        type=family_arg,
        default=DEFAULT_FAMILY,
        help=f"editor family: {', '.join(FAMILIES)} "
        "or a short name (kontext, step1x, ip2p, flux2, qwen; default kontext)",
    )
    ap.add_argument(
        "--model", default="toy", help="the model every point protects against and edits with (default toy)"
    )
    ap.add_argument("--input", required=True, help="an image or a folder of images")
    ap.add_argument("--grid", default=None, help="a JSON grid file; axis flags below add to it")
    for axis in AXES:
        ap.add_argument(
            f"--{axis.replace('_', '-')}",
            dest=axis,
            nargs="+",
            default=None,
            help="values of this axis" + (" (each 'LOW,HIGH')" if axis == "t_range" else ""),
        )
    ap.add_argument(
        "--editor-args",
        default="",
        help="model-loading flags for the attack AND the edits, one string "
        '(e.g. "--prefix-file step1x_prefix.txt" for a real Step1X-Edit checkpoint)',
    )
    ap.add_argument(
        "--attack-args",
        nargs=argparse.REMAINDER,
        default=[],
        help="more attack flags for every point (last on the line)",
    )
    ap.add_argument("--prompts", default=None, help="prompt pool (default: the editor's; a toy model: its own pool)")
    ap.add_argument(
        "--prompt-indices", type=int, nargs="+", default=None, help="edit with only these prompts of the pool (0-based)"
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[42], help="edit seeds")
    ap.add_argument("--seed", type=int, default=0, help="attack seed")
    ap.add_argument("--resolution", default=None, help="edit resolution (default: the editor's)")
    ap.add_argument(
        "--attack-resolution",
        default=None,
        help="the attack's working size "
        "(default: the model's own: the toys' 64, the tiny models' 64, auto for real checkpoints)",
    )
    ap.add_argument(
        "--batch-size", type=int, default=1, help="(prompt, seed) pairs of one image edited together (default 1)"
    )
    ap.add_argument("--metrics", default=None, help="compute_metrics backends (default: all that apply)")
    ap.add_argument(
        "--condition", default="protected", help="the condition whose metrics fill the table (default protected)"
    )
    ap.add_argument(
        "--headline",
        default=None,
        help=f"headline metric for the plots (default: the first of {', '.join(HEADLINES)} measured)",
    )
    ap.add_argument(
        "--devices", default="auto", help="auto (every visible CUDA GPU, else the CPU), cpu, or GPU indices 0,1"
    )
    ap.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        grid = load_grid(args.grid) if args.grid else {}
        for axis in AXES:
            values = getattr(args, axis)
            if values:
                grid[axis] = [_number(v) for v in values]
        if not grid:
            raise ValueError("nothing to sweep: give a --grid file or values of at least one axis (--eps 8 16 ...)")
        if not Path(args.input).exists():
            raise ValueError(f"{args.input}: no such file or folder")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from ..sweep import Sweep, point_name
    from ..toy.names import is_toy_model, toy_prompts

    if args.prompts is None and is_toy_model(args.model):
        args.prompts = str(toy_prompts(args.model, args.editor))
    args.input = str(Path(args.input).resolve())
    args.runs = str(Path(args.runs).resolve())
    results = Sweep(args, grid).run()
    failed = [r for r in results if r["status"] == "failed"]
    root = Path(args.runs) / args.name
    print(
        f"{len(results) - len(failed)} points ok "
        f"({sum(r['status'] == 'skipped' for r in results)} already done), "
        f"{len(failed)} failed -> {root / 'table.md'}"
    )
    for r in failed:
        print(f"  failed: {point_name(r['point'])}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
