"""``decontext edit``: edit clean or protected images with an editor's real pipeline into the run layout.

    decontext edit --model toy --images protected/ --output runs/me/edits/protected
    python inference/kontext_inference.py ...     # the same, the family fixed by the script

Outputs ``OUTPUT/<stem>/<prompt index>/seed<k>.png`` and ``OUTPUT/index.json`` (docs/RUN_LAYOUT.md).
Exit 0 (done), 1 (some images failed; the others were edited) or 2 (bad arguments).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from pathlib import Path

from ..editors import Family
from .common import (
    ArgumentProblem,
    add_model_arguments,
    apply_pixel_limit,
    check_loaded_resolution,
    check_paths,
    check_resolution,
    choose_family,
    fail,
    load_editor_for,
    quiet_libraries,
    resolution_arg,
)


def parser(spec: Family, fixed: bool = False) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="decontext edit" if not fixed else None,
        description=spec.edit_description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(ap, spec, "edit", fixed)
    ap.add_argument("--images", required=True, help="an image file or a folder of images")
    ap.add_argument("--output", required=True, help="output folder (e.g. runs/<name>/edits/protected)")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--prompts", default=None, help="prompt pool file (default data/prompts/edit_prompts.txt)")
    group.add_argument("--prompt", default=None, help="a single edit instruction instead of a pool")
    ap.add_argument(
        "--prompt-indices", type=int, nargs="+", default=None, help="use only these prompts of the pool (0-based)"
    )
    ap.add_argument(
        "--seeds", type=int, nargs="+", default=[42], help="sampler seeds, one edit per (prompt, seed) (default 42)"
    )
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="denoising steps (default: the editor's, or the model folder's recommendation)",
    )
    ap.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="guidance scale (default: the editor's, or the model folder's recommendation)",
    )
    ap.add_argument(
        "--resolution",
        type=resolution_arg,
        default=None,
        help="working size: N (N x N area), native, or auto (default: the editor's)",
    )
    ap.add_argument(
        "--batch-size", type=int, default=1, help="(prompt, seed) pairs of one image edited together (default 1)"
    )
    ap.add_argument("--vae-tiling", action="store_true", help="decode large images tile by tile")
    ap.add_argument("--vae-slicing", action="store_true", help="decode a batch one image at a time")
    ap.add_argument(
        "--overwrite",
        action="store_true",
        help="redo edits made with other settings or from changed inputs "
        "(a re-run otherwise skips only edits made with the same settings, prompt and input bytes, "
        "and refuses the rest)",
    )
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    if spec.regulator:
        from .uvr import add_arguments

        add_arguments(ap, "edit")
    return ap


def main(argv=None, family: str | None = None) -> int:
    """Edit clean or protected images with the family's real pipeline into the run-folder layout."""
    spec = choose_family(argv, family)
    args = parser(spec, fixed=family is not None).parse_args(argv)
    from ..inference import validate_seeds
    from ..prompts import Prompt, PromptFileError, load_prompts, select_prompts

    # Everything that can be checked without a model is checked first.
    try:
        seeds = validate_seeds(args.seeds)
        if args.prompt is not None:
            if not args.prompt.strip():
                raise PromptFileError("--prompt is empty")
            prompts = [Prompt(args.prompt.strip(), "custom", 0)]
        else:
            prompts = select_prompts(load_prompts(args.prompts), args.prompt_indices)
        if args.steps is not None and args.steps < 1:
            raise ArgumentProblem(f"--steps must be >= 1, got {args.steps}")
        if args.batch_size < 1:
            raise ArgumentProblem(f"--batch-size must be >= 1, got {args.batch_size}")
        if args.guidance is not None and not (math.isfinite(args.guidance) and args.guidance >= 0):
            raise ArgumentProblem(f"--guidance must be a finite number >= 0, got {args.guidance}")
        check_resolution(spec, args.resolution, args.model)
        apply_pixel_limit(args)
        check_paths("--images", args.images, args.output)
    except (PromptFileError, ValueError) as exc:
        return fail(str(exc))

    quiet_libraries()
    from ..inference import EditSettings, run_edits
    from ..names import shown
    from ..runs import OutputBusyError

    try:
        editor = load_editor_for(spec, "edit", args)
        check_loaded_resolution(editor, args.resolution)
    except (ValueError, ImportError, FileNotFoundError) as exc:
        return fail(str(exc))
    editor.enable_vae_memory_savers(tiling=args.vae_tiling, slicing=args.vae_slicing)
    recommended = editor.recommended  # the editor's defaults, or what a model folder ships (the toy)
    settings = EditSettings(
        steps=args.steps or int(recommended["num_inference_steps"]),
        guidance=args.guidance if args.guidance is not None else float(recommended["guidance_scale"]),
        resolution=args.resolution or recommended["resolution"],
        batch_size=args.batch_size,
    )
    options = {o.load_as: getattr(args, o.flag.dest) for o in spec.options_for("edit") if o.load_as is not None}
    record = {
        "editor": editor.family,
        "images": str(args.images),
        "prompts_file": args.prompts,
        "seeds": seeds,
        "dtype": str(editor.dtype),
        **{k: v for k, v in options.items() if isinstance(v, (str, int, float, bool, type(None)))},
        **getattr(editor, "edit_settings", {}),
    }  # what an editor's edits also depend on (IP2P: image guidance)
    regulation = contextlib.nullcontext()
    if spec.regulator:  # UVR (decontext.safety): the editor generates under the regulator
        from .uvr import check_resume, from_args

        try:
            regulation, record["uvr"] = from_args(args, editor)
            check_resume(Path(args.output) / "index.json", record["uvr"])
        except ValueError as exc:
            return fail(str(exc))
    try:
        with regulation:
            report = run_edits(
                editor,
                args.images,
                prompts,
                seeds,
                args.output,
                settings,
                record=record,
                progress=not args.no_progress,
                overwrite=args.overwrite,
            )
    except OutputBusyError as exc:  # another process holds the output folder
        return fail(str(exc))
    print(
        f"edited {len(report.done)}, skipped {len(report.skipped)} (already done with the same settings), "
        f"failed images {len(report.failed)} -> {shown(args.output)}"
    )
    for message in report.failed.values():
        print(f"  failed: {shown(message)}", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
