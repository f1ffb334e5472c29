"""The attack and inference command lines, shared by every editor family.

``attack/attack_<editor>.py`` and ``inference/<editor>_inference.py`` are a few lines each: they name
their family and call ``attack_main`` / ``inference_main``. Flags common to every editor live here;
an editor adds its own (``add_arguments``) and sets its official attack defaults
(``attack_defaults``); every registered method adds its options.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
import warnings
from pathlib import Path


def resolution_arg(value: str):
    if value in ("auto", "native"):
        return value
    try:
        side = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution must be 'auto', 'native' or a number of pixels, got {value!r}") from None
    if side <= 0:
        raise argparse.ArgumentTypeError(f"resolution must be positive, got {side}")
    return side


def quiet_libraries() -> None:
    """Silence library chatter (weight-loading bars, dtype-cast notes) so our own progress stays readable."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("diffusers", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass
    warnings.filterwarnings("ignore", category=FutureWarning)


def avoid_cudnn_attention() -> bool:
    """Turn off torch's cuDNN backend of scaled_dot_product_attention for this process (flash and memory-
    efficient attention remain) unless ``DECONTEXT_CUDNN_SDPA=1``; returns whether it was turned off.

    Why: on an H100 (torch 2.11.0+cu130) a FLUX.1-Kontext forward+backward whose full-sequence attention
    went through cuDNN failed with an illegal memory access ("mha_graph.execute ... is_good()" under
    CUDA_LAUNCH_BLOCKING) when it was the first step of a process, with and without checkpointing; with
    the backend off the same step ran, and faster (docs/PERFORMANCE.md). The attacks take gradients
    through attention, so every attack turns it off; editing alone is left as it is."""
    import torch

    if os.environ.get("DECONTEXT_CUDNN_SDPA") == "1" or not hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
        return False
    torch.backends.cuda.enable_cudnn_sdp(False)
    return True


def _model_arguments(parser: argparse.ArgumentParser, cls, role: str) -> None:
    parser.add_argument("--max-megapixels", type=float, default=None,
                        help="refuse input images that declare more pixels than this (default: Pillow's bomb guard, ~89 MP)")
    parser.add_argument("--model", default="tiny", help=cls.model_help)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    cls.add_arguments(parser, role)


class ArgumentProblem(ValueError):
    """A flag's value that cannot work; the message names the flag."""


def check_resolution(cls, resolution, model: str) -> None:
    """A number of pixels below the family's minimum is refused before loading (the stock checkpoints;
    a tiny or toy model's own smaller multiple is checked once it is loaded, by ``check_loaded_resolution``)."""
    from .toy.names import is_toy_model

    minimum = getattr(cls, "min_resolution", None)
    if isinstance(resolution, int) and minimum and model != "tiny" and not is_toy_model(model) and resolution < minimum:
        raise ArgumentProblem(f"--resolution {resolution}: below the {cls.family} minimum of {minimum} px")


def check_loaded_resolution(editor, resolution) -> None:
    if isinstance(resolution, int):
        try:
            editor.working_size(resolution, resolution, resolution)
        except ValueError as exc:
            raise ArgumentProblem(f"--resolution {resolution}: {exc}") from None


def check_paths(input_flag: str, input_path: str, output: str) -> None:
    """The input exists and the output is (or can become) a folder."""
    if not Path(input_path).exists():
        raise ArgumentProblem(f"{input_flag} {input_path}: no such file or folder")
    if Path(output).exists() and not Path(output).is_dir():
        raise ArgumentProblem(f"--output {output}: exists and is not a folder")


def check_attack_args(args, cls) -> None:
    """Everything about the attack's flags that can be checked without a model (exit 2 before loading)."""
    if not args.eps > 0:
        raise ArgumentProblem(f"--eps must be > 0 (in 1/255 units), got {args.eps:g}")
    if not args.alpha > 0:
        raise ArgumentProblem(f"--alpha must be > 0 (in 1/255 units), got {args.alpha:g}")
    if args.steps < 0:
        raise ArgumentProblem(f"--steps must be >= 0, got {args.steps}")
    if args.measure_draws < 0:
        raise ArgumentProblem(f"--measure-draws must be >= 0, got {args.measure_draws}")
    if args.seed < 0:
        raise ArgumentProblem(f"--seed must be >= 0, got {args.seed}")
    check_resolution(cls, args.resolution, args.model)
    check_paths("--input", args.input, args.output)
    if args.alpha > args.eps:
        print(f"warning: --alpha {args.alpha:g} is larger than --eps {args.eps:g}: every step jumps to the edge of the budget "
              "(a plain sign attack); a step of eps/10 or less is usual", file=sys.stderr)


def apply_pixel_limit(args) -> None:
    if args.max_megapixels is not None:
        from .images import set_pixel_limit

        try:
            set_pixel_limit(args.max_megapixels)
        except ValueError as exc:
            raise ArgumentProblem(str(exc)) from None


