"""The trained toy editors by name (light: no torch / diffusers import, so editors can resolve names).

``--model toy`` is the embedded default; every trained version stays loadable by its own name so the
numbers measured on it remain reproducible (docs/TOY.md, docs/EVIDENCE.md).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"

TOY_EDITORS = {
    "toy-v1": DATA / "toy_editor",  # the first toy (2026-11-23): reads identity from context in the late steps
    "toy-v2": DATA / "toy_editor_v2",  # FLUX-like training (timestep density, text-to-image base); no built-in bias
    "toy-v2-early": DATA / "toy_editor_v2_early",  # toy-v2 + an EXPLICIT bias: context only informative at high noise
}
TOY_DEFAULT = "toy-v1"  # what ``--model toy`` loads
READER_DIR = DATA / "toy_reader"  # one reader for every version: they share the world


def is_toy_model(name: str | None) -> bool:
    """``toy`` or the name of a shipped toy version (``toy-v1``, ...)."""
    return name == "toy" or name in TOY_EDITORS


def toy_editor_dir(name: str = "toy") -> Path:
    """Folder of a toy editor version; ``toy`` = ``TOY_DEFAULT``."""
    key = TOY_DEFAULT if name == "toy" else name
    if key not in TOY_EDITORS:
        raise ValueError(f"unknown toy editor {name!r}: 'toy' (= {TOY_DEFAULT}) or one of {sorted(TOY_EDITORS)}")
    return TOY_EDITORS[key]


def repo_path(value: str | Path | None, default: Path) -> Path:
    """A path from a shipped settings file (relative ones are relative to the repository), or ``default``."""
    if not value:
        return default
    path = Path(value)
    return path if path.is_absolute() else ROOT / path
