"""``decontext cluster``: protect many photos as a Ray Data job (``pip install decontext[cluster]``).

    decontext cluster --model toy --method amortized --protector toy-decontext \\
        --input faces/ --output protected/ --actors 2
    ray start --head                    # on one machine; `ray start --address HEAD:6379` on the others
    decontext cluster --address auto --input s3://bucket/uploads/ --output /shared/protected \\
        --model black-forest-labs/FLUX.1-Kontext-dev --preset fast --actors 8 --gpus-per-actor 1

Every flag of ``decontext attack`` works the same (method, budget, preset, protector, seed); --input may
also be a glob, a text list (.txt), a Parquet/CSV manifest (column path), or any URI pyarrow reads. The
output folder gets the same files and manifest.json as ``decontext attack`` would write, exactly once
per image, whatever dies on the way (docs/CLUSTER.md).
"""

from __future__ import annotations

import signal
import sys
from dataclasses import asdict, fields

from .attack import check_arguments, method_options, resolve_protection
from .attack import parser as attack_parser
from .common import ArgumentProblem, apply_pixel_limit, choose_family, fail, family_load_options


def parser(spec):
    ap = attack_parser(spec)
    ap.prog = "decontext cluster"
    ap.description = __doc__
    group = ap.add_argument_group("cluster (Ray)")
    group.add_argument(
        "--address",
        default=None,
        help="the Ray cluster: auto (the one `ray start` made on this machine), ray://HOST:10001, ... "
        "(default: a local one for this job)",
    )
    group.add_argument("--actors", type=int, default=2, help="protecting actors, each with its own editor (default 2)")
    group.add_argument(
        "--gpus-per-actor", type=float, default=0.0, help="GPUs per actor (default 0: CPU; 1 on a GPU cluster)"
    )
    group.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPU cores per actor (default 1)")
    return ap


def main(argv=None) -> int:
    spec = choose_family(argv, None)
    args = parser(spec).parse_args(argv)
    try:
        if args.actors < 1 or args.gpus_per_actor < 0 or args.cpus_per_actor <= 0:
            raise ArgumentProblem("--actors must be >= 1, --gpus-per-actor >= 0 and --cpus-per-actor > 0")
        if args.checkpointing or args.compile:
            raise ArgumentProblem("--checkpointing and --compile are not passed to cluster actors yet; drop them")
        check_arguments(args, spec, local_input=False)
        apply_pixel_limit(args)
        _, pgd = resolve_protection(
            args, spec
        )  # the method is built here only to check its options; actors build their own
    except ArgumentProblem as exc:
        return fail(str(exc))
    try:
        import ray  # noqa: F401
    except ImportError:
        return fail("decontext cluster needs Ray: pip install 'decontext[cluster]'")
    from ..cluster import ClusterJob, run_job
    from ..editors import declared_resolution

    resolution = args.resolution if args.resolution is not None else declared_resolution(args.model, spec.name)
    device = args.device if args.device != "auto" else ("cuda" if args.gpus_per_actor > 0 else "cpu")
    resolved = {f.name: getattr(pgd, f.name) for f in fields(pgd)}
    record = {
        **vars(args),
        **{k: v for k, v in resolved.items() if k in vars(args)},
        "preset": args.preset or "paper",
        "family": spec.name,
        "resolution": resolution,
    }
    job = ClusterJob(
        inputs=args.input,
        output=args.output,
        family=spec.name,
        model=args.model,
        method=args.method,
        method_options={k: v for k, v in method_options(args, spec).items() if v is not None},
        weights=args.weights,
        compose_norm=args.compose_norm,
        pgd=asdict(pgd),
        resolution=resolution,
        measure_draws=args.measure_draws,
        eot=tuple(args.eot or ()),
        init=args.init,
        seed=args.seed,
        device=device,
        dtype=args.dtype,
        load_options=family_load_options(spec, "attack", args),
        batch_size=args.batch_size,
        args=record,
    )

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)  # a kill ends like Ctrl-C: records folded in, the local Ray shut down
    try:
        report = run_job(
            job,
            actors=args.actors,
            gpus_per_actor=args.gpus_per_actor,
            cpus_per_actor=args.cpus_per_actor,
            address=args.address,
        )
    except (FileNotFoundError, ValueError) as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        print(
            f"interrupted; what finished is recorded in {args.output}/manifest.json. "
            "Run the same command again to do the rest.",
            file=sys.stderr,
        )
        return 130
    print(
        f"protected {report.done}, skipped {report.skipped} (already done with the same settings), "
        f"failed {len(report.failed)} "
        f"of {report.total} in {report.seconds:.0f} s ({report.rate:.2f} images/s) -> {args.output}"
    )
    for name, message in report.failed.items():
        print(f"  failed: {name}: {message}", file=sys.stderr)
    return 0 if not report.failed else 1


if __name__ == "__main__":
    sys.exit(main())
