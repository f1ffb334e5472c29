"""The UVR flags of the editing and text-to-image command lines (docs/SAFETY.md): ``--uvr ANCHORS`` and its
overrides, how they become a regulator, and the rule that one run folder holds one regulator setting."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Sequence


def add_arguments(parser, pipeline: str) -> None:
    """``--uvr ANCHORS`` and its overrides, on an inference command line of ``pipeline`` ("edit" or "t2i")."""
    from ..safety.config import UVRConfig

    group = parser.add_argument_group("UVR (a safety regulator; docs/SAFETY.md)")
    group.add_argument(
        "--uvr",
        metavar="ANCHORS",
        default=None,
        help="generate under UVR with this anchor file (python -m decontext.safety.collect makes one)",
    )
    group.add_argument(
        "--uvr-concepts", nargs="+", default=None, help="regulate only these concepts of the file (default: all)"
    )
    group.add_argument(
        "--uvr-threshold",
        type=float,
        default=None,
        help=f"localisation threshold (default: the official {UVRConfig.preset(pipeline).threshold} for this pipeline)",
    )
    group.add_argument(
        "--uvr-set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="any other UVRConfig field, e.g. window_start=500 restrict=replace",
    )
    parser.set_defaults(uvr_pipeline=pipeline)


def parse_settings(items: Sequence[str]) -> dict:
    """``["key=value", ...]`` -> typed UVRConfig overrides; unknown keys and bad values are errors."""
    from ..safety.config import UVRConfig

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
    from ..safety.anchors import Anchors
    from ..safety.config import UVRConfig
    from ..safety.localize import transformer_of
    from ..safety.regulator import regulate

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
    record = {
        "anchors": str(args.uvr),
        "sha256_16": digest,
        "block": anchors.block,
        "concepts": args.uvr_concepts or sorted(anchors.concepts),
        "config": config.as_dict(),
    }
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

        def said(r):
            return (
                "without UVR"
                if r is None
                else f"with UVR ({r.get('anchors')}, threshold {r.get('config', {}).get('threshold')})"
            )

        raise ValueError(
            f"{index_path.parent} holds outputs made {said(before)}; this run is {said(record)}: use another --output"
        )
