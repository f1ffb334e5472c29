"""``decontext erase-rate``: the erase rate of a concept in regulated outputs, with a 95% interval
(UVR; docs/SAFETY.md; decontext.metrics.concept)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="decontext erase-rate",
        description="Erase rate of a concept in generated or edited images (UVR; docs/SAFETY.md).",
    )
    ap.add_argument(
        "--images",
        required=True,
        help="run folder of the regulated outputs (flux_t2i.py or kontext_inference.py layout, or any PNGs)",
    )
    ap.add_argument(
        "--baseline", default=None, help="run folder of the same generations without the regulator (paired by path)"
    )
    ap.add_argument("--detector", required=True, help="toy:<hat|glasses|smile> or clip:<concept text>")
    ap.add_argument(
        "--clip",
        default="openai/clip-vit-large-patch14",
        help="CLIP weights for clip: detectors (a local folder or a cached hub id)",
    )
    ap.add_argument("--category", default=None, help="only outputs of prompts of this category (from index.json)")
    ap.add_argument("--output", default=None, help="write the result as JSON here")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from ..metrics.concept import _outputs, detector_from_spec, erase_rate

    try:
        on = _outputs(Path(args.images), args.category)
        if not on:
            raise ValueError(f"{args.images}: no images{f' of category {args.category!r}' if args.category else ''}")
        off = _outputs(Path(args.baseline), args.category) if args.baseline else None
        if off is not None:
            missing = sorted(set(on) - set(off))
            if missing:
                raise ValueError(f"{args.baseline}: no baseline for {len(missing)} outputs, e.g. {missing[0]}")
        detector = detector_from_spec(
            args.detector, **({"model": args.clip} if args.detector.startswith("clip:") else {})
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    keys = sorted(on)
    result = {
        "detector": detector.name,
        "n": len(keys),
        **erase_rate(detector.detect([on[k] for k in keys]), detector.detect([off[k] for k in keys]) if off else None),
    }
    for name, value in result.items():
        if isinstance(value, dict):
            shown = (
                "undefined"
                if value["mean"] is None
                else f"{value['mean']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"
            )
            print(f"{name}: {shown} (n={value['n']})")
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1))
    return 0
