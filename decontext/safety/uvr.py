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
import datetime
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..attention import AttentionHook, Layout
from ..editors.blocks import block_map, describe

FORMAT = "decontext-uvr-anchors"
FORMAT_VERSION = 1
METADATA_KEY = "decontext_uvr"
OFFICIAL_BLOCK = "single.10"  # of FLUX.1's 38 single-stream blocks
OFFICIAL_SINGLE_DEPTH = 38
OFFICIAL_ANCHOR_T = 104.0  # the official collection saves the block output at timestep 104 (of 1000)
T_SCALE = 1000.0  # diffusers' FLUX transformers take t / 1000 and multiply it back


@dataclass(frozen=True)
class UVRConfig:
    """Every constant of localisation and restriction. ``UVRConfig.preset("t2i" | "edit")`` gives the
    official values for FLUX.1-dev and FLUX.1-Kontext-dev."""

    restrict: str = "replace"  # "replace": flagged patch outputs become noise (T2I); "attention": scale attention to flagged context keys (editing)
    window_start: float = 850.0  # the start-up window: localise while t > this, restrict while t >= this (t in 0..1000)
    localize_at: str = "window"  # "window": every step in the window (T2I); "first": the first step only (Kontext)
    threshold: float = 0.6  # hard gate on the patch score (0.6 FLUX.1-dev, 0.2 Kontext)
    close_size: int = 3  # elliptic structuring element of the morphological closing (<= 1: none)
    fill_holes: bool = True
    keep: str = "mass_ratio"  # connected components kept: "mass_ratio", "topk_mass" or "topk_area"
    mass_ratio: float = 0.3  # "mass_ratio": keep the heaviest components until this share of the mass
    top_k: int = 3  # "topk_*": keep this many components
    min_area: int = 5  # components smaller than this many patches are dropped
    max_flagged: float = 2000 / 4096  # at most this share of the patches (official: 2000 of 64x64; we keep the highest-scoring, not the first in raster order)
    ring_radius: int = 0  # editing: the mask is dilated by an ellipse of this radius ...
    ring_iterations: int = 2  # ... this many times, and the added patches form the ring
    keep_share: float = 0.001  # T2I: flagged outputs become keep_share * out + (1 - keep_share) * N(0, 1)
    core_factor: float = 0.2  # editing: attention to flagged (core) context keys is scaled by this
    ring_factor: float = 0.4  # ... and to ring context keys by this
    boost: float = 1.05  # editing: attention of target queries to text and target keys is scaled by this
    seed: int = 0  # of the T2I noise (one generator per generation)

    def __post_init__(self):
        problems = []
        if self.restrict not in ("replace", "attention"):
            problems.append(f"restrict must be 'replace' or 'attention', got {self.restrict!r}")
        if self.localize_at not in ("window", "first"):
            problems.append(f"localize_at must be 'window' or 'first', got {self.localize_at!r}")
        if self.keep not in ("mass_ratio", "topk_mass", "topk_area"):
            problems.append(f"keep must be 'mass_ratio', 'topk_mass' or 'topk_area', got {self.keep!r}")
        if not 0 < self.mass_ratio <= 1:
            problems.append(f"mass_ratio must be in (0, 1], got {self.mass_ratio}")
        if not 0 < self.max_flagged <= 1:
            problems.append(f"max_flagged must be in (0, 1], got {self.max_flagged}")
        if not 0 <= self.keep_share <= 1:
            problems.append(f"keep_share must be in [0, 1], got {self.keep_share}")
        if min(self.top_k, self.min_area) < 1 or min(self.ring_radius, self.ring_iterations) < 0:
            problems.append("top_k and min_area must be >= 1, ring_radius and ring_iterations >= 0")
        if min(self.core_factor, self.ring_factor, self.boost) < 0:
            problems.append("core_factor, ring_factor and boost must be >= 0")
        if problems:
            raise ValueError("UVRConfig: " + "; ".join(problems))

    @classmethod
    def preset(cls, pipeline: str, **overrides) -> "UVRConfig":
        """The official settings for ``pipeline`` ("t2i": FLUX.1-dev; "edit": FLUX.1-Kontext-dev), then
        ``overrides`` (names of fields; ``None`` values are ignored)."""
        if pipeline == "t2i":
            base = {}
        elif pipeline == "edit":
            # The official Kontext call passes mass_ratio=0.8 but keeps its default "topk_mass" mode, where
            # the ratio is not read: the three heaviest components are kept.
            base = {"restrict": "attention", "localize_at": "first", "threshold": 0.2, "keep": "topk_mass", "mass_ratio": 0.8,
                    "min_area": 3, "max_flagged": 1.0, "ring_radius": 3, "ring_iterations": 2}
        else:
            raise ValueError(f"no UVR preset {pipeline!r}: use 't2i' or 'edit'")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown UVR settings {sorted(unknown)}")
        return cls(**{**base, **{k: v for k, v in overrides.items() if v is not None}})

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- anchors
class AnchorFileError(ValueError):
    """An anchor file that cannot be used; the message names the file and the problem."""


