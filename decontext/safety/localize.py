"""UVR's localisation: where in the image an unsafe concept appears, read from the attention outputs of
the anchor block in the early steps, and the geometry of each transformer call it reads them from.

Constants are the official code's (github deng12yx/UVR, read for facts); ``UVRConfig``'s docstrings say
where we differ and why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..attention import AttentionHook, Layout
from .config import UVRConfig

T_SCALE = 1000.0  # diffusers' FLUX transformers take t / 1000 and multiply it back


def transformer_of(model):
    transformer = getattr(model, "transformer", model)
    if not (hasattr(transformer, "transformer_blocks") and hasattr(transformer, "single_transformer_blocks")):
        raise TypeError(f"UVR regulates FLUX-style MM-DiTs (FluxTransformer2DModel); got {type(transformer).__name__}")
    return transformer


def _ellipse(size: int) -> np.ndarray:
    import cv2

    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def localize(scores: np.ndarray | torch.Tensor, config: UVRConfig) -> tuple[np.ndarray, np.ndarray]:
    """(core, ring) boolean (rows, cols) masks of one patch-score map.

    Hard threshold, closing with an elliptic element, hole filling (0-regions not connected to the
    border), 8-connected components of at least ``min_area`` patches kept by the mass of a softmax over
    the above-threshold scores, at most ``max_flagged`` of the patches (the highest-scoring), then the
    ring: the mask dilated ``ring_iterations`` times by an ellipse of ``ring_radius``, minus the core.
    """
    import cv2
    from scipy.ndimage import binary_fill_holes

    scores = (
        scores.detach().float().cpu().numpy()
        if isinstance(scores, torch.Tensor)
        else np.asarray(scores, dtype=np.float32)
    )
    if scores.ndim != 2:
        raise ValueError(f"localize takes a (rows, cols) score map, got shape {scores.shape}")
    empty = np.zeros(scores.shape, dtype=bool)
    candidates = scores > config.threshold
    if not candidates.any():
        return empty, empty.copy()
    masked = np.where(candidates, scores, -np.inf)
    weights = np.exp(masked - masked.max())
    weights /= weights.sum()
    mask = candidates.astype(np.uint8)
    if config.close_size > 1:
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _ellipse(config.close_size))
    if config.fill_holes:
        mask = binary_fill_holes(mask).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    components = []
    for label in range(1, count):
        area = int(stats[label, cv2.CC_STAT_AREA])
        if area >= config.min_area:
            components.append((label, area, float(weights[labels == label].sum())))
    if not components:
        return empty, empty.copy()
    if config.keep == "topk_area":
        kept = sorted(components, key=lambda c: -c[1])[: config.top_k]
    elif config.keep == "topk_mass":
        kept = sorted(components, key=lambda c: -c[2])[: config.top_k]
    else:
        total, acc, kept = sum(c[2] for c in components) + 1e-12, 0.0, []
        for comp in sorted(components, key=lambda c: -c[2]):
            kept.append(comp)
            acc += comp[2]
            if acc / total >= config.mass_ratio:
                break
    core = np.isin(labels, [c[0] for c in kept])
    limit = max(1, int(config.max_flagged * core.size))
    if core.sum() > limit:
        order = np.argsort(-np.where(core, scores, -np.inf), axis=None, kind="stable")[:limit]
        core = np.zeros_like(core)
        core.flat[order] = True
    ring = empty.copy()
    if config.ring_radius > 0 and config.ring_iterations > 0:
        grown = cv2.dilate(
            core.astype(np.uint8), _ellipse(2 * config.ring_radius + 1), iterations=config.ring_iterations
        ).astype(bool)
        ring = grown & ~core
    return core, ring


def patch_scores(out: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """(B, T) score of each target patch: ``out . anchor / sqrt(d)``, mean over heads.

    Args:
        out: (B, T, H, D) attention outputs of the target tokens.
        direction: (H, D) the mean anchor (the mean over anchors of the score is the score of the mean).
    """
    heads, dim = direction.shape
    if out.shape[-2:] != (heads, dim):
        raise ValueError(
            f"attention outputs of {tuple(out.shape[-2:])} (heads, head_dim) against anchors of {(heads, dim)}"
        )
    return torch.einsum("bthd,hd->bt", out.float(), direction.to(out.device, torch.float32)) / (heads * math.sqrt(dim))


@dataclass
class _Geometry:
    layout: Layout
    grid: tuple[int, int]  # target tokens as (rows, cols), row-major
    context_grid: tuple[int, int] | None


def _grid(ids: torch.Tensor, what: str) -> tuple[int, int]:
    rows = torch.unique(ids[:, 1]).numel()
    cols = torch.unique(ids[:, 2]).numel()
    if rows * cols != ids.shape[0]:
        raise NotImplementedError(
            f"UVR: the {what} tokens do not form one rectangular grid "
            f"({ids.shape[0]} tokens, {rows} rows, {cols} columns)"
        )
    order = ids[:, 1] * (ids[:, 2].max() + 1) + ids[:, 2]
    if not bool((order[1:] > order[:-1]).all()):
        raise NotImplementedError(f"UVR: the {what} tokens are not in row-major order")
    return rows, cols


def geometry(img_ids: torch.Tensor, text_tokens: int) -> _Geometry:
    """Token layout and grids from the transformer's ``img_ids`` (axis 0: 0 = the image being generated,
    otherwise a context image, as FLUX.1-Kontext numbers them; the generated tokens come first)."""
    ids = img_ids[0] if img_ids.ndim == 3 else img_ids
    target = ids[:, 0] == 0
    n_target = int(target.sum())
    if n_target == 0 or not bool(target[:n_target].all()):
        raise NotImplementedError(
            "UVR: the generated image's tokens (img_ids axis 0 = 0) must come first in the sequence"
        )
    context_ids = ids[n_target:]
    context_grid = None
    if context_ids.shape[0]:
        if torch.unique(context_ids[:, 0]).numel() != 1:
            raise NotImplementedError("UVR: several context images in one call are not supported")
        context_grid = _grid(context_ids, "context")
    layout = Layout(text=text_tokens, target=n_target, context=int(context_ids.shape[0]))
    return _Geometry(layout, _grid(ids[:n_target], "target"), context_grid)


@dataclass
class Localization:
    """One localisation: which generation and step, and the (B, rows, cols) masks it produced."""

    generation: int
    step: int
    t: float
    core: torch.Tensor
    ring: torch.Tensor
    scores: torch.Tensor  # (B, rows, cols) patch scores (max over concepts)


class _Tracker(AttentionHook):
    """Follows the transformer's calls (a forward pre-hook): the timestep, the token geometry, which
    generation and which step of it. A new generation starts whenever t rises (or on the first call).
    Its subclasses are the attention hooks of the blocks they act on."""

    def __init__(self):
        self.t: float | None = None
        self.geometry: _Geometry | None = None
        self.generation = -1
        self.step = -1

    def hook(self, module, args, kwargs):
        timestep = kwargs.get("timestep")
        img_ids = kwargs.get("img_ids")
        text = kwargs.get("encoder_hidden_states")
        if timestep is None or img_ids is None or text is None:
            raise RuntimeError(
                "UVR needs the transformer called with keyword arguments timestep, img_ids and encoder_hidden_states "
                "(as diffusers' FLUX pipelines do)"
            )
        t = float(torch.as_tensor(timestep).reshape(-1)[0]) * T_SCALE
        if self.t is None or t > self.t:
            self.generation += 1
            self.step = 0
            self.on_new_generation()
        elif t < self.t:
            self.step += 1
        self.t = t
        self.geometry = geometry(img_ids, text.shape[1])

    def on_new_generation(self) -> None:
        pass
