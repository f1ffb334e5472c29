"""What every editor answers: the seam between protection methods and a concrete model family."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Protocol, Sequence

import torch


@dataclass(frozen=True)
class Layout:
    """Token counts of the joint attention sequence ``[text | target | context]``.

    Always derived from tensor shapes at run time (never literals), so any resolution and aspect
    ratio works.
    """

    text: int
    target: int
    context: int

    @property
    def total(self) -> int:
        return self.text + self.target + self.context

    @property
    def text_slice(self) -> slice:
        return slice(0, self.text)

    @property
    def target_slice(self) -> slice:
        return slice(self.text, self.text + self.target)

    @property
    def context_slice(self) -> slice:
        return slice(self.text + self.target, self.total)


@dataclass
class PromptEmbeddings:
    """Pre-computed text conditioning for a list of prompts (row i = prompt i)."""

    prompts: list[str]
    embeds: torch.Tensor  # (N, L, D) sequence embeddings (T5 for Kontext)
    pooled: torch.Tensor  # (N, P) pooled embeddings (CLIP for Kontext)
    # Text position ids are the editor's business (all zero for Kontext), made where the transformer is called.

    def select(self, index: int | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = [index] if isinstance(index, int) else list(index)
        return self.embeds[index], self.pooled[index]


@dataclass
class ContextLatents:
    """A source image encoded the way the editor's pipeline encodes its context image."""

    tokens: torch.Tensor  # (B, N, C) packed latent tokens
    ids: torch.Tensor  # (N, 3) position ids
    latent_size: tuple[int, int]  # (h, w) of the unpacked latent
    pixel_size: tuple[int, int]  # (H, W) working size the pixels were resized to


class Editor(Protocol):
    """An in-context editor as seen by protection methods. One implementation per model family."""

    name: str
    device: torch.device
    dtype: torch.dtype

    @property
    def block_names(self) -> list[str]: ...

    def encode_prompts(self, prompts: Sequence[str]) -> PromptEmbeddings: ...

    def working_size(self, height: int, width: int, resolution: str | int = "auto") -> tuple[int, int]: ...

    def encode_context(self, pixels: torch.Tensor, size: tuple[int, int]) -> ContextLatents: ...

    def target_like(self, context: ContextLatents, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]: ...

    def forward(
        self,
        target: torch.Tensor,
        target_ids: torch.Tensor,
        context: ContextLatents,
        embeds: torch.Tensor,
        pooled: torch.Tensor,
        timestep: torch.Tensor,
        guidance: float | None = None,
        stop_after: str | None = None,
    ) -> torch.Tensor | None: ...


_RANGE = re.compile(r"^(double|single)(?::(all|\d+(?:-\d+)?)(?:/(\d+))?)?$")


def resolve_blocks(spec: str | Sequence[str], depths: dict[str, int]) -> list[str]:
    """Turn a block specification into block names ``"<stream>.<index>"`` of a concrete model.

    ``spec`` is a comma-separated list of items:
      - ``single.3`` / ``double.0``: one block by name;
      - ``single`` or ``single:all``: every block of that stream;
      - ``single:0-25``: blocks 0..25 of this model;
      - ``single:0-25/38``: blocks 0..25 of a 38-deep stack, scaled to this model's depth: block i of n is
        kept when its relative position i/n lies in [0/38, 26/38). On FLUX (38 single blocks) this is
        exactly 0..25; on a 4-single-block tiny model it is 0..2.
    The result keeps model order (double blocks first) and has no duplicates.
    """
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise ValueError("empty block specification")
    chosen: set[str] = set()
    for item in items:
        if "." in item:
            stream, _, index = item.partition(".")
            if stream not in depths or not index.isdigit() or int(index) >= depths[stream]:
                raise ValueError(f"unknown block {item!r}: this model has {depths}")
            chosen.add(item)
            continue
        match = _RANGE.match(item)
        if not match:
            raise ValueError(f"bad block specification {item!r} (examples: 'single:0-25/38', 'double', 'single.3')")
        stream, span, reference = match.groups()
        depth = depths.get(stream, 0)
        if span in (None, "all"):
            chosen.update(f"{stream}.{i}" for i in range(depth))
            continue
        start, _, end = span.partition("-")
        start, end = int(start), int(end or start)
        if end < start:
            raise ValueError(f"bad block range {item!r}")
        if reference is None:
            if end >= depth:
                raise ValueError(f"block range {item!r} exceeds this model's {depth} {stream} blocks")
            chosen.update(f"{stream}.{i}" for i in range(start, end + 1))
        else:
            ref = int(reference)
            if end >= ref:
                raise ValueError(f"block range {item!r} exceeds its reference depth {ref}")
            lo, hi = start / ref, (end + 1) / ref
            chosen.update(f"{stream}.{i}" for i in range(depth) if lo - 1e-12 <= i / depth < hi - 1e-12)
    order = [f"{s}.{i}" for s in ("double", "single") for i in range(depths.get(s, 0))]
    result = [name for name in order if name in chosen]
    if not result:
        raise ValueError(f"block specification {spec!r} selects no block of this model ({depths})")
    return result


def snap(value: float, multiple: int) -> int:
    """Round down to a multiple (at least one multiple)."""
    return max(multiple, int(math.floor(value / multiple)) * multiple)
