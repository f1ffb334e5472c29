"""``decontext t2i`` (``python inference/flux_t2i.py``): text-to-image with FLUX.1-dev into a run folder,
optionally under UVR (``--uvr ANCHORS``); resumable exactly like editing (decontext.safety.t2i)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    from ..safety.t2i import __doc__ as doc
    from .uvr import add_arguments

    ap = argparse.ArgumentParser(
        prog="decontext t2i", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--model",
        default="toy-v2",
        help="FLUX.1-dev hub id or folder, 'tiny', or a toy version trained for text-to-image (toy-v2)",
    )
    ap.add_argument("--output", required=True, help="output folder")
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--prompts", default=None, help="prompt pool file (decontext.prompts format)")
    group.add_argument("--prompt", default=None, help="one prompt")
    ap.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="sampler seeds, one image per (prompt, seed) (default 0)"
    )
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default 28, or the toy's)")
    ap.add_argument("--guidance", type=float, default=None, help="guidance-embedding value (default 3.5, or the toy's)")
    ap.add_argument("--height", type=int, default=None, help="image height in pixels (default 1024, or the toy's)")
    ap.add_argument("--width", type=int, default=None, help="image width in pixels (default 1024, or the toy's)")
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    ap.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    ap.add_argument(
        "--overwrite",
        action="store_true",
        help="regenerate images made with other settings or prompt text "
        "(a re-run otherwise skips only images made with the same ones, and refuses the rest)",
    )
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_arguments(ap, "t2i")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    import torch
    from tqdm.auto import tqdm

    from ..editors import resolve_device, resolve_dtype
    from ..images import atomic_save
    from ..inference import validate_seeds
    from ..names import shown
    from ..prompts import Prompt, PromptFileError, load_prompts
    from ..runs import Group, IndexFile, Made, Output, OutputBusyError, output_lock, remove_stale_parts, run_resumable
    from ..safety.t2i import load_pipeline
    from .common import quiet_libraries
    from .uvr import check_resume, from_args

    try:
        seeds = validate_seeds(args.seeds)
        prompts = [Prompt(args.prompt.strip(), "custom", 0)] if args.prompt is not None else load_prompts(args.prompts)
        if not prompts or not prompts[0].text:
            raise PromptFileError("no prompt given")
        if args.steps is not None and args.steps < 1:
            raise ValueError("--steps must be >= 1")
    except (PromptFileError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    quiet_libraries()
    device = resolve_device(args.device)
    try:
        dtype = resolve_dtype(args.dtype, device)
        pipe, defaults = load_pipeline(args.model, device, dtype)
        regulation, uvr_record = from_args(args, pipe)
        check_resume(Path(args.output) / "index.json", uvr_record)
    except (ValueError, FileNotFoundError, OSError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = {
        "steps": args.steps or defaults["num_inference_steps"],
        "guidance": args.guidance if args.guidance is not None else defaults["guidance_scale"],
        "height": args.height or defaults["height"],
        "width": args.width or defaults["width"],
        "max_sequence_length": defaults["max_sequence_length"],
    }
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:  # one writer at a time; the index is read under its lock
        try:
            stack.enter_context(output_lock(output / ".index.json.lock"))
        except OutputBusyError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        remove_stale_parts(output)
        # Exact resume, as for edits (decontext.inference): the settings by digest plus each image's prompt text.
        index = IndexFile(
            output / "index.json",
            {"model": args.model, "seeds": seeds, "dtype": str(dtype), **settings, "uvr": uvr_record},
            "images",
            ("prompt_index", "seed"),
        )
        outputs = []
        for prompt in prompts:
            for seed in seeds:
                path = output / str(prompt.index) / f"seed{seed}.png"
                fields = {
                    "prompt": prompt.text,
                    "prompt_index": prompt.index,
                    "category": prompt.category,
                    "seed": seed,
                    "output": str(path.relative_to(output)),
                }
                outputs.append(Output((prompt.index, seed), path, index.settings_for(fields), fields))

        def work(jobs):
            began = time.perf_counter()
            made = []
            for out in (job.output for job in jobs):
                image = pipe(
                    prompt=out.fields["prompt"],
                    num_inference_steps=settings["steps"],
                    guidance_scale=settings["guidance"],
                    height=settings["height"],
                    width=settings["width"],
                    max_sequence_length=settings["max_sequence_length"],
                    generator=torch.Generator().manual_seed(out.fields["seed"]),
                ).images[0]
                made.append(
                    Made(
                        lambda path, image=image: atomic_save(image, path, format="PNG"),
                        {"seconds": round(time.perf_counter() - began, 3)},
                    )
                )
            return made

        # Each prompt and seed is its own group: one generation failing does not stop the others.
        groups = [Group(f"prompt {o.fields['prompt_index']} seed {o.fields['seed']}", None, [o]) for o in outputs]
        with regulation, tqdm(total=len(outputs), desc="images", disable=args.no_progress, dynamic_ncols=True) as bar:
            report = run_resumable(groups, index, work, overwrite=args.overwrite, progress=bar)
    refused = list(report.failed.values())
    print(
        f"generated {len(report.done)}, skipped {len(report.skipped)} (already there with the same settings), "
        f"refused {len(refused)} -> {shown(output)}"
    )
    for message in refused:
        print(f"  refused: {shown(message)}", file=sys.stderr)
    return 1 if refused else 0
