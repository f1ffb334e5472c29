"""UVR's restriction, while t >= 850: text-to-image replaces the flagged patches' attention outputs by
``0.001 * out + 0.999 * N(0, 1)``; editing scales the attention that text and target queries pay to
the flagged context keys (core 0.2, ring 0.4) and the attention target queries pay to text and target
keys (1.05), without renormalising. ``regulate`` installs the regulator as the attention hook of every
block (``decontext.editors.blocks``) plus one forward pre-hook, and removes them on exit.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..attention import Layout
from ..editors.blocks import block_map
from .anchors import Anchors
from .config import UVRConfig
from .localize import Localization, _Tracker, localize, patch_scores, transformer_of


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
        self.localizations.append(
            Localization(
                self.generation, self.step, self.t, core, ring, scores.max(0).values.reshape(-1, rows, cols).cpu()
            )
        )
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
        noise = torch.randn((int(flagged.sum()), *target.shape[2:]), generator=self._noise, dtype=torch.float32).to(
            out.device, out.dtype
        )
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
            raise RuntimeError(
                "UVR's 'attention' restriction needs context tokens (an editing pipeline); "
                "text-to-image uses restrict='replace'"
            )
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
def regulate(
    model, anchors: Anchors | str | Path, config: UVRConfig | None = None, concepts: Sequence[str] | None = None
):
    """``with regulate(pipe, anchors) as regulator: pipe(...)``: every generation inside runs under UVR.

    Args:
        model: a diffusers FLUX pipeline (or anything with ``.transformer``: our editors too), or the
            ``FluxTransformer2DModel`` itself.
        anchors: an ``Anchors`` or the path of an anchor file.
        config: localisation and restriction constants (default: the preset of the pipeline the anchors were
            collected in; ``UVRConfig.preset("t2i"|"edit", ...)``).
        concepts: the concepts to regulate (default: every concept of the file).
    """
    transformer = transformer_of(model)
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
