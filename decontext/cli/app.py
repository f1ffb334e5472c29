"""``decontext app``: the local page (``pip install decontext[app]``; decontext/app.py).

    decontext app                         # http://127.0.0.1:7860 with the embedded toy editor
    decontext app --model black-forest-labs/FLUX.1-Kontext-dev --device cuda

Served on 127.0.0.1 only; --host 0.0.0.0 or --share (a public gradio.live link) only when you ask, with a
warning: anyone who reaches the page can upload photos to this machine and see the results.
"""

from __future__ import annotations

import argparse
import sys


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="decontext app", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--model",
        default="toy",
        help="the editor to protect against and preview edits with (default toy: the embedded toy FLUX.1-Kontext)",
    )
    ap.add_argument("--family", default=None, help="its editor family (default: the model's own)")
    ap.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda when available)")
    ap.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")
    ap.add_argument("--out", default="runs/app", help="where each visit's folder goes (default runs/app)")
    ap.add_argument("--host", default="127.0.0.1", help="interface to serve on (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    ap.add_argument(
        "--share", action="store_true", help="also open a public gradio.live link (off by default: a privacy tool)"
    )
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.share or args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: serving beyond this machine ({'a public share link' if args.share else args.host}): "
            "anyone who reaches the page can upload photos here and see the results",
            file=sys.stderr,
        )
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("error: decontext app needs Gradio: pip install 'decontext[app]'", file=sys.stderr)
        return 2
    from ..app import ProtectApp, serve
    from .common import avoid_cudnn_attention, quiet_libraries

    quiet_libraries()
    avoid_cudnn_attention()
    app = ProtectApp(args.model, args.family, args.device, args.dtype, args.out)
    app.editor()  # load before serving: the first click does not wait for it
    print(f"decontext app on http://{args.host}:{args.port} (Ctrl+C stops it); results go to {args.out}/", flush=True)
    try:
        serve(app, args.host, args.port, args.share)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
