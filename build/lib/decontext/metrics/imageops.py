"""Small image helpers shared by the metric backends."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from decontext.metrics.run import CLEAN, EditRecord, RunData


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (1, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).unsqueeze(0).float() / 255.0


def match_size(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Resize ``other`` to ``reference``'s size (bicubic) when they differ."""
    if reference.shape[:2] == other.shape[:2]:
        return other
    h, w = reference.shape[:2]
    return np.asarray(Image.fromarray(other).resize((w, h), Image.BICUBIC))


def input_pair(condition: str, stem: str, run: RunData) -> tuple[np.ndarray, np.ndarray] | None:
    """(source, condition input) for imperceptibility metrics; None for the clean condition or a
    stem the condition has no input for. Raises ImageLoadError for an unreadable file."""
    if condition == CLEAN:
        return None
    path = run.input_path(condition, stem)
    if path is None:
        return None
    src = run.image(run.source_path(stem))
    return src, match_size(src, run.image(path))


def clean_edit_pair(edit: EditRecord, run: RunData) -> tuple[np.ndarray, np.ndarray] | None:
    """(clean edit, this edit) with the same stem, prompt and seed; None for clean edits or when
    the clean counterpart does not exist."""
    if edit.condition == CLEAN:
        return None
    other = run.counterpart(edit, CLEAN)
    if other is None:
        return None
    ref = run.image(other.output)
    return ref, match_size(ref, run.image(edit.output))