def _load(cls, args, device=None):
    from .editors import load_editor

    return load_editor(args.model, cls.family, device or args.device, args.dtype, **cls.options_from_args(args))


# ---------------------------------------------------------------------------------------- attack
def attack_parser(family: str) -> argparse.ArgumentParser:
    from .editors import editor_class
    from .methods import add_method_arguments
    from .config import SCHEDULES, STARTS, UPDATES

    cls = editor_class(family)
    defaults = cls.attack_defaults
    parser = argparse.ArgumentParser(description=cls.attack_description, formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_arguments(parser, cls, "attack")
    parser.add_argument("--input", required=True, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, help="folder for <stem>.png and manifest.json")
    parser.add_argument("--eps", type=float, default=defaults["eps"], help=f"L-inf budget in 1/255 units (default {defaults['eps']}: {defaults['eps_note']})")
    parser.add_argument("--alpha", type=float, default=defaults["alpha"], help=f"PGD step in 1/255 units (default {defaults['alpha']})")
    parser.add_argument("--steps", type=int, default=defaults["steps"], help=f"PGD steps (default {defaults['steps']})")
    parser.add_argument("--resolution", type=resolution_arg, default="auto", help=f"working size inside the editor: auto ({cls.auto_resolution_note}), native (the image's own size), or N (N x N area)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--momentum", type=float, default=None, help="MI-FGSM momentum decay (default: the method's, else 0 = plain sign steps)")
    parser.add_argument("--schedule", default=None, choices=SCHEDULES, help="step-size schedule (default: the method's, else constant; linear = PhotoGuard's decay to alpha/100)")
    parser.add_argument("--start", default=None, choices=STARTS, help="where PGD starts: clean (the image), uniform (a random point of the eps-ball) or sign (a random corner of it) (default: the method's, else clean)")
    parser.add_argument("--update", default=None, choices=UPDATES, help="update rule: sign (default: every pixel moves by alpha), l2 (a step of rms alpha along the gradient) or adam (Adam-normalised steps of at most ~alpha)")
    parser.add_argument("--psnr-floor", type=float, default=None, help="also keep the protected image's PSNR at or above this many dB (an L2 budget beside --eps)")
    parser.add_argument("--eot", nargs="+", default=None, metavar="BREAKER",
                        help="optimise to survive these breakers (expectation over transformation; decontext/purify.py): e.g. jpeg resize blur, or jpeg:quality=50")
    parser.add_argument("--eot-samples", type=int, default=None, help="draws of the EOT breakers per PGD step, gradients averaged (default 1)")
    parser.add_argument("--measure-draws", type=int, default=4, help="fixed draws of the method's measurement before/after, stored in the manifest (0 = skip)")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in the transformer (less GPU memory, slower)")
    parser.add_argument("--overwrite", action="store_true", help="redo outputs made with other settings or from changed inputs "
                        "(a re-run otherwise skips only outputs made with the same settings from the same input bytes, and refuses the rest)")
    parser.add_argument("--no-progress", action="store_true")
    add_method_arguments(parser)
    parser.set_defaults(**defaults.get("method", {}))
    return parser


def attack_main(family: str, argv=None) -> int:
    """Protect a file or folder against ``family``'s editor; exit 0, 1 (some images failed) or 2 (bad arguments)."""
    from .editors import editor_class

    args = attack_parser(family).parse_args(argv)
    quiet_libraries()
    avoid_cudnn_attention()
    from .distributed import current_shard
    from .methods import method_from_args
    from .prompts import PromptFileError
    from .config import PGDConfig, ProtectConfig
    from .names import shown
    from .protect import protect_files
    from .runs import OutputBusyError, merge_manifests

    try:
        check_attack_args(args, editor_class(family))
        apply_pixel_limit(args)
        method = method_from_args(args)
        method.check_applies(editor_class(family))
    except ArgumentProblem as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (PromptFileError, ValueError, TypeError) as exc:
        print(f"error: --method {args.method}: {exc}", file=sys.stderr)
        return 2
    try:
        pgd = PGDConfig.for_method(method, eps=args.eps, alpha=args.alpha, steps=args.steps, momentum=args.momentum,
                                   schedule=args.schedule, start=args.start, update=args.update, psnr_floor=args.psnr_floor,
                                   eot_samples=args.eot_samples)
        if args.eot:
            from .purify import parse_breakers

            breakers = parse_breakers(args.eot)
            for breaker in breakers:
                if breaker.kind != "vae":
                    breaker.differentiable()  # a breaker without a differentiable version fails here, before loading
        elif args.eot_samples is not None:
            raise ValueError("--eot-samples needs --eot")
    except (ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    shard = current_shard()  # under `accelerate launch`, this process's share of the inputs
    device = shard.device if (args.device == "auto" and shard.device is not None) else None
    try:
        editor = _load(editor_class(family), args, device)
        check_loaded_resolution(editor, args.resolution)
    except (ValueError, ImportError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.checkpointing:
        editor.enable_gradient_checkpointing()
    config = ProtectConfig(pgd=pgd, resolution=args.resolution, measure_draws=args.measure_draws, eot=tuple(args.eot or ()))
    manifest = "manifest.json" if shard.world == 1 else f"manifest.rank{shard.rank}.json"
    try:
        report = protect_files(editor, method, args.input, args.output, config, seed=args.seed, args_record=vars(args), shard=(shard.rank, shard.world),
                               manifest_name=manifest, overwrite=args.overwrite, progress=not args.no_progress)
    except OutputBusyError as exc:  # another process holds the output folder
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if shard.world > 1:
        shard.barrier()
        if shard.is_main:
            merge_manifests(args.output, shard.world)
        shard.barrier()
    prefix = f"[process {shard.rank}/{shard.world}] " if shard.world > 1 else ""
    print(f"{prefix}protected {len(report.done)}, skipped {len(report.skipped)} (already done with the same settings), "
          f"failed {len(report.failed)} -> {shown(args.output)}")
    for message in report.failed.values():
        print(f"  failed: {shown(message)}", file=sys.stderr)
    return 0 if report.ok else 1


# ---------------------------------------------------------------------------------------- inference
def inference_parser(family: str) -> argparse.ArgumentParser:
    from .editors import editor_class

    cls = editor_class(family)
    parser = argparse.ArgumentParser(description=cls.edit_description, formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_arguments(parser, cls, "edit")
    parser.add_argument("--images", required=True, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, help="output folder (e.g. runs/<name>/edits/protected)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--prompts", default=None, help="prompt pool file (default data/prompts/edit_prompts.txt)")
    group.add_argument("--prompt", default=None, help="a single edit instruction instead of a pool")
    parser.add_argument("--prompt-indices", type=int, nargs="+", default=None, help="use only these prompts of the pool (0-based)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the editor's, or the model folder's recommendation)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the editor's, or the model folder's recommendation)")
    parser.add_argument("--resolution", type=resolution_arg, default=None, help="working size: N (N x N area), native, or auto (default: the editor's)")
    parser.add_argument("--batch-size", type=int, default=1, help="(prompt, seed) pairs of one image edited together")
    parser.add_argument("--vae-tiling", action="store_true", help="decode large images tile by tile")
    parser.add_argument("--vae-slicing", action="store_true", help="decode a batch one image at a time")
    parser.add_argument("--overwrite", action="store_true", help="redo edits made with other settings or from changed inputs "
                        "(a re-run otherwise skips only edits made with the same settings, prompt and input bytes, and refuses the rest)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def inference_main(family: str, argv=None) -> int:
    """Edit clean or protected images with ``family``'s real pipeline into the run-folder layout."""
    from .editors import editor_class
    from .inference import EditSettings, run_edits, validate_seeds
    from .prompts import Prompt, PromptFileError, load_prompts, select_prompts

    args = inference_parser(family).parse_args(argv)
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
        check_resolution(editor_class(family), args.resolution, args.model)
        apply_pixel_limit(args)
        check_paths("--images", args.images, args.output)
    except (PromptFileError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    quiet_libraries()
    try:
        editor = _load(editor_class(family), args)
        check_loaded_resolution(editor, args.resolution)
    except (ValueError, ImportError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    editor.enable_vae_memory_savers(tiling=args.vae_tiling, slicing=args.vae_slicing)
    recommended = editor.recommended  # the editor's defaults, or what a model folder ships (the toy)
    settings = EditSettings(
        steps=args.steps or int(recommended["num_inference_steps"]),
        guidance=args.guidance if args.guidance is not None else float(recommended["guidance_scale"]),
        resolution=args.resolution or recommended["resolution"],
        batch_size=args.batch_size,
    )
    record = {"editor": editor.family, "images": str(args.images), "prompts_file": args.prompts, "seeds": seeds, "dtype": str(editor.dtype),
              **{k: v for k, v in editor_class(family).options_from_args(args).items() if isinstance(v, (str, int, float, bool, type(None)))},
              **getattr(editor, "edit_settings", {})}  # what an editor's edits also depend on (IP2P: image guidance)
    regulation = contextlib.nullcontext()
    if hasattr(args, "uvr"):  # UVR (decontext.safety.uvr): the editor generates under the regulator
        from .safety.uvr import check_resume, from_args

        try:
            regulation, record["uvr"] = from_args(args, editor)
            check_resume(Path(args.output) / "index.json", record["uvr"])
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    from .names import shown
    from .runs import OutputBusyError

    try:
        with regulation:
            report = run_edits(editor, args.images, prompts, seeds, args.output, settings, record=record, progress=not args.no_progress,
                               overwrite=args.overwrite)
    except OutputBusyError as exc:  # another process holds the output folder
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"edited {len(report.done)}, skipped {len(report.skipped)} (already done with the same settings), failed images {len(report.failed)} -> {shown(args.output)}")
    for message in report.failed.values():
        print(f"  failed: {shown(message)}", file=sys.stderr)
    return 0 if report.ok else 1
