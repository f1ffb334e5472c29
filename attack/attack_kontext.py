#!/usr/bin/env python
"""Protect images against FLUX.1-Kontext with DeContext (or a baseline, --method).

    python attack/attack_kontext.py --model tiny --input photo.jpg --output protected/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from decontext.cli import add_model_args, quiet_libraries, resolution_arg  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--input", required=True, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, help="folder for <stem>.png and manifest.json")
    parser.add_argument("--method", default="decontext", choices=["decontext", "noise", "encoder", "flow_loss"], help="decontext (default); noise: random +-eps control; encoder: PhotoGuard encoder attack; flow_loss: diff-PGD on the flow-matching loss")
    parser.add_argument("--eps", type=float, default=12.75, help="L-inf budget in 1/255 units (default 12.75, the paper's 0.1 on [-1,1])")
    parser.add_argument("--alpha", type=float, default=0.6375, help="PGD step in 1/255 units (default 0.6375)")
    parser.add_argument("--steps", type=int, default=800, help="PGD steps (default 800)")
    parser.add_argument("--resolution", type=resolution_arg, default="auto", help="working size inside the editor: auto (what FluxKontextPipeline picks), native (the image's own size), or N (N x N area; 512 = paper)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", default=None, help="prompt pool file (default data/prompts/edit_prompts.txt)")
    parser.add_argument("--blocks", default="single:0-25/38", help="attention layers to probe (default: single blocks 0-25 of 38, scaled to the model's depth)")
    parser.add_argument("--t-range", type=float, nargs=2, default=(0.98, 1.0), metavar=("LO", "HI"), help="sigma range drawn per step (default 0.98 1.0)")
    parser.add_argument("--guidance", type=float, default=3.5)
    parser.add_argument("--momentum", type=float, default=0.0)
    parser.add_argument("--random-start", action="store_true")
    parser.add_argument("--measure-draws", type=int, default=4, help="fixed draws used to report the share before/after (0 = skip)")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in the transformer (less GPU memory, slower)")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_libraries()
    from decontext.distributed import current_shard
    from decontext.editors import load_editor
    from decontext.methods import build_method
    from decontext.prompts import PromptFileError
    from decontext.protect import ProtectSettings, merge_manifests, protect_paths

    if not Path(args.input).exists():
        print(f"error: {args.input}: no such file or folder", file=sys.stderr)
        return 2
    try:
        method = build_method(args.method, prompts=args.prompts, blocks=args.blocks, t_range=args.t_range, guidance=args.guidance)
    except (PromptFileError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    shard = current_shard()  # under `accelerate launch`, this process's share of the inputs
    device = shard.device if (args.device == "auto" and shard.device is not None) else args.device
    try:
        editor = load_editor(args.model, device, args.dtype, quantize=args.quantize)
    except (ValueError, ImportError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.checkpointing:
        editor.enable_gradient_checkpointing()
    settings = ProtectSettings(
        eps=args.eps, alpha=args.alpha, steps=args.steps, momentum=args.momentum, random_start=args.random_start,
        seed=args.seed, resolution=args.resolution, measure_draws=args.measure_draws, progress=not args.no_progress,
    )
    manifest = "manifest.json" if shard.world == 1 else f"manifest.rank{shard.rank}.json"
    report = protect_paths(editor, method, args.input, args.output, settings, args_record=vars(args), shard=(shard.rank, shard.world), manifest_name=manifest)
    if shard.world > 1:
        shard.barrier()
        if shard.is_main:
            merge_manifests(args.output, shard.world)
        shard.barrier()
    prefix = f"[process {shard.rank}/{shard.world}] " if shard.world > 1 else ""
    print(f"{prefix}protected {len(report.done)}, skipped {len(report.skipped)} (already done), failed {len(report.failed)} -> {args.output}")
    for message in report.failed.values():
        print(f"  failed: {message}", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
