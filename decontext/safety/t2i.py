"""Text-to-image with FLUX.1-dev (diffusers' ``FluxPipeline``), optionally under UVR (``--uvr ANCHORS``).

    python inference/flux_t2i.py --model black-forest-labs/FLUX.1-dev --prompt "a red fox" --output runs/t2i
    python inference/flux_t2i.py --model toy-v2 --prompts data/prompts/toy_prompts.txt --seeds 0 1 --output runs/t2i/off
    python inference/flux_t2i.py --model toy-v2 ... --uvr runs/uvr/hat.safetensors --output runs/t2i/uvr

Outputs: ``OUTPUT/<prompt index>/seed<k>.png`` and ``OUTPUT/index.json``; each PNG is written under a
temporary name and renamed, and a re-run skips every image that exists.

``--model``: a FLUX.1-dev hub id or local folder, ``tiny`` (random weights, smoke test), or a toy
version trained for text-to-image as well as editing (``toy-v2``: its Kontext components, run by
``FluxPipeline``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

T2I_DEFAULTS = {"num_inference_steps": 28, "guidance_scale": 3.5, "height": 1024, "width": 1024, "max_sequence_length": 512}  # FLUX.1-dev, as UVR ran it


def load_pipeline(model: str, device, dtype):
    """(FluxPipeline, its default settings) for a hub id / folder, ``tiny``, or a toy version."""
    from diffusers import FluxPipeline

    from ..toy.names import is_toy_model, toy_editor_dir

    settings = dict(T2I_DEFAULTS)
    if model == "tiny":
        from ..editors.flux_kontext import FluxKontextEditor

        pipe = FluxPipeline.from_pipe(FluxKontextEditor.tiny(seed=0).pipe)
        settings.update(height=64, width=64, num_inference_steps=4, max_sequence_length=32)
    elif is_toy_model(model, "flux_kontext"):
        from diffusers import FluxKontextPipeline

        folder = toy_editor_dir(model, "flux_kontext")
        if not (folder / "model_index.json").is_file():
            raise FileNotFoundError(f"{folder}: the toy editor {model!r} is missing (docs/TOY.md)")
        pipe = FluxPipeline.from_pipe(FluxKontextPipeline.from_pretrained(str(folder), torch_dtype=dtype))
        shipped = json.loads((folder / "decontext_toy.json").read_text())
        settings.update({k: shipped[k] for k in ("num_inference_steps", "guidance_scale", "height", "width", "max_sequence_length") if k in shipped})
    else:
        path = Path(model)
        if path.exists() and not (path / "model_index.json").is_file():
            raise FileNotFoundError(f"{path}: not a diffusers pipeline folder (no model_index.json)")
        pipe = FluxPipeline.from_pretrained(model, torch_dtype=dtype, local_files_only=path.exists())
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device=device, dtype=dtype), settings


def parser() -> argparse.ArgumentParser:
    from .uvr import add_arguments

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toy-v2", help="FLUX.1-dev hub id or folder, 'tiny', or a toy version trained for text-to-image (toy-v2)")
    ap.add_argument("--output", required=True, help="output folder")
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--prompts", default=None, help="prompt pool file (decontext.prompts format)")
    group.add_argument("--prompt", default=None, help="one prompt")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default 28, or the toy's)")
    ap.add_argument("--guidance", type=float, default=None, help="guidance-embedding value (default 3.5, or the toy's)")
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    ap.add_argument("--overwrite", action="store_true", help="regenerate images made with other settings or prompt text "
                    "(a re-run otherwise skips only images made with the same ones, and refuses the rest)")
    ap.add_argument("--no-progress", action="store_true")
    add_arguments(ap, "t2i")
    return ap


def main(argv=None) -> int:
    import torch
    from tqdm.auto import tqdm

    from ..cli import quiet_libraries
    from ..editors import resolve_device, resolve_dtype
    from ..images import atomic_save
    from ..inference import validate_seeds
    from ..names import shown
    from ..prompts import Prompt, PromptFileError, load_prompts
    from ..runs import Group, IndexFile, Made, Output, OutputBusyError, output_lock, remove_stale_parts, run_resumable
    from .uvr import check_resume, from_args

    args = parser().parse_args(argv)
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
    settings = {"steps": args.steps or defaults["num_inference_steps"], "guidance": args.guidance if args.guidance is not None else defaults["guidance_scale"],
                "height": args.height or defaults["height"], "width": args.width or defaults["width"], "max_sequence_length": defaults["max_sequence_length"]}
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
        index = IndexFile(output / "index.json", {"model": args.model, "seeds": seeds, "dtype": str(dtype), **settings, "uvr": uvr_record},
                          "images", ("prompt_index", "seed"))
        outputs = []
        for prompt in prompts:
            for seed in seeds:
                path = output / str(prompt.index) / f"seed{seed}.png"
                fields = {"prompt": prompt.text, "prompt_index": prompt.index, "category": prompt.category, "seed": seed, "output": str(path.relative_to(output))}
                outputs.append(Output((prompt.index, seed), path, index.settings_for(fields), fields))

        def work(group, batch, _):
            began = time.perf_counter()
            made = []
            for out in batch:
                image = pipe(prompt=out.fields["prompt"], num_inference_steps=settings["steps"], guidance_scale=settings["guidance"],
                             height=settings["height"], width=settings["width"], max_sequence_length=settings["max_sequence_length"],
                             generator=torch.Generator().manual_seed(out.fields["seed"])).images[0]
                made.append(Made(lambda path, image=image: atomic_save(image, path, format="PNG"), {"seconds": round(time.perf_counter() - began, 3)}))
            return made

        # Each prompt and seed is its own group: one generation failing does not stop the others.
        groups = [Group(f"prompt {o.fields['prompt_index']} seed {o.fields['seed']}", None, [o]) for o in outputs]
        with regulation, tqdm(total=len(outputs), desc="images", disable=args.no_progress, dynamic_ncols=True) as bar:
            report = run_resumable(groups, index, work, overwrite=args.overwrite, progress=bar)
    refused = list(report.failed.values())
    print(f"generated {len(report.done)}, skipped {len(report.skipped)} (already there with the same settings), "
          f"refused {len(refused)} -> {shown(output)}")
    for message in refused:
        print(f"  refused: {shown(message)}", file=sys.stderr)
    return 1 if refused else 0
