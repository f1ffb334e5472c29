"""Where backends look for weight files: ``--weights-dir`` first, then the usual caches."""

from __future__ import annotations

import os
from pathlib import Path


def torch_home() -> Path:
    """$TORCH_HOME, else $XDG_CACHE_HOME/torch, else ~/.cache/torch (as torch.hub does)."""
    if os.environ.get("TORCH_HOME"):
        return Path(os.environ["TORCH_HOME"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "torch"


def torch_hub_checkpoints() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def find_file(
    filename: str, weights_dir: Path | None, subdirs: tuple[str, ...] = (), caches: tuple[Path, ...] = ()
) -> tuple[Path | None, list[Path]]:
    """First existing ``filename`` in weights_dir, weights_dir/<subdir>, then each cache folder.
    Returns (path or None, the candidates tried) so an unavailable reason can list them."""
    candidates: list[Path] = []
    if weights_dir is not None:
        candidates.append(Path(weights_dir) / filename)
        candidates += [Path(weights_dir) / s / filename for s in subdirs]
    candidates += [Path(c) / filename for c in caches]
    for c in candidates:
        if c.is_file():
            return c, candidates
    return None, candidates


def missing_reason(what: str, tried: list[Path], how: str) -> str:
    where = ", ".join(str(p) for p in tried) if tried else "(no location)"
    return f"{what} not found (looked in: {where}). {how}"
