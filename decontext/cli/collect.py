"""Collect UVR anchors: generate (or edit) with prompts that show a concept and keep the attention outputs
of the image tokens at one block (``decontext.safety.uvr.collect_anchors``).

    # text-to-image (FLUX.1-dev, or the toy-v2): one anchor per prompt x seed
    python -m decontext collect-anchors --pipeline t2i --model toy-v2 --concept hat \\
        --prompt "Put a hat on this person." --seeds 0 1 2 3 --output anchors/hat.safetensors
    # editing (FLUX.1-Kontext, or a toy): one anchor per image x prompt x seed
    python -m decontext collect-anchors --pipeline edit --model toy --concept hat --images faces/ \\
        --prompts data/prompts/toy_prompts.txt --category hat --output anchors/hat.safetensors

An existing output file is never overwritten: ``--append`` adds the concept (or more anchors of it) to it.
Settings (model, block, timesteps, prompts, seeds, steps) are stored in the file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    from ..safety.config import OFFICIAL_ANCHOR_T

    ap = argparse.ArgumentParser(
        prog="decontext collect-anchors", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--pipeline",
        choices=["t2i", "edit"],
        required=True,
        help="text-to-image (FluxPipeline) or editing (FluxKontextPipeline)",
    )
    ap.add_argument("--model", default="toy", help="hub id or folder, 'tiny', or a toy version (t2i: toy-v2)")
    ap.add_argument("--concept", required=True, help="the concept's name in the file (e.g. nudity, hat)")
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--prompt", nargs="+", help="prompt(s) that show the concept")
    group.add_argument("--prompts", help="a prompt pool file (decontext.prompts format)")
    ap.add_argument("--category", default=None, help="with --prompts: only this category of the pool")
    ap.add_argument("--images", default=None, help="editing: an image or a folder of images to edit")
    ap.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="sampler seeds, one anchor per (prompt, image, seed) (default 0)",
    )
    ap.add_argument(
        "--block",
        default=None,
        help="block whose attention outputs are kept (default: single.10 of 38, or the same relative depth)",
    )
    ap.add_argument(
        "--timesteps",
        type=float,
        nargs="+",
        default=[OFFICIAL_ANCHOR_T],
        help=f"one t (the nearest step; default {OFFICIAL_ANCHOR_T:g}, the official code's) "
        "or a range LOW HIGH, t in 0..1000",
    )
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the pipeline's, or the toy's)")
    ap.add_argument("--guidance", type=float, default=None, help="guidance (default: the pipeline's, or the toy's)")
    ap.add_argument(
        "--resolution", default=None, help="editing: working size (N, native, auto); t2i: N for an N x N image"
    )
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    ap.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    ap.add_argument("--output", required=True, help="anchor file (.safetensors)")
    ap.add_argument(
        "--append", action="store_true", help="add to an existing anchor file instead of refusing to touch it"
    )
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    import torch
    from tqdm.auto import tqdm

    from ..editors import load_editor, resolve_device, resolve_dtype
    from ..images import ImageLoadError, list_images, load_image
    from ..inference import image_to_pil, validate_seeds
    from ..prompts import PromptFileError, load_prompts
    from ..safety import uvr
    from .common import quiet_libraries, resolution_arg

    output = Path(args.output)
    try:
        seeds = validate_seeds(args.seeds)
        if args.prompt:
            prompts = [p.strip() for p in args.prompt if p.strip()]
        else:
            pool = load_prompts(args.prompts)
            prompts = [p.text for p in pool if args.category in (None, p.category)]
        if not prompts:
            raise ValueError(f"no prompts{f' of category {args.category!r}' if args.category else ''}")
        if len(args.timesteps) not in (1, 2):
            raise ValueError("--timesteps takes one t or a range LOW HIGH")
        if output.exists() and not args.append:
            raise ValueError(f"{output} exists; pass --append to add to it (nothing is overwritten)")
        existing = uvr.Anchors.load(output) if output.exists() else None
        if args.pipeline == "edit" and not args.images:
            raise ValueError("--pipeline edit needs --images (the images to edit)")
        if args.pipeline == "t2i" and args.images:
            raise ValueError("--images is for --pipeline edit")
        if args.images and not Path(args.images).exists():
            raise ValueError(f"{args.images}: no such file or folder")
    except (PromptFileError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    timesteps = args.timesteps[0] if len(args.timesteps) == 1 else tuple(args.timesteps)
    quiet_libraries()
    failed = {}
    try:
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype, device)
        if args.pipeline == "t2i":
            from ..safety.t2i import load_pipeline

            pipe, defaults = load_pipeline(args.model, device, dtype)
            side = int(args.resolution) if args.resolution else None
            steps, guidance = (
                args.steps or defaults["num_inference_steps"],
                args.guidance if args.guidance is not None else defaults["guidance_scale"],
            )
            jobs = [(p, s) for p in prompts for s in seeds]

            def generate():
                for prompt, seed in tqdm(jobs, desc="anchors", dynamic_ncols=True):
                    pipe(
                        prompt=prompt,
                        num_inference_steps=steps,
                        guidance_scale=guidance,
                        height=side or defaults["height"],
                        width=side or defaults["width"],
                        max_sequence_length=defaults["max_sequence_length"],
                        generator=torch.Generator().manual_seed(seed),
                    )

            model = pipe
        else:
            editor = load_editor(args.model, "flux_kontext", device, dtype)
            steps = args.steps or int(editor.recommended["num_inference_steps"])
            guidance = args.guidance if args.guidance is not None else float(editor.recommended["guidance_scale"])
            resolution = resolution_arg(args.resolution) if args.resolution else editor.recommended["resolution"]
            paths = list_images(args.images)

            def generate():
                for path in tqdm(paths, desc="anchors", dynamic_ncols=True):
                    try:
                        image = image_to_pil(load_image(path))
                    except ImageLoadError as exc:
                        failed[path.name] = str(exc)
                        continue
                    for seed in seeds:
                        editor.edit(image, prompts, [seed] * len(prompts), steps, guidance, resolution)

            model = editor
        anchors = uvr.collect_anchors(model, generate, block=args.block, timesteps=timesteps)
    except (ValueError, FileNotFoundError, OSError, ImportError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for _name, message in failed.items():
        print(f"  skipped: {message}", file=sys.stderr)
    block = args.block or uvr.default_block(uvr.transformer_of(model))
    made = uvr.make_anchors(
        {args.concept: anchors},
        block,
        args.pipeline,
        model=args.model,
        prompts=prompts,
        seeds=seeds,
        timesteps=args.timesteps,
        steps=steps,
        guidance=guidance,
        images=args.images,
    )
    if existing is not None:
        try:
            made = uvr.merge([existing, made])
        except ValueError as exc:
            print(f"error: {output}: {exc}", file=sys.stderr)
            return 2
    made.save(output)
    print(
        f"{args.concept}: {anchors.shape[0]} anchors at {block} -> {output} "
        f"(concepts: {', '.join(f'{n} x{t.shape[0]}' for n, t in made.concepts.items())})"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
