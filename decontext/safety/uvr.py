"""UVR: a training-free regulator that stops an unsafe concept in an MM-DiT (FLUX.1-dev text-to-image,
FLUX.1-Kontext editing) while it generates.

1. **Anchors** (``collect_anchors``, ``python -m decontext.safety.collect``): generate from prompts that
   show the concept and keep, per generation, the attention output of the image tokens at one block
   (per head, averaged over the image tokens) at chosen timesteps. Stored per concept in a safetensors
   file with the settings they were taken with (``Anchors``).
2. **Localisation**, in the "semantic start-up" window (t > 850 of 1000): at the anchor block, each
   target patch scores ``out . anchor / sqrt(d)`` averaged over heads and anchors; the patch map is
   thresholded, closed, its holes filled, its connected components kept by mass and area, and (for
   editing) dilated into a ring (``localize``).
3. **Restriction**, while t >= 850: text-to-image replaces the flagged patches' attention outputs by
   ``0.001 * out + 0.999 * N(0, 1)``; editing scales the attention that text and target queries pay to
   the flagged context keys (core 0.2, ring 0.4) and the attention target queries pay to text and
   target keys (1.05), without renormalising.

Everything is installed through attention processors and one forward pre-hook on the transformer
(``with regulate(pipe, anchors): pipe(...)``) and removed on exit; diffusers' code is never edited.
When nothing is flagged, or outside ``regulate``, every output is bit-identical to the stock pipeline.

Constants are the official code's (github deng12yx/UVR, read for facts); where we differ, the
docstring of the field says so and why. Our additions: per-sample masks (the official code averages
the score over the batch), a seeded noise generator, masks carried from the target grid to a context
grid of another size, and the 1.05 boost applied only once something is flagged (the official code
applies it at the first step before localising, which would change unflagged generations).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Sequence

from .anchors import (FORMAT, FORMAT_VERSION, METADATA_KEY, OFFICIAL_ANCHOR_T, OFFICIAL_BLOCK, OFFICIAL_SINGLE_DEPTH, AnchorFileError,  # noqa: F401
                      Anchors, collect_anchors, default_block, make_anchors, merge)
from .localize import T_SCALE, Localization, UVRConfig, geometry, localize, patch_scores, transformer_of  # noqa: F401
from .regulator import Regulator, regulate  # noqa: F401


def add_arguments(parser, pipeline: str) -> None:
    """``--uvr ANCHORS`` and its overrides, on an inference command line of ``pipeline`` ("edit" or "t2i")."""
    group = parser.add_argument_group("UVR (a safety regulator; docs/SAFETY.md)")
    group.add_argument("--uvr", metavar="ANCHORS", default=None, help="generate under UVR with this anchor file (python -m decontext.safety.collect makes one)")
    group.add_argument("--uvr-concepts", nargs="+", default=None, help="regulate only these concepts of the file (default: all)")
    group.add_argument("--uvr-threshold", type=float, default=None, help=f"localisation threshold (default: the official {UVRConfig.preset(pipeline).threshold} for this pipeline)")
    group.add_argument("--uvr-set", nargs="+", default=[], metavar="KEY=VALUE", help="any other UVRConfig field, e.g. window_start=500 restrict=replace")
    parser.set_defaults(uvr_pipeline=pipeline)


def parse_settings(items: Sequence[str]) -> dict:
    """``["key=value", ...]`` -> typed UVRConfig overrides; unknown keys and bad values are errors."""
    kinds = {f.name: f.default for f in dataclasses.fields(UVRConfig)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in kinds:
            raise ValueError(f"--uvr-set {item!r}: write KEY=VALUE with KEY one of {', '.join(kinds)}")
        default = kinds[key]
        try:
            if isinstance(default, bool):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                out[key] = value.lower() in ("true", "1", "yes")
            else:
                out[key] = type(default)(value)
        except ValueError:
            raise ValueError(f"--uvr-set {item!r}: {key} takes a {type(default).__name__}") from None
    return out


def from_args(args, model):
    """(context manager, record for the run's index) of the ``--uvr`` flags; a no-op without ``--uvr``.
    Bad anchor files and settings raise ``ValueError`` (``AnchorFileError``) naming the problem."""
    if not getattr(args, "uvr", None):
        return contextlib.nullcontext(), None
    anchors = Anchors.load(args.uvr)
    anchors.check(transformer_of(model))
    settings = parse_settings(args.uvr_set)
    if args.uvr_threshold is not None:
        settings["threshold"] = args.uvr_threshold
    config = UVRConfig.preset(args.uvr_pipeline, **settings)
    if args.uvr_concepts:
        anchors.directions(args.uvr_concepts)  # unknown names fail here, before any work
    import hashlib

    digest = hashlib.sha256(Path(args.uvr).read_bytes()).hexdigest()[:16]
    record = {"anchors": str(args.uvr), "sha256_16": digest, "block": anchors.block, "concepts": args.uvr_concepts or sorted(anchors.concepts), "config": config.as_dict()}
    return regulate(model, anchors, config, args.uvr_concepts), record


def check_resume(index_path: str | Path, record: dict | None) -> None:
    """A run folder holds outputs of one regulator setting: resuming into a folder whose ``index.json``
    records other UVR settings (or none, or some where there are none now) would mix them, so it is an
    error naming the folder."""
    index_path = Path(index_path)
    if not index_path.is_file():
        return
    try:
        index = json.loads(index_path.read_text())
    except ValueError:
        return  # the run's own loader reports a broken index
    if not (index.get("edits") or index.get("images")):
        return
    before = (index.get("settings") or {}).get("uvr")
    if before != record:
        said = lambda r: "without UVR" if r is None else f"with UVR ({r.get('anchors')}, threshold {r.get('config', {}).get('threshold')})"
        raise ValueError(f"{index_path.parent} holds outputs made {said(before)}; this run is {said(record)}: use another --output")
