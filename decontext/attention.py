"""The context-attention probe.

For a target-image query i of one head, its *context share* is
    m_i = sum_{j in context} softmax_j(q_i . k_j / sqrt(d))
with q, k taken after the QK RMSNorm AND after RoPE, and the softmax over ALL keys (text, target and
context). A layer's share is the mean of m_i over target queries and heads.

Computed exactly without materialising the (queries x keys) matrix: attention of the target queries
over all keys with an *indicator value* (1 on context keys, 0 elsewhere) returns m_i in every value
channel, and it runs through the fused scaled-dot-product kernels and their fused backward.

The probe is installed by swapping attention processors (diffusers style). A probed layer still
returns exactly what the stock processor returns.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .editors.base import Layout


def context_share(query: torch.Tensor, key: torch.Tensor, layout: Layout, value_channels: int | None = None) -> torch.Tensor:
    """Per-query context share.

    Args:
        query, key: (B, S, H, D) after normalisation and RoPE; S = layout.total, order [text|target|context].
        layout: token counts.
        value_channels: width of the indicator value (default D, which every fused kernel accepts).
    Returns:
        (B, H, T) tensor of m_i for the T target queries.
    """
    if query.shape[1] != layout.total or key.shape[1] != layout.total:
        raise ValueError(f"sequence length {query.shape[1]} does not match layout {layout}")
    channels = value_channels or query.shape[-1]
    q = query[:, layout.target_slice].transpose(1, 2)  # (B, H, T, D)
    k = key.transpose(1, 2)  # (B, H, S, D)
    indicator = torch.zeros(layout.total, channels, dtype=query.dtype, device=query.device)
    indicator[layout.context_slice] = 1
    v = indicator.expand(k.shape[0], k.shape[1], layout.total, channels)
    out = F.scaled_dot_product_attention(q, k, v)
    return out[..., 0]


def context_share_reference(query: torch.Tensor, key: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Brute force (materialises the softmax matrix); for tests only."""
    q = query[:, layout.target_slice].transpose(1, 2).double()
    k = key.transpose(1, 2).double()
    probs = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return probs[..., layout.context_slice].sum(-1)


@dataclass
class ContextShareProbe:
    """Shared state of the probed processors of one model.

    Set ``layout`` before a forward; after it, ``shares[name]`` holds a (B,) tensor per probed layer
    (mean over heads and target queries), still attached to the autograd graph.
    """

    layout: Layout | None = None
    enabled: bool = True
    value_channels: int | None = None
    stop_at: str | None = None  # a probed layer after whose probe the forward may end
    shares: dict[str, torch.Tensor] = field(default_factory=dict)

    def record(self, name: str, query: torch.Tensor, key: torch.Tensor) -> None:
        if not self.enabled:
            return
        if self.layout is None:
            raise RuntimeError("ContextShareProbe.layout must be set before the forward pass")
        share = context_share(query, key, self.layout, self.value_channels)
        # Overwrite rather than append: activation checkpointing re-runs a block during backward.
        # Average in at least fp32 (bf16 means over thousands of queries lose digits); keep fp64 for checks.
        self.shares[name] = share.to(torch.promote_types(share.dtype, torch.float32)).mean(dim=(1, 2))

    def clear(self) -> None:
        self.shares = {}

    def mean_share(self, names: list[str] | None = None) -> torch.Tensor:
        """(B,) mean share over the recorded (or the named) layers."""
        names = names or list(self.shares)
        missing = [n for n in names if n not in self.shares]
        if missing:
            raise RuntimeError(f"no share was recorded for {missing}: were those layers run?")
        return torch.stack([self.shares[n] for n in names]).mean(0)


@contextlib.contextmanager
def swapped_processors(model, processors: dict[str, object]):
    """Temporarily replace some attention processors of a diffusers model (keys as in ``model.attn_processors``)."""
    original = dict(model.attn_processors)
    unknown = set(processors) - set(original)
    if unknown:
        raise KeyError(f"no attention layers named {sorted(unknown)}")
    model.set_attn_processor({**original, **processors})
    try:
        yield
    finally:
        model.set_attn_processor(original)