@dataclass
class Anchors:
    """Per concept, a (K, heads, head_dim) float32 tensor of anchors (one per collected generation: the
    attention output of its image tokens at ``block``, averaged over tokens and the chosen timesteps).

    The official score averages ``out . anchor_token`` over every token of the anchor image; that is
    linear in the anchor, so keeping each anchor image's token mean gives the identical score at a
    4096th of the size."""

    concepts: dict[str, torch.Tensor]
    block: str
    settings: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def heads(self) -> int:
        return next(iter(self.concepts.values())).shape[1]

    @property
    def head_dim(self) -> int:
        return next(iter(self.concepts.values())).shape[2]

    def directions(self, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Per concept, the (heads, head_dim) mean anchor: the score against it equals the mean score
        over its anchors."""
        names = list(names or self.concepts)
        missing = [n for n in names if n not in self.concepts]
        if missing:
            raise AnchorFileError(f"{self._where()}no concept {missing[0]!r} (has {sorted(self.concepts)})")
        return {n: self.concepts[n].float().mean(0) for n in names}

    def _where(self) -> str:
        return f"{self.path}: " if self.path else ""

    def save(self, path: str | Path) -> Path:
        """Write a safetensors file (``anchors.<concept>`` tensors + the settings as JSON metadata),
        through a temporary name so an interrupted save leaves no half file."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "block": self.block, "heads": self.heads, "head_dim": self.head_dim,
                "concepts": {n: int(t.shape[0]) for n, t in self.concepts.items()}, "settings": self.settings}
        tmp = path.with_name(f".{path.name}.part")
        save_file({f"anchors.{n}": t.detach().float().cpu().contiguous() for n, t in self.concepts.items()}, str(tmp),
                  metadata={METADATA_KEY: json.dumps(meta)})
        tmp.replace(path)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Anchors":
        """Read and check an anchor file; any problem is an ``AnchorFileError`` naming the file."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise AnchorFileError(f"{path}: no such anchor file")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises several types for a broken header
            raise AnchorFileError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None
        if METADATA_KEY not in metadata:
            raise AnchorFileError(f"{path}: not a UVR anchor file (no '{METADATA_KEY}' metadata; make one with python -m decontext.safety.collect)")
        try:
            meta = json.loads(metadata[METADATA_KEY])
            block, heads, head_dim, counts = meta["block"], int(meta["heads"]), int(meta["head_dim"]), dict(meta["concepts"])
        except (ValueError, KeyError, TypeError) as exc:
            raise AnchorFileError(f"{path}: broken UVR metadata ({exc})") from None
        if meta.get("format") != FORMAT or int(meta.get("version", -1)) > FORMAT_VERSION:
            raise AnchorFileError(f"{path}: format {meta.get('format')!r} version {meta.get('version')!r}; this decontext reads {FORMAT!r} up to version {FORMAT_VERSION}")
        if not counts:
            raise AnchorFileError(f"{path}: the file names no concept")
        concepts = {}
        for name, count in counts.items():
            tensor = tensors.get(f"anchors.{name}")
            if tensor is None:
                raise AnchorFileError(f"{path}: concept {name!r} has no tensor 'anchors.{name}'")
            if tensor.ndim != 3 or tuple(tensor.shape[1:]) != (heads, head_dim) or tensor.shape[0] != count or count < 1:
                raise AnchorFileError(f"{path}: 'anchors.{name}' has shape {tuple(tensor.shape)}, expected ({count}, {heads}, {head_dim})")
            if not torch.isfinite(tensor).all():
                raise AnchorFileError(f"{path}: 'anchors.{name}' holds NaN or infinite values")
            concepts[name] = tensor.float()
        return cls(concepts, block, dict(meta.get("settings", {})), path)

    def check(self, transformer) -> None:
        """The anchors' block must exist in ``transformer`` with the anchors' head count and width."""
        blocks = block_map(transformer)
        if self.block not in blocks:
            raise AnchorFileError(f"{self._where()}anchors were taken at block {self.block!r}, which this model lacks ({describe(blocks.depths)})")
        attn = blocks[self.block].module.attn
        if (attn.heads, attn.head_dim) != (self.heads, self.head_dim):
            raise AnchorFileError(f"{self._where()}anchors have {self.heads} heads x {self.head_dim}, block {self.block} has {attn.heads} x {attn.head_dim}: "
                                  "they were collected on another model")


def default_block(transformer) -> str:
    """The official block (single-stream 10 of 38); on a shallower model, the single block at the same
    relative depth."""
    stream, index = OFFICIAL_BLOCK.split(".")
    return block_map(transformer).at_relative_depth(stream, int(index), OFFICIAL_SINGLE_DEPTH)


def _transformer_of(model):
    transformer = getattr(model, "transformer", model)
    if not (hasattr(transformer, "transformer_blocks") and hasattr(transformer, "single_transformer_blocks")):
        raise TypeError(f"UVR regulates FLUX-style MM-DiTs (FluxTransformer2DModel); got {type(transformer).__name__}")
    return transformer


# ---------------------------------------------------------------------------------------------- localisation
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

    scores = scores.detach().float().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores, dtype=np.float32)
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
        grown = cv2.dilate(core.astype(np.uint8), _ellipse(2 * config.ring_radius + 1), iterations=config.ring_iterations).astype(bool)
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
        raise ValueError(f"attention outputs of {tuple(out.shape[-2:])} (heads, head_dim) against anchors of {(heads, dim)}")
    return torch.einsum("bthd,hd->bt", out.float(), direction.to(out.device, torch.float32)) / (heads * math.sqrt(dim))


# ---------------------------------------------------------------------------------------------- run-time state
@dataclass
class _Geometry:
    layout: Layout
    grid: tuple[int, int]  # target tokens as (rows, cols), row-major
    context_grid: tuple[int, int] | None


def _grid(ids: torch.Tensor, what: str) -> tuple[int, int]:
    rows = torch.unique(ids[:, 1]).numel()
    cols = torch.unique(ids[:, 2]).numel()
    if rows * cols != ids.shape[0]:
        raise NotImplementedError(f"UVR: the {what} tokens do not form one rectangular grid ({ids.shape[0]} tokens, {rows} rows, {cols} columns)")
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
        raise NotImplementedError("UVR: the generated image's tokens (img_ids axis 0 = 0) must come first in the sequence")
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
            raise RuntimeError("UVR needs the transformer called with keyword arguments timestep, img_ids and encoder_hidden_states (as diffusers' FLUX pipelines do)")
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


class Regulator(_Tracker):
    """The state ``regulate`` yields: what was flagged (``localizations``) and which steps were restricted
    (``restricted``: a set of (generation, step)); the hook of every block. Outside a localisation or a
    restriction a block's attention is the stock call."""

    def __init__(self, anchors: Anchors, config: UVRConfig, concepts: Sequence[str] | None = None):
        super().__init__()
        self.anchors = anchors
        self.config = config
        self.directions = anchors.directions(concepts)
        self.core: torch.Tensor | None = None  # (B, T) bool over the target tokens
        self.ring: torch.Tensor | None = None
        self.flagged = False  # any patch in core: kept with the masks, so no processor call syncs the device to ask
        self.localizations: list[Localization] = []
        self.restricted: set[tuple[int, int]] = set()
        self._noise: torch.Generator | None = None

    def on_new_generation(self) -> None:
        self.core = self.ring = None
        self.flagged = False
        self._noise = torch.Generator().manual_seed(self.config.seed + self.generation)

    # ---------------------------------------------------------------- decisions
    @property
    def in_window(self) -> bool:
        return self.t is not None and self.t >= self.config.window_start

    def localizes_now(self, name: str) -> bool:
        if name != self.anchors.block or self.t is None or self.t <= self.config.window_start:
            return False
        return self.config.localize_at == "window" or self.step == 0

    def restricts_now(self) -> bool:
        return self.in_window and self.flagged

    # ---------------------------------------------------------------- localisation
    def localize(self, target_out: torch.Tensor) -> None:
        """Masks from the (B, T, H, D) attention outputs of the target tokens at the anchor block."""
        rows, cols = self.geometry.grid
        scores = torch.stack([patch_scores(target_out, d) for d in self.directions.values()])  # (concepts, B, T)
        cores, rings = [], []
        for sample in range(scores.shape[1]):
            core = np.zeros((rows, cols), dtype=bool)
            ring = np.zeros((rows, cols), dtype=bool)
            for concept in range(scores.shape[0]):
                c, r = localize(scores[concept, sample].reshape(rows, cols), self.config)
                core |= c
                ring |= r
            cores.append(torch.from_numpy(core))
            rings.append(torch.from_numpy(ring & ~core))
        core, ring = torch.stack(cores), torch.stack(rings)
        self.flagged = bool(core.any())  # on the CPU, before the masks move to the device
        self.localizations.append(Localization(self.generation, self.step, self.t, core, ring, scores.max(0).values.reshape(-1, rows, cols).cpu()))
        device = target_out.device
        self.core, self.ring = core.reshape(len(cores), -1).to(device), ring.reshape(len(rings), -1).to(device)

    # ---------------------------------------------------------------- the hook
    def joint(self, name: str, query, key, value, attend) -> torch.Tensor:
        localizing, restricting = self.localizes_now(name), self.restricts_now()
        if not (localizing or restricting):
            return attend(query, key, value)
        layout = self.geometry.layout
        if query.shape[1] != layout.total:
            raise RuntimeError(f"UVR ({name}): {query.shape[1]} tokens in attention, the call's ids say {layout}")
        attention = restricting and self.config.restrict == "attention"
        out = self.restricted_attention(query, key, value, attend) if attention else attend(query, key, value)
        if localizing:
            self.localize(out[:, layout.target_slice])
        if self.config.restrict == "replace" and self.restricts_now():
            out = self.replace(out, layout)  # with the masks just made, as the official code does
        elif not attention:
            return out  # nothing changed in this call (editing restricts from the next block on): the stock result
        self.restricted.add((self.generation, self.step))
        return out

    # ---------------------------------------------------------------- restriction
    def replace(self, out: torch.Tensor, layout: Layout) -> torch.Tensor:
        """T2I: flagged target outputs -> keep_share * out + (1 - keep_share) * N(0, 1)."""
        target = out[:, layout.target_slice]
        flagged = _rows(self.core, target.shape[0])
        # Noise only for the flagged rows, drawn on the CPU from the seeded generator (device-independent).
        noise = torch.randn((int(flagged.sum()), *target.shape[2:]), generator=self._noise, dtype=torch.float32).to(out.device, out.dtype)
        keep = self.config.keep_share
        mixed = target.clone()
        mixed[flagged] = keep * target[flagged] + (1 - keep) * noise
        return torch.cat([out[:, : layout.text], mixed, out[:, layout.text + layout.target :]], dim=1)

    def context_factors(self, batch: int) -> torch.Tensor:
        """(B, context tokens) factor on each context key: core_factor / ring_factor / 1, the masks carried
        from the target grid to the context grid (nearest) when their sizes differ."""
        geometry, config = self.geometry, self.config
        rows, cols = geometry.grid
        factors = torch.ones(self.core.shape[0], rows, cols, device=self.core.device)
        factors[self.ring.reshape(-1, rows, cols)] = config.ring_factor
        factors[self.core.reshape(-1, rows, cols)] = config.core_factor
        if geometry.context_grid != (rows, cols):
            factors = F.interpolate(factors[:, None], size=geometry.context_grid, mode="nearest")[:, 0]
        return _rows(factors.reshape(factors.shape[0], -1), batch)

    def restricted_attention(self, query, key, value, attend) -> torch.Tensor:
        """Editing: attention with p[text and target queries, flagged context keys] scaled by core/ring
        factors and p[target queries, text and target keys] by ``boost``, no renormalisation.

        A factor that depends on the key only (within a group of queries) scales that key's value, so each
        query group is one fused attention call with scaled values: exact, no (queries x keys) matrix."""
        layout = self.geometry.layout
        if layout.context == 0:
            raise RuntimeError("UVR's 'attention' restriction needs context tokens (an editing pipeline); text-to-image uses restrict='replace'")
        batch = query.shape[0]
        context = self.context_factors(batch).to(value.dtype)
        ones = torch.ones(batch, layout.text + layout.target, device=value.device, dtype=value.dtype)
        # The boost only where something is flagged: an unflagged sample keeps its stock attention.
        flagged = _rows(self.core.any(1), batch)[:, None].to(value.dtype)
        text_factors = torch.cat([ones, context], dim=1)[:, :, None, None]
        target_factors = torch.cat([ones * (1 + (self.config.boost - 1) * flagged), context], dim=1)[:, :, None, None]
        out_text = attend(query[:, layout.text_slice], key, value * text_factors)
        out_target = attend(query[:, layout.target_slice], key, value * target_factors)
        out_context = attend(query[:, layout.context_slice], key, value)
        return torch.cat([out_text, out_target, out_context], dim=1)


