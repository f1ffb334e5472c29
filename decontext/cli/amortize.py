"""``decontext amortize``: train an amortized protector against an editor with any method's own loss.

    decontext amortize --model toy --method decontext --eps 16 --images toy-train --steps 3000 \\
        --out runs/protectors/mine
    decontext attack --model toy --method amortized --protector runs/protectors/mine \\
        --input faces/ --output protected/

A killed run resumes from its last checkpoint to the same weights (run the same command again). The
protector ends as ``OUT/protector.safetensors`` + ``OUT/protector.json`` (docs/AMORTIZED.md).
"""

from __future__ import annotations

import argparse
import sys

from ..editors import EDITORS, Family
from .attack import add_method_arguments, method_options
from .common import ArgumentProblem, add_model_arguments, choose_family, fail


def parser(spec: Family) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="decontext amortize", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(ap, spec, "attack", fixed=False)
    ap.add_argument(
        "--images",
        default=None,
        help="training photos: a folder (every tenth file, sorted, held out for validation) "
        "or toy-train (the toy world's training identities; its held-out ones validate; "
        "toy-train:v3 for world v3's) (default: toy-train of the toy editor's own world)",
    )
    ap.add_argument("--out", required=True, help="folder for the protector (and its checkpoint/ while training)")
    ap.add_argument(
        "--eps", type=float, default=None, help=f"L-inf budget in 1/255 units (default the family's, {spec.eps:g})"
    )
    ap.add_argument(
        "--size",
        type=int,
        default=None,
        help="working size the protector trains at, square (default: 64 on a toy or tiny model, else 512)",
    )
    ap.add_argument("--batch-size", type=int, default=8, help="images per training step (default 8)")
    ap.add_argument("--steps", type=int, default=3000, help="training steps (default 3000)")
    ap.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate (default 3e-4)")
    ap.add_argument(
        "--architecture",
        choices=["small", "conv", "fold4", "stochastic"],
        default=None,
        help="small: UNet2DModel with a self-attention mid block (the shipped toy protectors; fine at 64-256 px); "
        "conv: the same without it, cost linear in pixels (for 512-1024 px working sizes); "
        "fold4: the photo folded 4 x 4 into channels, no attention, several times faster than conv at 1 MP; "
        "stochastic: small with a noise input seeded from each photo's pixels (against learned removers). "
        "Default: small up to 256 px, conv above",
    )
    ap.add_argument(
        "--seed", type=int, default=0, help="seed of the weights' initialisation and of every draw (default 0)"
    )
    ap.add_argument(
        "--eot",
        nargs="+",
        default=None,
        metavar="BREAKER",
        help="train to survive these breakers (decontext/purify.py), e.g. jpeg blur",
    )
    ap.add_argument(
        "--attackers",
        nargs="+",
        default=None,
        metavar="ATTACKER",
        help="attackers in the loop (decontext/attackers.py specs, e.g. none regen:t=0.3 jpeg webp remover): each "
        "step's batch goes through one, drawn uniformly; differentiable where the attacker is (the breakers' twins, "
        "the regeneration denoiser), straight-through where not; with --eot, its breakers join the draw. remover: "
        "a small net the trainer trains in turn with the protector (adversarial training; remover:width=..,lr=..)",
    )
    ap.add_argument(
        "--remover-every",
        type=int,
        default=None,
        metavar="K",
        help="with remover among --attackers: train the remover every K protector steps (default 1)",
    )
    ap.add_argument(
        "--remover-steps",
        type=int,
        default=None,
        metavar="N",
        help="with remover among --attackers: Adam steps of the remover each time, on that step's training batch "
        "(default 2)",
    )
    ap.add_argument(
        "--ensemble",
        nargs="+",
        default=None,
        metavar="FAMILY:MODEL",
        help="more editors to train against at once, e.g. flux_kontext:toy-v2 instruct_pix2pix:toy-ip2p; "
        "each editor's gradient is scaled to unit mean |g| before they are averaged",
    )
    ap.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints (default 200)")
    ap.add_argument(
        "--validate-every",
        type=int,
        default=500,
        help="steps between held-out scores of the method's measure (default 500)",
    )
    ap.add_argument("--val-count", type=int, default=8, help="held-out images scored (default 8)")
    ap.add_argument(
        "--checkpointing", action="store_true", help="gradient checkpointing in the editor (less GPU memory, slower)"
    )
    ap.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop (with a checkpoint) after this many steps in all; the same command resumes",
    )
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_method_arguments(ap, spec)
    return ap


