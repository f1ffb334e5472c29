"""``decontext benchmark SPEC --out DIR``: every protection of a spec against every attacker, one JSON
record per cell, then the leaderboard (``decontext.benchmark``; docs/BENCHMARK.md).

The spec is checked completely (names, budgets, folders, keys) before any model loads; a bad one exits 2
naming the key and what it allows. ``--report DIR`` regenerates the leaderboard from DIR's records alone.
"""

from __future__ import annotations

import argparse
import shlex
import sys

EPILOG = """examples:
  decontext benchmark toy-quick --out runs/bench_quick          # shipped spec (about 10 min on a CPU)
  decontext benchmark my_spec.toml --out runs/mine --overwrite  # a spec file; replace another spec's records
  decontext benchmark kontext-paper --photos faces/ --model tiny --out runs/kp   # real editor, smoke test
  decontext benchmark toy --out runs/toy --cells '*@16__*' --stop-after 120   # 16/255 first, two hours at a time
  decontext benchmark toy --out runs/toy --dry-run              # what is recorded and what is left; runs nothing
  decontext benchmark --report runs/bench_quick                 # leaderboard.md/.html, results.json again
  decontext benchmark --list                                    # the shipped specs"""


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="decontext benchmark",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("spec", nargs="?", help="a shipped spec name (--list) or a TOML file")
    ap.add_argument("--out", help="the run folder: records/, cache/, leaderboard.*")
    ap.add_argument("--overwrite", action="store_true", help="replace the records of another spec in --out")
    ap.add_argument("--model", default=None, help="weights of a real editor of the spec ('tiny': smoke test)")
    ap.add_argument("--photos", default=None, metavar="DIR", help="the folder of photos of a folder spec")
    ap.add_argument(
        "--report", metavar="DIR", default=None, help="only regenerate DIR's leaderboard from its records (no SPEC)"
    )
    ap.add_argument(
        "--cells",
        nargs="+",
        metavar="GLOB",
        default=None,
        help="only the cells whose key (EDITOR__METHOD@BUDGET__ATTACKER) matches one of these shell patterns, "
        "e.g. '*@16__*' or 'toy-v3__*'",
    )
    ap.add_argument(
        "--stop-after",
        type=float,
        metavar="MINUTES",
        default=None,
        help="start no new cell after this many minutes (the cell under way finishes, the first always runs); "
        "run again to go on",
    )
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="only say how many of the (selected) cells are recorded and what is left, per editor, budget and "
        "method; loads and writes nothing",
    )
    ap.add_argument("--list", action="store_true", help="list the shipped specs")
    ap.add_argument("--quiet", action="store_true", help="no per-cell lines")
    return ap


def main(argv=None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    from ..benchmark.spec import SpecError, load_spec, shipped_specs

    if args.list:
        print("\n".join(shipped_specs()))
        return 0
    if args.report is not None and args.spec is None:
        from ..benchmark.report import write_report

        try:
            written = write_report(args.report)
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for path in written:
            print(path)
        return 0
    if args.stop_after is not None and not args.stop_after > 0:
        print(f"error: --stop-after {args.stop_after:g}: give a number of minutes above 0", file=sys.stderr)
        return 2
    if args.spec is None or args.out is None:
        ap.print_usage(sys.stderr)
        print("error: give SPEC and --out DIR (or --report DIR, or --list)", file=sys.stderr)
        return 2
    try:
        spec = load_spec(args.spec, photos=args.photos, model=args.model)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        from ..benchmark.run import describe_pending, pending

        try:
            state = pending(spec, args.out, args.cells)
        except SpecError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print("\n".join(describe_pending(spec, args.out, state)))
        return 0
    from ..benchmark.records import FolderError
    from ..benchmark.report import write_report
    from ..benchmark.run import run_benchmark
    from .common import quiet_libraries

    quiet_libraries()
    command = "decontext benchmark " + shlex.join(list(sys.argv[1:] if argv is None else argv))
    log = (lambda *a, **k: None) if args.quiet else print
    stop_after = args.stop_after * 60 if args.stop_after is not None else None
    try:
        result = run_benchmark(spec, args.out, args.overwrite, None, command, log, args.cells, stop_after)
    except (FolderError, SpecError) as exc:  # SpecError: --cells matching nothing, before anything loads
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"interrupted; every finished cell is recorded in {args.out}/records (the cell under way is not). "
            "Run the same command again to go on; --report DIR shows what is there.",
            file=sys.stderr,
        )
        return 130
    log(
        f"{len(result['computed'])} cells computed, {result['skipped']} already recorded, {result['left']} left "
        f"({result['seconds']:.0f} s)"
    )
    for path in write_report(args.out):
        print(path)
    return 0