def _rows(mask: torch.Tensor, batch: int) -> torch.Tensor:
    """A (b, ...) per-sample tensor for a call of ``batch`` rows (b == batch, or 1 for every row)."""
    if mask.shape[0] == batch:
        return mask
    if mask.shape[0] == 1:
        return mask.expand(batch, *mask.shape[1:])
    raise RuntimeError(f"UVR masks were made for a batch of {mask.shape[0]}, the call has {batch} rows")


@contextlib.contextmanager
def regulate(model, anchors: Anchors | str | Path, config: UVRConfig | None = None, concepts: Sequence[str] | None = None):
    """``with regulate(pipe, anchors) as regulator: pipe(...)``: every generation inside runs under UVR.

    Args:
        model: a diffusers FLUX pipeline (or anything with ``.transformer``: our editors too), or the
            ``FluxTransformer2DModel`` itself.
        anchors: an ``Anchors`` or the path of an anchor file.
        config: localisation and restriction constants (default: the preset of the pipeline the anchors were
            collected in; ``UVRConfig.preset("t2i"|"edit", ...)``).
        concepts: the concepts to regulate (default: every concept of the file).
    """
    transformer = _transformer_of(model)
    anchors = anchors if isinstance(anchors, Anchors) else Anchors.load(anchors)
    anchors.check(transformer)
    config = config or UVRConfig.preset(anchors.settings.get("pipeline", "t2i"))
    regulator = Regulator(anchors, config, concepts)
    blocks = block_map(transformer)
    handle = transformer.register_forward_pre_hook(regulator.hook, with_kwargs=True)
    try:
        with blocks.hooked({name: regulator for name in blocks}):
            yield regulator
    finally:
        handle.remove()