def main(argv=None) -> int:
    spec = choose_family(argv, None)
    args = parser(spec).parse_args(argv)
    try:
        for name in ("batch_size", "steps", "checkpoint_every", "validate_every", "val_count"):
            if getattr(args, name) < 1:
                raise ArgumentProblem(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        for name in ("remover_every", "remover_steps"):
            flag, value = "--" + name.replace("_", "-"), getattr(args, name)
            if value is not None and value < 1:
                raise ArgumentProblem(f"{flag} must be >= 1, got {value}")
            if value is not None and not any(a.partition(":")[0] == "remover" for a in args.attackers or ()):
                raise ArgumentProblem(f"{flag} {value}: no remover to train (add remover to --attackers)")
        if args.method == "amortized" or args.method == "noise":
            raise ArgumentProblem(f"--method {args.method} has no loss to train a protector with")
        for member in args.ensemble or ():
            if member.partition(":")[0] not in EDITORS or not member.partition(":")[2]:
                raise ArgumentProblem(
                    f"--ensemble {member}: write FAMILY:MODEL with FAMILY one of {', '.join(EDITORS)}"
                )
        if args.eps is not None and not args.eps > 0:
            raise ArgumentProblem(f"--eps must be > 0, got {args.eps:g}")
        if args.images is None:
            from ..toy.names import is_toy_model, toy_world_name

            world_name = toy_world_name(args.model) if is_toy_model(args.model, spec.name) else "v1"
            args.images = "toy-train" if world_name == "v1" else f"toy-train:{world_name}"
        if args.images.startswith("toy-train:"):
            from ..toy.worlds import WORLDS

            if args.images.partition(":")[2] not in WORLDS:
                raise ArgumentProblem(f"--images {args.images}: unknown toy world (known: {', '.join(sorted(WORLDS))})")
        elif args.images != "toy-train":
            from pathlib import Path

            if not Path(args.images).is_dir():
                raise ArgumentProblem(f"--images {args.images}: not a folder (or toy-train, toy-train:v3)")
    except ArgumentProblem as exc:
        return fail(str(exc))
    from ..amortize import RunOptions, TrainConfig, train
    from ..methods import METHODS, method_names
    from ..toy.names import is_toy_model
    from .common import avoid_cudnn_attention, quiet_libraries

    quiet_libraries()
    avoid_cudnn_attention()
    small = args.model == "tiny" or is_toy_model(args.model)
    options = {k: v for k, v in method_options(args, spec).items() if v is not None}
    takes_prompts = any("prompts" in METHODS[n].defaults for n in method_names(args.method))
    if is_toy_model(args.model, spec.name) and takes_prompts and "prompts" not in options:
        from ..assets import portable
        from ..toy.names import toy_prompts

        options["prompts"] = portable(
            toy_prompts(args.model, spec.name)
        )  # a toy's own edit pool, as its demo attacks use
    config = TrainConfig(
        model=args.model,
        family=args.family,
        method=args.method,
        method_options=options,
        eps=args.eps or spec.eps,
        images=args.images,
        size=args.size or (64 if small else 512),
        batch_size=args.batch_size,
        steps=args.steps,
        lr=args.lr,
        seed=args.seed,
        eot=tuple(args.eot or ()),
        attackers=tuple(args.attackers or ()),
        ensemble=tuple(args.ensemble or ()),
        **{name: getattr(args, name) for name in ("remover_every", "remover_steps") if getattr(args, name) is not None},
    )
    if (args.architecture or ("small" if config.size <= 256 else "conv")) != "small":
        from ..methods.protector import ARCHITECTURES

        config.architecture = dict(ARCHITECTURES[args.architecture or "conv"])
    run = RunOptions(
        checkpoint_every=args.checkpoint_every,
        validate_every=args.validate_every,
        val_count=args.val_count,
        device=args.device,
        dtype=args.dtype,
        checkpointing=args.checkpointing,
        progress=not args.no_progress,
        stop_after=args.stop_after,
    )
    try:
        result = train(config, args.out, run)
    except (ValueError, FileNotFoundError) as exc:
        return fail(str(exc))
    if "stopped_at" in result:
        print(
            f"stopped at step {result['stopped_at']} of {config.steps}; "
            f"run the same command to resume ({args.out}/checkpoint)"
        )
        return 0
    last = result["validation"][-1] if result["validation"] else {}
    print(
        f"protector: {args.out} "
        f"({result['parameters']:,} parameters, {result['steps']} steps, {result['seconds']:.0f} s); "
        f"held-out {last.get('clean')} -> {last.get('protected')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
