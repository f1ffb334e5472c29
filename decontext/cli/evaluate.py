"""``decontext eval`` (``python eval/compute_metrics.py``): score a run folder, write metrics.csv, summary.md/json
and report.html."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..metrics.base import EvalOptions, backends_for, not_applying
from ..names import shown


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="decontext eval",
        description="Score a DeContext run: identity (ISM, FDFR), CLIP-I/CLIP-S, LPIPS/PSNR/SSIM, BRISQUE. "
        "Metrics whose weights are missing are reported as unavailable; the rest still run.",
    )
    src = p.add_argument_group("input (either --run or explicit folders)")
    src.add_argument("--run", type=Path, help="run folder runs/<name> (docs/RUN_LAYOUT.md)")
    src.add_argument("--source", type=Path, help="clean input images")
    src.add_argument("--protected", type=Path, help="protected input images")
    src.add_argument("--edits-clean", type=Path, help="edits of the clean images (<stem>/<prompt_index>/seed<k>.png)")
    src.add_argument("--edits-protected", type=Path, help="edits of the protected images")
    src.add_argument("--run-json", type=Path, help="run.json to use with explicit folders (chooses backends)")
    p.add_argument("--out", type=Path, help="output folder (default: the run folder)")
    p.add_argument("--weights-dir", type=Path, help="folder searched for weights before the usual caches")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--metrics",
        help="comma-separated backends to run (default: all that apply; docs/EVALUATION.md lists them): "
        "toy, pixel, lpips, brisque, fdfr, ism_facenet, fdfr_dlib, ism_dlib, ism_arcface, clip",
    )
    p.add_argument(
        "--identity-map", type=Path, help="JSON {stem: identity} or CSV stem,identity (default: identity = stem)"
    )
    p.add_argument(
        "--clip-model", default="openai/clip-vit-base-patch32", help="CLIP folder or hub id (local cache only)"
    )
    p.add_argument("--clip-neutral-text", default="a photo of a person", help="text the CLIP-S direction starts from")
    p.add_argument("--arcface-model", type=Path, help="ArcFace ONNX recognition model (e.g. w600k_r50.onnx)")
    p.add_argument("--lpips-net", default="alex", choices=("alex", "vgg", "squeeze"), help="LPIPS trunk")
    p.add_argument("--psnr-cap", type=float, default=100.0, help="PSNR cap in dB for identical images (default 100)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.add_argument(
        "--report-max-edits", type=int, default=12, help="edits shown per image and condition in report.html"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _input_files(run) -> set[Path]:
    files: set[Path] = set()
    for folder in [run.source_dir, *run.input_dirs.values()]:
        if folder.is_dir():
            files |= {p for p in folder.iterdir() if p.is_file()}
    for e in run.edits:
        files |= {e.output, e.input, e.output.parent.parent.parent / "index.json"}
    if run.info.path is not None:
        files.add(run.info.path)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..metrics.evaluate import (
        conditions_of,
        evaluate_run,
        fmt_stat,
        not_measured_lines,
        paired_lines,
        summarize,
        verdict_lines,
        write_outputs,
    )
    from ..metrics.run import load_folders, load_identity_map, load_run

    identity = None
    if args.identity_map is not None:
        try:
            identity = load_identity_map(args.identity_map)
        except Exception as exc:
            parser.error(f"--identity-map {args.identity_map}: {exc}")
    if args.run is not None:
        if not args.run.is_dir():
            parser.error(f"--run {args.run}: no such folder")
        run = load_run(args.run, identity)
        root, out = args.run, args.out or args.run
    else:
        if args.source is None or (
            args.edits_clean is None and args.edits_protected is None and args.protected is None
        ):
            parser.error("give --run, or --source plus at least one of --protected/--edits-clean/--edits-protected")
        if args.out is None:
            parser.error("--out is required with explicit folders")
        run = load_folders(args.source, args.protected, args.edits_clean, args.edits_protected, identity, args.run_json)
        root, out = None, args.out

    options = EvalOptions(
        weights_dir=args.weights_dir,
        device=args.device,
        clip_model=args.clip_model,
        clip_neutral_text=args.clip_neutral_text,
        arcface_model=args.arcface_model,
        psnr_cap_db=args.psnr_cap,
        extra={"lpips_net": args.lpips_net},
    )
    only = [s.strip() for s in args.metrics.split(",") if s.strip()] if args.metrics else None
    try:
        backends = backends_for(run.info, options, only)
    except ValueError as exc:
        parser.error(str(exc))

    print(f"Scoring {len(run.edits)} edits in conditions: {', '.join(run.conditions) or '(none)'}", flush=True)
    result = evaluate_run(run, backends, progress=not args.no_progress, root=root, not_run=not_applying(run.info, only))
    summary = summarize(result, n_boot=args.n_boot, seed=args.seed)
    protected = _input_files(run)
    try:
        paths = write_outputs(result, out, summary, protected)
        if not args.no_report:
            from ..report import write_report

            report = out / "report.html"
            if report.resolve() in {p.resolve() for p in protected}:
                raise FileExistsError(f"refusing to overwrite input file {report}")
            paths["report.html"] = write_report(result, summary, report, max_edits=args.report_max_edits)
    except FileExistsError as exc:
        print(f"error: {shown(exc)}", file=sys.stderr)
        return 2

    folded = not_measured_lines(summary)
    if folded:
        print("\nNot measured in this run:")
        for line in folded:
            print(f"  {line}")
    if result.errors:
        print(f"\nProblems ({len(result.errors)}):")
        for e in result.errors:
            print(f"  {shown(e)}")
    print("\nHeadline, paired with clean (and noise) on the same edits (mean difference [95% CI]):")
    for line in paired_lines(summary):
        print(f"  {line}")
    print("\nSummary (mean [95% CI] (n)):")
    for cond in conditions_of(summary):
        print(f"  {cond}:")
        for metric, stats in summary[cond].items():
            if stats.get("available", True):
                print(f"    {metric:16s} {fmt_stat(stats)}")
    by_source: dict[str, list[str]] = {}
    for metric, source in result.sources.items():
        by_source.setdefault(source, []).append(metric)
    if by_source:
        print("\nComputed with:")
        for source, metrics in by_source.items():
            print(f"  {', '.join(metrics)}: {source}")
    print("\nWrote: " + ", ".join(str(p) for p in paths.values()))
    print("\n" + "\n\n".join(line.replace("**", "") for line in verdict_lines(summary)))
    return 0