# ---------------------------------------------------------------------------------------------- anchor collection
class _Recorder(_Tracker):
    """The hook of the anchor block: the stock output, and the per-head mean of the target tokens' attention output."""

    def __init__(self):
        super().__init__()
        self.records: list[tuple[int, float, torch.Tensor]] = []  # (generation, t, (B, H, D) token mean)

    def joint(self, name: str, query, key, value, attend) -> torch.Tensor:
        out = attend(query, key, value)
        self.records.append((self.generation, self.t, out[:, self.geometry.layout.target_slice].float().mean(1).cpu()))
        return out


def _select_steps(ts: list[float], timesteps: float | tuple[float, float]) -> list[int]:
    if isinstance(timesteps, (int, float)):
        return [int(np.argmin([abs(t - float(timesteps)) for t in ts]))]
    low, high = timesteps
    chosen = [i for i, t in enumerate(ts) if low <= t <= high]
    if not chosen:
        raise ValueError(f"no sampling step has t in [{low}, {high}] (the steps' t: {[round(t, 1) for t in ts]})")
    return chosen


def collect_anchors(model, generate: Callable[[], object], block: str | None = None, timesteps: float | tuple[float, float] = OFFICIAL_ANCHOR_T) -> torch.Tensor:
    """Run ``generate()`` (which makes any number of generations with ``model``'s transformer) and return
    (K, heads, head_dim) anchors: per generated image, the attention output of its image tokens at
    ``block``, averaged over tokens and over the chosen steps (``timesteps``: the step nearest this t, or
    every step with t in a (low, high) range; t in 0..1000)."""
    transformer = _transformer_of(model)
    block = block or default_block(transformer)
    blocks = block_map(transformer)
    if block not in blocks:
        raise ValueError(f"no block {block!r} in this model ({describe(blocks.depths)})")
    recorder = _Recorder()
    handle = transformer.register_forward_pre_hook(recorder.hook, with_kwargs=True)
    try:
        with blocks.hooked({block: recorder}):
            generate()
    finally:
        handle.remove()
    if not recorder.records:
        raise RuntimeError("the generation never ran the transformer: nothing was recorded")
    anchors = []
    for generation in sorted({g for g, _, _ in recorder.records}):
        records = [(t, m) for g, t, m in recorder.records if g == generation]
        steps = sorted({t for t, _ in records}, reverse=True)
        chosen = {steps[i] for i in _select_steps(steps, timesteps)}
        # With true CFG a step has two calls; only the first (the conditional one) is kept.
        per_step = {}
        for t, mean in records:
            per_step.setdefault(t, mean)
        anchors.append(torch.stack([per_step[t] for t in sorted(chosen, reverse=True)]).mean(0))
    return torch.cat(anchors)


