"""UVR's anchors: per concept, the attention output of the image tokens at one block of generations that
show the concept (``collect_anchors``; ``python -m decontext.safety.collect``), stored in a safetensors
file with the settings they were taken with (``Anchors``).
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from ..editors.blocks import block_map, describe
from .config import OFFICIAL_ANCHOR_T, OFFICIAL_BLOCK, OFFICIAL_SINGLE_DEPTH
from .localize import _Tracker, transformer_of

FORMAT = "decontext-uvr-anchors"
FORMAT_VERSION = 1
METADATA_KEY = "decontext_uvr"


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
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "block": self.block,
            "heads": self.heads,
            "head_dim": self.head_dim,
            "concepts": {n: int(t.shape[0]) for n, t in self.concepts.items()},
            "settings": self.settings,
        }
        tmp = path.with_name(f".{path.name}.part")
        save_file(
            {f"anchors.{n}": t.detach().float().cpu().contiguous() for n, t in self.concepts.items()},
            str(tmp),
            metadata={METADATA_KEY: json.dumps(meta)},
        )
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
            raise AnchorFileError(
                f"{path}: not a UVR anchor file "
                f"(no '{METADATA_KEY}' metadata; make one with python -m decontext.safety.collect)"
            )
        try:
            meta = json.loads(metadata[METADATA_KEY])
            block, heads, head_dim, counts = (
                meta["block"],
                int(meta["heads"]),
                int(meta["head_dim"]),
                dict(meta["concepts"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise AnchorFileError(f"{path}: broken UVR metadata ({exc})") from None
        if meta.get("format") != FORMAT or int(meta.get("version", -1)) > FORMAT_VERSION:
            raise AnchorFileError(
                f"{path}: format {meta.get('format')!r} version {meta.get('version')!r}; "
                f"this decontext reads {FORMAT!r} up to version {FORMAT_VERSION}"
            )
        if not counts:
            raise AnchorFileError(f"{path}: the file names no concept")
        concepts = {}
        for name, count in counts.items():
            tensor = tensors.get(f"anchors.{name}")
            if tensor is None:
                raise AnchorFileError(f"{path}: concept {name!r} has no tensor 'anchors.{name}'")
            if (
                tensor.ndim != 3
                or tuple(tensor.shape[1:]) != (heads, head_dim)
                or tensor.shape[0] != count
                or count < 1
            ):
                raise AnchorFileError(
                    f"{path}: 'anchors.{name}' has shape {tuple(tensor.shape)}, expected ({count}, {heads}, {head_dim})"
                )
            if not torch.isfinite(tensor).all():
                raise AnchorFileError(f"{path}: 'anchors.{name}' holds NaN or infinite values")
            concepts[name] = tensor.float()
        return cls(concepts, block, dict(meta.get("settings", {})), path)

    def check(self, transformer) -> None:
        """The anchors' block must exist in ``transformer`` with the anchors' head count and width."""
        blocks = block_map(transformer)
        if self.block not in blocks:
            raise AnchorFileError(
                f"{self._where()}anchors were taken at block {self.block!r}, "
                f"which this model lacks ({describe(blocks.depths)})"
            )
        attn = blocks[self.block].module.attn
        if (attn.heads, attn.head_dim) != (self.heads, self.head_dim):
            raise AnchorFileError(
                f"{self._where()}anchors have {self.heads} heads x {self.head_dim}, "
                f"block {self.block} has {attn.heads} x {attn.head_dim}: "
                "they were collected on another model"
            )


def default_block(transformer) -> str:
    """The official block (single-stream 10 of 38); on a shallower model, the single block at the same
    relative depth."""
    stream, index = OFFICIAL_BLOCK.split(".")
    return block_map(transformer).at_relative_depth(stream, int(index), OFFICIAL_SINGLE_DEPTH)


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


def collect_anchors(
    model,
    generate: Callable[[], object],
    block: str | None = None,
    timesteps: float | tuple[float, float] = OFFICIAL_ANCHOR_T,
) -> torch.Tensor:
    """Run ``generate()`` (which makes any number of generations with ``model``'s transformer) and return
    (K, heads, head_dim) anchors: per generated image, the attention output of its image tokens at
    ``block``, averaged over tokens and over the chosen steps (``timesteps``: the step nearest this t, or
    every step with t in a (low, high) range; t in 0..1000)."""
    transformer = transformer_of(model)
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
    record = {
        "pipeline": pipeline,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **settings,
    }
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
        raise ValueError(
            f"anchors of different widths {sorted(shapes)} (heads, head_dim) cannot be merged: "
            "they come from different models"
        )
    concepts: dict[str, torch.Tensor] = {}
    for a in anchors:
        for name, tensor in a.concepts.items():
            concepts[name] = torch.cat([concepts[name], tensor]) if name in concepts else tensor
    return Anchors(concepts, blocks.pop(), anchors[0].settings)
