"""``decontext attack``: protect a file or a folder against an editor family.

    decontext attack --model toy --input face.png --output protected/
    python attack/attack_kontext.py ...           # the same, the family fixed by the script

Defaults are the family's official attack settings (``decontext.editors.FAMILIES``), under the method's
own PGD preferences, under the flags given; the manifest records what ran. Exit 0 (done), 1 (some
images failed; the others were saved) or 2 (bad arguments: nothing was loaded or written).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from ..config import PRESETS, SCHEDULES, STARTS, UPDATES, describe_preset
from ..editors import Family
from ..methods import METHODS, NORMALIZE, OPTIONS, method_names, method_spec, missing_capabilities
from .common import (
    ArgumentProblem,
    add_model_arguments,
    apply_pixel_limit,
    avoid_cudnn_attention,
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
        prog="decontext attack" if not fixed else None,
        description=spec.attack_description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(ap, spec, "attack", fixed)
    ap.add_argument("--input", required=True, help="an image file or a folder of images")
    ap.add_argument("--output", required=True, help="folder for <stem>.png and manifest.json")
    pgd = ap.add_argument_group(
        "budget and optimiser (defaults: the family's official attack, then the preset, "
        "then the method's own preferences; a flag given overrides them all)"
    )
    pgd.add_argument(
        "--preset",
        default=None,
        choices=sorted(PRESETS),
        help="paper: the official settings, fixed steps, never stopping early "
        "(what reproductions use; the same as no preset); "
        f"fast: {describe_preset('fast', spec.presets)} "
        "(docs/EVIDENCE.md, 'Fewer PGD steps'). Default: none, i.e. the official settings",
    )
    pgd.add_argument(
        "--eps", type=float, default=None, help=f"L-inf budget in 1/255 units (default {spec.eps:g}: {spec.eps_note})"
    )
    pgd.add_argument("--alpha", type=float, default=None, help=f"PGD step in 1/255 units (default {spec.alpha:g})")
    pgd.add_argument("--steps", type=int, default=None, help=f"PGD steps (default {spec.steps})")
    pgd.add_argument(
        "--momentum",
        type=float,
        default=None,
        help="MI-FGSM momentum decay (default: the method's, else 0 = plain sign steps)",
    )
    pgd.add_argument(
        "--schedule",
        default=None,
        choices=SCHEDULES,
        help="step-size schedule (default: the method's, else constant; linear = PhotoGuard's decay to alpha/100)",
    )
    pgd.add_argument(
        "--start",
        default=None,
        choices=STARTS,
        help="where PGD starts: clean (the image), uniform (a random point of the eps-ball) "
        "or sign (a random corner of it) (default: the method's, else clean)",
    )
    pgd.add_argument(
        "--update",
        default=None,
        choices=UPDATES,
        help="update rule: sign (every pixel moves by alpha), l2 (a step of rms alpha along the gradient) "
        "or adam (Adam-normalised steps of at most ~alpha) (default sign)",
    )
    pgd.add_argument(
        "--psnr-floor",
        type=float,
        default=None,
        help="also keep the protected image's PSNR at or above this many dB (an L2 budget beside --eps)",
    )
    pgd.add_argument(
        "--stop-patience",
        type=int,
        default=None,
        help="stopping rule: end an image's PGD once the mean loss over --stop-window steps has not risen by more than "
        "--stop-tol for this many steps (0 = never; default 0, the fast preset's own otherwise); "
        "the manifest records steps run and why",
    )
    pgd.add_argument(
        "--stop-window", type=int, default=None, help="stopping rule: steps averaged (the loss is noisy; default 25)"
    )
    pgd.add_argument(
        "--stop-tol",
        type=float,
        default=None,
        help="stopping rule: the rise of the mean loss that counts as progress, "
        "as a fraction of the gain so far (default 0.01)",
    )
    pgd.add_argument(
        "--init",
        default=None,
        metavar="PROTECTOR",
        help="start PGD from a trained protector's output (shipped name such as toy-decontext, or a folder) "
        "instead of the clean image; with a few --steps this matches many steps from the clean image "
        "at a fraction of the cost (docs/EVIDENCE.md)",
    )
    pgd.add_argument(
        "--allow-transfer",
        action="store_true",
        help="use a protector (--protector, --init) trained for another editor family, another method "
        "or a larger eps anyway (its output is clamped to this run's budget)",
    )
    pgd.add_argument(
        "--eot",
        nargs="+",
        default=None,
        metavar="BREAKER",
        help="optimise to survive these breakers (expectation over transformation; decontext/purify.py): "
        "e.g. jpeg resize blur, or jpeg:quality=50",
    )
    pgd.add_argument(
        "--eot-samples",
        type=int,
        default=None,
        help="draws of the EOT breakers per PGD step, gradients averaged (default 1)",
    )
    ap.add_argument(
        "--resolution",
        type=resolution_arg,
        default=None,
        help=f"working size inside the editor: auto ({spec.auto_resolution_note}), "
        "native (the image's own size), or N (an N x N area) "
        f"(default: the model's own: {spec.tiny_resolution} for tiny, the toys' 64, auto for real checkpoints)",
    )
    ap.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of every random draw (start, prompts, noise levels); "
        "each image's own seed comes from it and its file name (default 0)",
    )
    ap.add_argument(
        "--measure-draws",
        type=int,
        default=4,
        help="fixed draws of the method's measure before/after, stored in the manifest (0 = skip; default 4)",
    )
    ap.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="images of one size protected together per PGD step, each as if alone (its own seed, draws and stopping; "
        "the same result within float tolerance): more images a second where the device has room "
        f"(methods: {', '.join(n for n, e in METHODS.items() if e.batched)}; default 1)",
    )
    ap.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile every attention block of the editor (regional compilation; the same result within float "
        "tolerance; minutes of compiling first, then faster steps on a GPU; "
        "slower on the CPU tiny model: docs/PERFORMANCE.md)",
    )
    ap.add_argument(
        "--checkpointing",
        action="store_true",
        help="gradient checkpointing in the transformer (less GPU memory, slower)",
    )
    ap.add_argument(
        "--overwrite",
        action="store_true",
        help="redo outputs made with other settings or from changed inputs "
        "(a re-run otherwise skips only outputs made with the same settings from the same input bytes, "
        "and refuses the rest)",
    )
    ap.add_argument("--no-progress", action="store_true", help="no progress bars (the per-image lines stay)")
    add_method_arguments(ap, spec)
    return ap


def add_method_arguments(ap: argparse.ArgumentParser, spec: Family) -> None:
    """``--method`` and every registered method's options, each flag once, with each method's default in its help."""
    summary = "; ".join(f"{name}: {entry.summary}" for name, entry in METHODS.items())
    ap.add_argument(
        "--method",
        default=spec.method,
        type=method_spec,
        help=f"protection method (default {spec.method}); a+b composes several on one PGD run "
        f"(e.g. decontext+encoder, weighted with --weights). {summary}",
    )
    group = ap.add_argument_group(
        "method options (each applies to the methods that take it; unset: each method's own default)"
    )
    group.add_argument(
        "--weights", default=None, help="weights of a composed --method, e.g. decontext:1,encoder:0.5 (default 1 each)"
    )
    group.add_argument(
        "--compose-norm",
        default=None,
        choices=NORMALIZE,
        help="combining a composed --method: grad (default: each term's gradient scaled to unit mean |g| "
        "before weighting) or none (plain weighted sum)",
    )
    for dest, flag in OPTIONS.items():
        defaults = [
            f"{name} {_shown(_family_default(spec, name, dest))}"
            for name, entry in METHODS.items()
            if dest in entry.defaults
        ]
        flag.add_to(group, f" (default: {'; '.join(defaults)})")


def _family_default(spec: Family, method: str, dest: str):
    return (
        spec.method_defaults.get(dest, METHODS[method].defaults[dest])
        if method == spec.method
        else METHODS[method].defaults[dest]
    )


def _shown(value) -> str:
    if value is None:  # the prompt pool
        return "the project's edit-prompt pool"
    if isinstance(value, (tuple, list)):
        return " ".join(str(v) for v in value)
    return str(value)


def method_options(args, spec: Family) -> dict:
    """The method options given, plus the family's official ones where the user gave none."""
    given = {dest: getattr(args, dest) for dest in OPTIONS if getattr(args, dest, None) is not None}
    names = method_names(args.method)
    for dest, value in spec.method_defaults.items():
        if dest not in given and any(dest in METHODS[n].defaults for n in names):
            given[dest] = value
    return given


