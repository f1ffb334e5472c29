"""``decontext serve``: protect photos at upload time over HTTP (``pip install decontext[serve]``; docs/SERVE.md).

    decontext serve --protector toy-decontext --port 8000          # http://127.0.0.1:8000/docs
    curl --data-binary @face.png -H 'Content-Type: image/png' http://127.0.0.1:8000/v1/protect -o protected.png
    decontext serve --host 0.0.0.0 --api-key-file /etc/decontext/key  # beyond this machine: a key is required

Served on 127.0.0.1 only unless --host says otherwise, and then only with --api-key-file (every request but
/healthz and /readyz must carry the key). No telemetry; nothing is written to disk unless --keep DIR. SIGTERM
stops accepting, answers what is in flight, and exits 0.

    decontext serve --ray --replicas 2 --gpus-per-replica 1     # the same app on Ray Serve (decontext[serve-ray])
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from .common import fail


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="decontext serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--protector",
        action="append",
        default=None,
        help="a protector to serve (shipped name or folder; repeat for several, the first is the default) "
        "(default toy-decontext)",
    )
    ap.add_argument("--model", default=None, help="the editor (default: the one the first protector was trained on)")
    ap.add_argument("--family", default=None, help="its editor family (default: the protector's)")
    ap.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda when available)")
    ap.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")
    ap.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    ap.add_argument(
        "--api-key-file",
        default=None,
        help="a file whose first line is the key (16+ characters) every request must carry; required for a "
        "non-loopback --host",
    )
    limits = ap.add_argument_group("load and limits")
    limits.add_argument("--max-batch", type=int, default=16, help="images per batch of the worker (default 16)")
    limits.add_argument(
        "--max-wait-ms", type=float, default=10.0, help="how long a batch waits for more after its first (default 10)"
    )
    limits.add_argument(
        "--max-queue", type=int, default=64, help="requests waiting at most; beyond, 503 + Retry-After (default 64)"
    )
    limits.add_argument("--timeout", type=float, default=30.0, help="seconds per request, else 504 (default 30)")
    limits.add_argument("--max-upload-mb", type=float, default=20.0, help="largest body in MiB, else 413 (default 20)")
    limits.add_argument(
        "--max-megapixels",
        type=float,
        default=40.0,
        help="largest image a header may declare, checked before decoding, else 413 (default 40)",
    )
    limits.add_argument(
        "--max-eps",
        type=float,
        default=None,
        help="largest budget a request gets, 1/255 units (default the protector's)",
    )
    limits.add_argument(
        "--measure-draws",
        type=int,
        default=1,
        help="draws of the objective's measure before and after, in the record (default 1; 0: none, faster)",
    )
    limits.add_argument("--no-pgd", action="store_true", help="refuse method=fast (PGD) requests")
    limits.add_argument("--pgd-steps", type=int, default=None, help="cap the fast PGD preset's steps (default its own)")
    limits.add_argument("--threads", type=int, default=None, help="torch threads of the worker (default torch's)")
    limits.add_argument(
        "--batch-compute",
        action="store_true",
        help="protect a batch's photos in one call (faster, above all for PGD; a photo may then differ by one level "
        "in a few pixels with what it was batched with). Default: each photo alone, equal uploads get equal bytes",
    )
    ap.add_argument("--seed", type=int, default=0, help="mixed into each upload's content seed (default 0)")
    ap.add_argument(
        "--keep", default=None, help="write each upload, answer and record here (default: nothing is kept on disk)"
    )
    ap.add_argument("--log-level", default="info", help="debug, info, warning (default info)")
    ray = ap.add_argument_group("Ray Serve")
    ray.add_argument("--ray", action="store_true", help="deploy on Ray Serve instead of one local process")
    ray.add_argument("--address", default=None, help="the Ray cluster (auto, ray://HOST:10001; default a local one)")
    ray.add_argument("--replicas", type=int, default=1, help="replicas, each with its own editor (default 1)")
    ray.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs per replica (default 0)")
    return ap


def settings_from(args):
    """``ServeSettings`` of parsed flags; ValueError naming a flag that cannot work."""
    from ..serve.settings import ServeSettings, is_loopback, read_api_key

    key = read_api_key(args.api_key_file) if args.api_key_file else None
    if key is None and not is_loopback(args.host):
        raise ValueError(
            f"--host {args.host} serves beyond this machine: give --api-key-file FILE (a key every request must "
            "carry), or keep the default --host 127.0.0.1"
        )
    settings = ServeSettings(
        protectors=tuple(args.protector or ("toy-decontext",)),
        model=args.model,
        family=args.family,
        device=args.device,
        dtype=args.dtype,
        max_eps=args.max_eps,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        timeout=args.timeout,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_megapixels=args.max_megapixels,
        measure_draws=args.measure_draws,
        allow_pgd=not args.no_pgd,
        pgd_steps=args.pgd_steps,
        seed=args.seed,
        keep=args.keep,
        api_key=key,
        threads=args.threads,
        batch_compute=args.batch_compute,
    )
    settings.check()
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be 1-65535, got {args.port}")
    if args.replicas < 1 or args.gpus_per_replica < 0:
        raise ValueError("--replicas must be >= 1 and --gpus-per-replica >= 0")
    return settings


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = settings_from(args)
        from ..methods.protector_files import read_config

        for name in settings.protectors:
            read_config(name)
    except (ValueError, FileNotFoundError) as exc:
        return fail(str(exc))
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        return fail("decontext serve needs FastAPI and uvicorn: pip install 'decontext[serve]'")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.ray:
        return serve_on_ray(args, settings)
    from ..serve.app import create_app
    from .common import avoid_cudnn_attention, quiet_libraries

    quiet_libraries()
    avoid_cudnn_attention()
    app = create_app(settings)
    # uvicorn catches SIGTERM, stops accepting, answers what is in flight, runs the app's shutdown, then raises
    # the signal again for the handlers that were there before it: these, so the process ends with exit 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: None)
    print(f"decontext serve on http://{args.host}:{args.port} (docs at /docs; Ctrl+C or SIGTERM stops it)", flush=True)
    uvicorn.run(
        app, host=args.host, port=args.port, log_level=args.log_level.lower(), access_log=False, server_header=False
    )
    return 0


def serve_on_ray(args, settings) -> int:
    """``--ray``: the same app as a Ray Serve deployment of ``--replicas`` replicas (decontext/serve/ray_app.py)."""
    try:
        from ..serve import ray_app
    except ImportError as exc:
        return fail(f"--ray needs Ray Serve ({exc}): pip install 'decontext[serve-ray]'")
    where = args.address or "a local Ray"
    return ray_app.run(
        settings,
        host=args.host,
        port=args.port,
        replicas=args.replicas,
        gpus_per_replica=args.gpus_per_replica,
        address=args.address,
        on_ready=lambda: print(
            f"decontext serve on Ray Serve ({where}, {args.replicas} replicas) at http://{args.host}:{args.port} "
            "(docs at /docs; Ctrl+C or SIGTERM stops it)",
            flush=True,
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
