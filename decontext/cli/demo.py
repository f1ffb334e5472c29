"""``decontext demo``: the main job on the embedded default, in one process.

Held-out faces of the toy world are protected with a method (DeContext on the toy FLUX.1-Kontext) and
with random noise of the same budget (the control every protection must beat), edited under the toy
world's six edit instructions (clean / noise / protected), and scored; ``summary.md`` leads with a
sentence a person can read, ``report.html`` shows every image.

    decontext demo                      # runs/demo: 20 faces, the toy, DeContext with the fast preset
    decontext demo --preset paper       # the paper's PGD settings (800 steps; about 4x longer)

It runs exactly these commands, one after the other, in one process that loads the editor once:
``toy-faces``, ``runs init``, ``attack`` (the method, then ``--method noise``), ``edit`` (clean, noise,
protected) and ``eval``; each prints the command line it stands for. Every stage resumes, so a re-run
with nothing left to do only re-scores. ``bash scripts/demo.sh`` sets up and runs it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from ..editors import FAMILIES, family
from .common import family_arg

EDIT_PROMPT_INDICES = ("0", "2", "4", "6", "8", "10")  # one phrasing of each of the toy world's six edits
TOY_FAMILIES = ("flux_kontext", "instruct_pix2pix")


def parser() -> argparse.ArgumentParser:
    from ..config import PRESETS

    ap = argparse.ArgumentParser(
        prog="decontext demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run", default="runs/demo", help="the run folder (default runs/demo)")
    ap.add_argument("--count", type=int, default=20, help="held-out toy faces (default 20, at most 100)")
    ap.add_argument(
        "--editor",
        "--family",
        dest="editor",
        type=family_arg,
        default="flux_kontext",
        help=f"editor family with a toy: {', '.join(f for f in FAMILIES if f in TOY_FAMILIES)} (default flux_kontext)",
    )
    ap.add_argument(
        "--model", default="toy", help="a toy by name (default toy: the family's embedded default; docs/TOY.md)"
    )
    ap.add_argument(
        "--method",
        default=None,
        help="protection method (default: the family's: decontext; encoder for instruct_pix2pix)",
    )
    ap.add_argument(
        "--preset",
        default="fast",
        choices=sorted(PRESETS),
        help="PGD settings: fast (default; the fewer steps docs/EVIDENCE.md found to reach the paper's result) "
        "or paper (the official 800 steps)",
    )
    ap.add_argument(
        "--eps",
        type=float,
        default=None,
        help="L-inf budget in 1/255 units (default: the family's official, 12.75 on FLUX.1-Kontext)",
    )
    ap.add_argument("--steps", type=int, default=None, help="PGD steps (default: the preset's)")
    ap.add_argument(
        "--seed", type=int, default=42, help="seed of the faces' nuisance, the attacks and the edits (default 42)"
    )
    ap.add_argument("--no-progress", action="store_true", help="no progress bars (the per-image lines stay)")
    return ap


def commands(args, spec) -> list[tuple[str, list[str]]]:
    """The demo as (command, flags) pairs, in order."""
    from ..toy.names import toy_prompts

    run = Path(args.run)
    prompts = str(toy_prompts(args.model, spec.name))
    quiet = ["--no-progress"] if args.no_progress else []
    attack = [
        "--family",
        spec.name,
        "--model",
        args.model,
        "--input",
        str(run / "source"),
        "--resolution",
        "native",
        "--prompts",
        prompts,
        "--seed",
        str(args.seed),
        *quiet,
    ]
    optional = [*(["--eps", str(args.eps)] if args.eps is not None else [])]
    out = [
        ("toy-faces", ["--count", str(args.count), "--out", str(run / "source"), "--seed", str(args.seed)]),
        (
            "runs",
            ["init", "--input", str(run / "source"), "--run", str(run), "--model", args.model, "--editor", spec.name],
        ),
        (
            "attack",
            [
                *attack,
                *(["--method", args.method] if args.method else []),
                "--preset",
                args.preset,
                *optional,
                *(["--steps", str(args.steps)] if args.steps is not None else []),
                "--output",
                str(run / "protected"),
            ],
        ),
        ("attack", [*attack, "--method", "noise", *optional, "--output", str(run / "noise")]),
    ]
    for condition in ("clean", "noise", "protected"):
        images = run / ("source" if condition == "clean" else condition)
        out.append(
            (
                "edit",
                [
                    "--family",
                    spec.name,
                    "--model",
                    args.model,
                    "--images",
                    str(images),
                    "--output",
                    str(run / "edits" / condition),
                    "--prompts",
                    prompts,
                    "--prompt-indices",
                    *EDIT_PROMPT_INDICES,
                    "--seeds",
                    str(args.seed),
                    "--batch-size",
                    str(len(EDIT_PROMPT_INDICES)),
                    *quiet,
                ],
            )
        )
    out.append(("eval", ["--run", str(run), *quiet]))
    return out


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    spec = family(args.editor)
    if spec.name not in TOY_FAMILIES:
        print(
            f"error: --editor {args.editor}: the demo needs a family with a toy editor ({', '.join(TOY_FAMILIES)})",
            file=sys.stderr,
        )
        return 2
    if not 1 <= args.count <= 100:
        print(f"error: --count must be between 1 and 100 (the held-out identities), got {args.count}", file=sys.stderr)
        return 2
    from ..toy.names import is_toy_model

    if not is_toy_model(args.model, spec.name):
        print(
            f"error: --model {args.model}: the demo runs on a toy editor of the {spec.name} family (docs/TOY.md)",
            file=sys.stderr,
        )
        return 2
    from . import run
    from .common import shared_editors

    began = time.perf_counter()
    with shared_editors():
        for command, flags in commands(args, spec):
            print(f"\n$ python -m decontext {command} {shlex.join(flags)}", flush=True)
            code = run(command, flags)
            if code == 2 or (code and command != "attack" and command != "edit"):
                print(f"error: the demo stopped at `decontext {command}` (exit {code})", file=sys.stderr)
                return code
    summary = Path(args.run) / "summary.md"
    print(
        f"\n{summary.read_text(encoding='utf-8')}\nreport: {Path(args.run) / 'report.html'}   "
        f"(demo: {time.perf_counter() - began:.0f} s)"
    )
    return 0