def make_anchors(concepts: dict[str, torch.Tensor], block: str, pipeline: str, **settings) -> Anchors:
    """An ``Anchors`` with its settings recorded (model, prompts, timesteps, ...; JSON-serialisable)."""
    shapes = {tuple(t.shape[1:]) for t in concepts.values()}
    if len(shapes) != 1:
        raise ValueError(f"concepts disagree on (heads, head_dim): {shapes}")
    record = {"pipeline": pipeline, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **settings}
    json.dumps(record)  # fails early on anything that could not be stored
    return Anchors({n: t.float() for n, t in concepts.items()}, block, record)


def merge(anchors: Iterable[Anchors]) -> Anchors:
    """One file's worth of several collections (same block and shapes)."""
    anchors = list(anchors)
    blocks = {a.block for a in anchors}
    if len(blocks) != 1:
        raise ValueError(f"anchors from different blocks {sorted(blocks)} cannot be merged")
    shapes = {(a.heads, a.head_dim) for a in anchors}
    if len(shapes) != 1:
        raise ValueError(f"anchors of different widths {sorted(shapes)} (heads, head_dim) cannot be merged: they come from different models")
    concepts: dict[str, torch.Tensor] = {}
    for a in anchors:
        for name, tensor in a.concepts.items():
            concepts[name] = torch.cat([concepts[name], tensor]) if name in concepts else tensor
    return Anchors(concepts, blocks.pop(), anchors[0].settings)


# ---------------------------------------------------------------------------------------------- command lines
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
    anchors.check(_transformer_of(model))
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