def check_protector(args, spec: Family, eps: float) -> None:
    """A protector (--method amortized --protector P, or --init P) that exists and fits this run: the
    editor family, the method and the budget it was trained for (refused otherwise, unless --allow-transfer);
    ``eps``: the run's resolved budget (1/255 units)."""
    from ..methods.protector_files import read_config, shipped_protectors, transfer_problems

    amortized = args.method == "amortized"
    flag, ref = ("--protector", args.protector) if amortized else ("--init", args.init)
    if ref is None:
        raise ArgumentProblem(
            "--method amortized needs --protector NAME or FOLDER "
            f"(shipped: {', '.join(shipped_protectors()) or 'none'})"
        )
    try:
        config = read_config(ref)
    except (FileNotFoundError, ValueError) as exc:
        raise ArgumentProblem(f"{flag} {ref}: {exc}") from None
    objective = METHODS.get(str(config["method"].get("method")))
    missing = sorted(set(objective.requires) - set(spec.capabilities)) if amortized and objective is not None else []
    # no flag can make it run: the objective it measures (and any steps on top) needs what this editor lacks
    if missing:
        raise ArgumentProblem(
            f"{flag} {ref}: its objective {config['method']['method']!r} does not apply to the {spec.name} editor "
            f"(it needs {', '.join(missing)}); --allow-transfer cannot change that"
        )
    problems = transfer_problems(config, spec.name, None if amortized else args.method, eps)
    if problems and not args.allow_transfer:
        raise ArgumentProblem(f"{flag} {ref}: {'; '.join(problems)}. Refused (--allow-transfer uses it anyway)")


