"""Helpers for the run folder (docs/RUN_LAYOUT.md): copy sources in as PNG, write run.json.

    python -m decontext.runs init --input photos/ --run runs/demo --model tiny --editor flux_kontext
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from PIL import Image

from .images import ImageLoadError, atomic_save, list_images, load_image
from .images import write_json_atomic


def prepare_sources(input_path: str | Path, source_dir: str | Path, log=print) -> tuple[list[Path], dict[str, str]]:
    """Write each readable input as ``source/<stem>.png`` (EXIF applied, RGB 8-bit: exactly the pixels
    the attack measures its budget against). Existing files are kept. Returns (written, failures)."""
    source_dir = Path(source_dir)
    source_dir.mkdir(parents=True, exist_ok=True)
    written, failed = [], {}
    for path in list_images(input_path):
        out = source_dir / f"{path.stem}.png"
        if out.exists():
            written.append(out)
            continue
        try:
            image = load_image(path)
        except ImageLoadError as exc:
            failed[path.name] = str(exc)
            log(f"error: {exc}")
            continue
        atomic_save(Image.fromarray(image.rgb8, "RGB"), out, format="PNG")
        written.append(out)
    return written, failed


def write_run_info(run_dir: str | Path, **info) -> Path:
    run_dir = Path(run_dir)
    path = run_dir / "run.json"
    data = json.loads(path.read_text()) if path.is_file() else {"created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    data.update({k: v for k, v in info.items() if v is not None})
    write_json_atomic(data, path)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Start a run folder: sources as PNG and run.json")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init")
    init.add_argument("--input", required=True)
    init.add_argument("--run", required=True)
    init.add_argument("--model", required=True)
    init.add_argument("--editor", default="flux_kontext", help="editor family (a key of decontext.editors.EDITORS)")
    args = parser.parse_args(argv)
    from .editors import EDITORS

    if args.editor not in EDITORS:
        parser.error(f"unknown editor family {args.editor!r} (choose from {', '.join(EDITORS)})")
    written, failed = prepare_sources(args.input, Path(args.run) / "source")
    write_run_info(args.run, model=args.model, editor=args.editor)
    print(f"{len(written)} source images in {Path(args.run) / 'source'}; {len(failed)} unreadable")
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
