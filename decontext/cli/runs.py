"""``decontext runs init``: start a run folder (docs/RUN_LAYOUT.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..editors import DEFAULT_FAMILY, FAMILIES
from .common import family_arg


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="decontext runs", description="Start a run folder: sources as PNG and run.json")
    sub = ap.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="copy the inputs in as source/<stem>.png and write run.json")
    init.add_argument("--input", required=True, help="an image or a folder of images")
    init.add_argument("--run", required=True, help="the run folder (runs/<name>)")
    init.add_argument("--model", required=True, help="the model the run's commands use (recorded in run.json)")
    init.add_argument(
        "--editor",
        "--family",
        dest="editor",
        type=family_arg,
        default=DEFAULT_FAMILY,
        help=f"editor family: {', '.join(FAMILIES)} or a short name (default {DEFAULT_FAMILY})",
    )
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from ..runs import SOURCE, prepare_sources, write_run_info

    written, failed = prepare_sources(args.input, Path(args.run) / SOURCE)
    write_run_info(args.run, model=args.model, editor=args.editor)
    print(f"{len(written)} source images in {Path(args.run) / SOURCE}; {len(failed)} unreadable")
    return 0 if written else 1