def check_arguments(args, spec: Family, local_input: bool = True) -> None:
    """Everything about the attack's flags that can be checked without a model (exit 2 before loading)."""
    for flag in ("eps", "alpha"):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            raise ArgumentProblem(f"--{flag} must be > 0 (in 1/255 units), got {value:g}")
    if args.steps is not None and args.steps < 0:
        raise ArgumentProblem(f"--steps must be >= 0, got {args.steps}")
    optimising = any(METHODS[n].optimises for n in method_names(args.method))
    if args.steps == 0 and optimising:
        raise ArgumentProblem(
            f"--steps 0 runs no optimisation: --method {args.method} would save the image unchanged "
            "(use --method noise for an unoptimised control)"
        )
    if args.batch_size < 1:
        raise ArgumentProblem(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.batch_size > 1:
        single = [n for n in method_names(args.method) if not METHODS[n].batched]
        if single or "+" in args.method:
            raise ArgumentProblem(
                f"--batch-size {args.batch_size}: --method {args.method} protects one image at a time "
                f"(several per step: {', '.join(n for n, e in METHODS.items() if e.batched)})"
            )
        if args.eot:
            raise ArgumentProblem(f"--batch-size {args.batch_size}: --eot protects one image at a time")
    if args.measure_draws < 0:
        raise ArgumentProblem(f"--measure-draws must be >= 0, got {args.measure_draws}")
    if args.seed < 0:
        raise ArgumentProblem(f"--seed must be >= 0, got {args.seed}")
    from ..editors import CAPABILITIES

    for name in method_names(args.method):
        missing = missing_capabilities(name, spec.capabilities)
        if missing:
            needs = "; ".join(f"{m}: {CAPABILITIES[m]}" for m in missing)
            raise ArgumentProblem(
                f"--method {args.method}: method {name!r} does not apply to the {spec.name} editor: it needs {needs}"
            )
    check_resolution(spec, args.resolution, args.model)
    if (
        local_input
    ):  # a cluster job's --input may be a URI, a glob, a list or a manifest (decontext.cluster.list_inputs)
        check_paths("--input", args.input, args.output)


def resolve_protection(args, spec: Family):
    """(method, PGDConfig) of parsed attack flags: the family's official settings under the preset, the
    method's preferences and the flags given, resolved once here; then the resolved values are checked (a
    protector against the budget, the step against the budget). ArgumentProblem names what cannot work
    (before any model loads)."""
    from ..config import PGDConfig
    from ..methods import build_from_options
    from ..prompts import PromptFileError

    try:
        method = build_from_options(args.method, method_options(args, spec), args.weights, args.compose_norm)
    except (PromptFileError, ValueError, TypeError) as exc:
        raise ArgumentProblem(f"--method {args.method}: {exc}") from None
    try:
        pgd = PGDConfig.for_method(
            method,
            defaults=spec.pgd_defaults,
            preset=args.preset,
            family_presets=spec.presets,
            stop_patience=args.stop_patience,
            stop_window=args.stop_window,
            stop_tol=args.stop_tol,
            eps=args.eps,
            alpha=args.alpha,
            steps=args.steps,
            momentum=args.momentum,
            schedule=args.schedule,
            start=args.start,
            update=args.update,
            psnr_floor=args.psnr_floor,
            eot_samples=args.eot_samples,
        )
        if args.eot:
            from ..purify import parse_breakers

            for breaker in parse_breakers(args.eot):
                if breaker.kind != "vae":
                    breaker.differentiable()  # a breaker without a differentiable version fails here, before loading
        elif args.eot_samples is not None:
            raise ValueError("--eot-samples needs --eot")
    except (ValueError, TypeError) as exc:
        raise ArgumentProblem(str(exc)) from None
    check_resolved(args, spec, pgd)
    return method, pgd


def check_resolved(args, spec: Family, pgd) -> None:
    """The checks that need the resolved budget: a protector fits it; a step larger than it is flagged."""
    if args.method == "amortized" or args.init is not None:
        check_protector(args, spec, pgd.eps)
    if pgd.alpha > pgd.eps:
        print(
            f"warning: --alpha {pgd.alpha:g} is larger than --eps {pgd.eps:g}: every step jumps to the edge of the "
            "budget (a plain sign attack); a step of eps/10 or less is usual",
            file=sys.stderr,
        )


def main(argv=None, family: str | None = None) -> int:
    """Protect a file or folder; exit 0, 1 (some images failed) or 2 (bad arguments)."""
    spec = choose_family(argv, family)
    args = parser(spec, fixed=family is not None).parse_args(argv)
    try:
        check_arguments(args, spec)
        apply_pixel_limit(args)
    except ArgumentProblem as exc:
        return fail(str(exc))
    quiet_libraries()
    avoid_cudnn_attention()
    from ..config import ProtectConfig
    from ..distributed import current_shard
    from ..names import shown
    from ..protect import protect_files
    from ..runs import OutputBusyError, merge_manifests

    try:
        method, pgd = resolve_protection(args, spec)
    except ArgumentProblem as exc:
        return fail(str(exc))
    shard = current_shard()  # under `accelerate launch`, this process's share of the inputs
    device = shard.device if (args.device == "auto" and shard.device is not None) else None
    try:
        editor = load_editor_for(spec, "attack", args, device)
        resolution = args.resolution if args.resolution is not None else editor.default_resolution
        check_loaded_resolution(editor, resolution)
    except ArgumentProblem as exc:
        return fail(str(exc))
    except (ValueError, ImportError, FileNotFoundError) as exc:
        return fail(str(exc))
    if args.checkpointing:
        editor.enable_gradient_checkpointing()
    if args.compile:
        editor.compile_blocks()
    config = ProtectConfig(
        pgd=pgd, resolution=resolution, measure_draws=args.measure_draws, eot=tuple(args.eot or ()), init=args.init
    )
    manifest = "manifest.json" if shard.world == 1 else f"manifest.rank{shard.rank}.json"
    # The arguments as they took effect: the resolved budget, optimiser and working size, not None for "unset".
    resolved = {f.name: getattr(pgd, f.name) for f in fields(pgd)}  # every PGD value, the stopping rule's too
    record = {
        **vars(args),
        **{k: v for k, v in resolved.items() if k in vars(args)},
        "preset": args.preset or "paper",
        "family": spec.name,
        "resolution": resolution,
    }
    try:
        report = protect_files(
            editor,
            method,
            args.input,
            args.output,
            config,
            seed=args.seed,
            args_record=record,
            shard=(shard.rank, shard.world),
            manifest_name=manifest,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            batch_size=args.batch_size,
        )
    except OutputBusyError as exc:  # another process holds the output folder
        return fail(str(exc))
    if shard.world > 1:
        shard.barrier()
        if shard.is_main:
            merge_manifests(args.output, shard.world)
        shard.barrier()
    prefix = f"[process {shard.rank}/{shard.world}] " if shard.world > 1 else ""
    print(
        f"{prefix}protected {len(report.done)}, skipped {len(report.skipped)} (already done with the same settings), "
        f"failed {len(report.failed)} -> {shown(args.output)}"
    )
    for message in report.failed.values():
        print(f"  failed: {shown(message)}", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
