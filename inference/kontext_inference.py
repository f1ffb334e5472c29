#!/usr/bin/env python
"""Edit clean or protected images with FLUX.1-Kontext (the real diffusers pipeline).

    python inference/kontext_inference.py --model tiny --images protected/ --output edits/protected

Writes OUTPUT/<image stem>/<prompt index>/seed<k>.png and OUTPUT/index.json. Defaults follow the
DeContext paper's editing protocol: 20 steps, guidance 3.5, 512x512, seed 42, the project's prompt pool.
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
    parser.add_argument("--images", required=True, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, help="output folder (e.g. runs/<name>/edits/protected)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--prompts", default=None, help="prompt pool file (default data/prompts/edit_prompts.txt)")
    group.add_argument("--prompt", default=None, help="a single edit instruction instead of a pool")
    parser.add_argument("--prompt-indices", type=int, nargs="+", default=None, help="use only these prompts of the pool (0-based)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 20, or the model folder's recommendation)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance (default 3.5, or the model folder's recommendation)")
    parser.add_argument("--resolution", type=resolution_arg, default=None, help="working size: N (N x N area, default 512), native, or auto")
    parser.add_argument("--batch-size", type=int, default=1, help="(prompt, seed) pairs of one image edited together")
    parser.add_argument("--offload", action="store_true", help="diffusers model CPU offload: lowest GPU memory, slower")
    parser.add_argument("--vae-tiling", action="store_true", help="decode large images tile by tile")
    parser.add_argument("--vae-slicing", action="store_true", help="decode a batch one image at a time")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from decontext.inference import EditSettings, run_edits, validate_seeds
    from decontext.prompts import Prompt, PromptFileError, load_prompts, select_prompts

    # Everything that can be checked without a model is checked first.
    try:
        seeds = validate_seeds(args.seeds)
        if args.prompt is not None:
            if not args.prompt.strip():
                raise PromptFileError("--prompt is empty")
            prompts = [Prompt(args.prompt.strip(), "custom", 0)]
        else:
            prompts = select_prompts(load_prompts(args.prompts), args.prompt_indices)
        if (args.steps is not None and args.steps < 1) or args.batch_size < 1:
            raise ValueError("--steps and --batch-size must be >= 1")
    except (PromptFileError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not Path(args.images).exists():
        print(f"error: {args.images}: no such file or folder", file=sys.stderr)
        return 2

    quiet_libraries()
    from decontext.editors import load_editor

    try:
        editor = load_editor(args.model, args.device, args.dtype, offload=args.offload, quantize=args.quantize)
    except (ValueError, ImportError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    editor.enable_vae_memory_savers(tiling=args.vae_tiling, slicing=args.vae_slicing)
    recommended = editor.recommended  # e.g. the toy editor ships its own steps/guidance/resolution
    settings = EditSettings(
        steps=args.steps or int(recommended.get("num_inference_steps", 20)),
        guidance=args.guidance if args.guidance is not None else float(recommended.get("guidance_scale", 3.5)),
        resolution=args.resolution or recommended.get("resolution", 512),
        batch_size=args.batch_size,
    )
    record = {"images": str(args.images), "prompts_file": args.prompts, "seeds": seeds, "dtype": str(editor.dtype), "offload": args.offload, "quantize": args.quantize}
    report = run_edits(editor, args.images, prompts, seeds, args.output, settings, record=record, progress=not args.no_progress)
    print(f"edited {report.done}, skipped {report.skipped} (already done), failed images {len(report.failed)} -> {args.output}")
    for message in report.failed.values():
        print(f"  failed: {message}", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
