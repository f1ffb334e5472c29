"""The context-attention probe.

For a target-image query i of one head, its *context share* is
    m_i = sum_{j in context} softmax_j(q_i . k_j / sqrt(d))
with q, k taken after the QK RMSNorm AND after RoPE, and the softmax over ALL keys (text, target and
context). A layer's share is the mean of m_i over target queries and heads.

Computed exactly without materialising the (queries x keys) matrix: attention of the target queries
over all keys with an *indicator value* (1 on context keys, 0 elsewhere) returns m_i, and it runs
through the fused scaled-dot-product kernels and their fused backward. In a layer whose output is
needed, the indicator rides along in the layer's own attention call (``attention_with_share``); in
the last probed layer, whose output is not needed, a separate call over target queries measures it.

Every consumer of a layer's attention (this probe, the premise study's cuts, UVR's regulator and its
anchor recorder) is an ``AttentionHook``: the one processor per attention architecture
(``decontext.editors.blocks``) makes the layer's q, k, v exactly as the stock processor does and hands
them to the hook, which returns the attention output. ``ContextShareProbe`` is the probe's hook: its
``joint`` is the one probe dispatch (measure-only and stop, fused, or a separate measurement call).
A probed layer still returns exactly what the stock processor returns.

The probe hook holds no per-call state. What one model call asks of it (the token layout, the block to
stop in, the text mask) is a ``ProbeCall`` the editor makes for that call and hands to the model in its
own attention-kwargs channel, so it reaches the hooked layers of that call and no other; the layers put
their measurements into it, and the editor returns them (``Probed``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


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


class StopForward(Exception):
    """Raised inside a forward pass whose remaining blocks nothing needs (caught by the editor's velocity)."""


class AttentionHook:
    """What runs inside a hooked attention layer, between its q/k/v and its output projection.

    ``joint(name, query, key, value, attend)``: a joint-attention layer's (B, S, H, D) q, k, v (after QK
    norm and RoPE, text first) and ``attend(q, k, v, scale=None, mask=None)``, the layer's own attention
    call (diffusers' dispatcher, the user's backend, the layer's key mask); returns the (B, S, H, D)
    output. The default is the stock computation. ``cross(name, probs)``: a cross-attention layer's
    (B, heads, queries, keys) softmax, read before the layer uses it (UNet editors).

    A model call that carries a ``ProbeCall`` (a velocity call under an editor's probe) hands it as ``call=``;
    the processors pass ``call`` only when the call carried one, so a hook that never meets such calls
    (UVR, the premise study's cuts) need not take the argument."""

    def joint(
        self, name: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attend, call=None
    ) -> torch.Tensor:
        return attend(query, key, value)

    def cross(self, name: str, probs: torch.Tensor, call=None) -> None:
        pass


def _indicator(
    layout: Layout, channels: int, like: torch.Tensor, text_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """(B or 1, S, channels) zeros with 1 in channel 0 on the context keys and, given a (B, text)
    ``text_mask``, its values in channel 1 on the text keys."""
    batch = 1 if text_mask is None else text_mask.shape[0]
    indicator = torch.zeros(batch, layout.total, channels, dtype=like.dtype, device=like.device)
    indicator[:, layout.context_slice, 0] = 1
    if text_mask is not None:
        if channels < 2 or text_mask.shape[-1] != layout.text:
            raise ValueError(
                f"text mask of {text_mask.shape[-1]} tokens for {layout.text} text keys "
                f"(and {channels} indicator channels)"
            )
        indicator[:, layout.text_slice, 1] = text_mask.to(like.device, like.dtype)
    return indicator


def sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scale: float | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention on (B, S, H, D) tensors (diffusers' layout), through torch's kernels."""
    out = F.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=mask, scale=scale
    )
    return out.transpose(1, 2)


def target_masses(
    query: torch.Tensor, key: torch.Tensor, layout: Layout, text_mask: torch.Tensor | None = None, attend=None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention mass target queries put on the context keys and (given ``text_mask``) on the masked text
    keys, by a separate attention call of the target queries with indicator values.

    Args:
        query, key: (B, S, H, D) after normalisation and RoPE; S = layout.total, order [text|target|context].
        layout: token counts.
        text_mask: optional (B, layout.text) weights of the text keys (1 = a token of the prompt).
        attend: the layer's attention call (default: torch's SDPA); a layer with a key mask passes its
            masked call, so masked keys get zero probability here too.
    Returns:
        ((B, H, T) context share m_i, (B, H, T) text mass sum_j mask_j p_ij or None) for the T target queries.
    """
    _check(query, key, layout)
    batch, _, heads, dim = key.shape
    # The fused kernels want a value as wide as q and k; a dense one (a broadcast one was slower on CPU).
    value = _indicator(layout, dim, key, text_mask)[:, :, None].expand(batch, layout.total, heads, dim).contiguous()
    out = (attend or sdpa)(query[:, layout.target_slice], key, value)
    return out[..., 0].transpose(1, 2), (None if text_mask is None else out[..., 1].transpose(1, 2))


def context_share(query: torch.Tensor, key: torch.Tensor, layout: Layout) -> torch.Tensor:
    """(B, H, T) per-query context share of the target queries (``target_masses`` without a text mask)."""
    return target_masses(query, key, layout)[0]


def attention_with_masses(
    query, key, value, layout: Layout, attend=None, pad: int = 8, text_mask: torch.Tensor | None = None
):
    """The layer's own attention output AND the masses its target queries put on the context keys (and
    the masked text keys), in one pass.

    The target queries' rows are computed with the indicators appended to the values: q, k and v are
    zero-padded by ``pad`` channels (zero q/k channels leave every score unchanged; the softmax scale
    stays 1/sqrt(D)), v's first extra channel is the context indicator and its second the text mask, so
    those rows return their normal output in channels :D and the masses in channels D and D+1. The other
    rows (text and context queries) go through an ordinary call. Fused kernels need q, k and v of one
    width, hence padding all three; 8 keeps the width a multiple of 8, as GPU flash kernels require.

    Args:
        query, key, value: (B, S, H, D), order [text|target|context], after normalisation and RoPE.
        attend: ``attend(q, k, v, scale=...)`` on (B, S, H, D) tensors (default: torch's SDPA); the probed
            processor passes diffusers' dispatcher so a user's attention backend is kept.
        text_mask: optional (B, layout.text) weights of the text keys.
    Returns:
        (output (B, S, H, D) exactly as one attention call over all queries gives it, shares (B, H, T),
        text masses (B, H, T) or None).
    """
    _check(query, key, layout)
    needed = 1 if text_mask is None else 2
    if pad < needed:
        raise ValueError(f"pad must be >= {needed} (one channel per indicator), got {pad}")
    attend = attend or sdpa
    dim = query.shape[-1]
    scale = dim**-0.5
    padded_key = F.pad(key, (0, pad))
    indicator = _indicator(layout, pad, value, text_mask)[:, :, None].expand(
        value.shape[0], layout.total, value.shape[2], pad
    )
    padded_value = torch.cat([value, indicator], dim=-1)
    target_out = attend(F.pad(query[:, layout.target_slice], (0, pad)), padded_key, padded_value, scale=scale)
    others = torch.cat([query[:, layout.text_slice], query[:, layout.context_slice]], dim=1)
    other_out = attend(others, key, value, scale=scale)
    output = torch.cat(
        [other_out[:, : layout.text], target_out[..., :dim].to(other_out.dtype), other_out[:, layout.text :]], dim=1
    )
    text = None if text_mask is None else target_out[..., dim + 1].transpose(1, 2)
    return output, target_out[..., dim].transpose(1, 2), text


def attention_with_share(
    query, key, value, layout: Layout, attend=None, pad: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, (B, H, T) context shares) in one pass (``attention_with_masses`` without a text mask)."""
    if pad < 1:
        raise ValueError(f"pad must be >= 1 (one channel carries the indicator), got {pad}")
    output, share, _ = attention_with_masses(query, key, value, layout, attend, pad)
    return output, share


def _check(query: torch.Tensor, key: torch.Tensor, layout: Layout) -> None:
    if query.shape[1] != layout.total or key.shape[1] != layout.total:
        raise ValueError(f"sequence length {query.shape[1]} does not match layout {layout}")


def context_share_reference(query: torch.Tensor, key: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Brute force (materialises the softmax matrix); for tests only."""
    q = query[:, layout.target_slice].transpose(1, 2).double()
    k = key.transpose(1, 2).double()
    probs = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return probs[..., layout.context_slice].sum(-1)


@dataclass(frozen=True, eq=False)
class ProbeCall:
    """What one model call asks of its probed layers, and where they put what they measure.

    The editor makes one for each velocity call under a probe and passes it to the model in its
    attention-kwargs channel (``decontext.editors.blocks.PROBE_KWARG``). Activation checkpointing keeps a
    block's arguments, this record among them, so the block's re-run in backward takes the same path as
    its forward (measure-only in ``stop_at``), which the recomputed activations must match.

    ``layout``: the token counts of this call; ``stop_at``: a probed layer after whose measurement the
    forward ends (``StopForward``); ``text_mask``: (B, text) weights of the prompt's tokens, when text maps
    are wanted. ``shares`` / ``text_maps`` are filled by the layers of this call only (see ``Probed``)."""

    layout: Layout
    stop_at: str | None = None
    text_mask: torch.Tensor | None = None
    shares: dict[str, torch.Tensor] = field(default_factory=dict)
    text_maps: dict[str, torch.Tensor] = field(default_factory=dict)

    def record(self, name: str, share: torch.Tensor, text: torch.Tensor | None = None) -> None:
        """Keep the (B,) mean over heads and target queries of a (B, H, T) share (and the (B, T) head mean
        of a text mass)."""
        # Overwrite rather than append: activation checkpointing re-runs a block during backward.
        # Average in at least fp32 (bf16 means over thousands of queries lose digits); keep fp64 for checks.
        self.shares[name] = share.to(torch.promote_types(share.dtype, torch.float32)).mean(dim=(1, 2))
        if text is not None:
            self.text_maps[name] = text.to(torch.promote_types(text.dtype, torch.float32)).mean(dim=1)


@dataclass(frozen=True, eq=False)
class Probed:
    """What one velocity call under a probe returns (``editor.probed_velocity``).

    ``velocity``: the prediction, or None when the pass ended early (``stop_after``); ``shares[name]``: a
    (B,) context share per probed layer that ran (mean over heads and target queries), attached to the
    autograd graph; ``text_maps[name]``: with text attention (``editor.text_attention``), a (B, T) map per
    probed layer: per target query, the attention mass on the prompt's tokens, mean over heads. Empty
    when no probe is installed."""

    velocity: torch.Tensor | None
    shares: dict[str, torch.Tensor] = field(default_factory=dict)
    text_maps: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def of(cls, velocity: torch.Tensor | None, call: ProbeCall | None) -> Probed:
        """A call's velocity and what its layers put into its record (nothing for a call without one)."""
        # Copies: a checkpointed backward re-runs blocks, and they write into the record again.
        return cls(velocity) if call is None else cls(velocity, dict(call.shares), dict(call.text_maps))

    def mean_share(self, names: list[str] | None = None) -> torch.Tensor:
        """(B,) mean share over the recorded (or the named) layers."""
        names = names or list(self.shares)
        missing = [n for n in names if n not in self.shares]
        if missing:
            raise RuntimeError(f"no share was recorded for {missing}: were those layers run?")
        return torch.stack([self.shares[n] for n in names]).mean(0)


@dataclass
class ContextShareProbe(AttentionHook):
    """The probe's hook on the probed layers of one model; it keeps no per-call state.

    A call carrying a ``ProbeCall`` gets its measurements recorded into that record: in a joint-attention
    layer the context share (and, with the call's ``text_mask``, the text map); in a cross-attention layer
    (UNet editors) the text map, from the layer's own softmax. A call carrying none gets the stock
    computation. ``fused`` (a setting of the installed probe) picks how a layer whose output is needed
    measures: in its own attention call (``attention_with_masses``) or in a separate one.
    """

    fused: bool = True

    def joint(self, name: str, query, key, value, attend=None, call: ProbeCall | None = None) -> torch.Tensor:
        """The probe dispatch of one joint-attention layer: in the layer a forward stops at, only the
        measurement (a separate call; its output is never needed) and ``StopForward``; elsewhere the layer's
        output with the measurement fused into its own call, or beside it (``fused=False``)."""
        attend = attend or sdpa
        if call is None:
            return attend(query, key, value)
        if call.stop_at == name:
            call.record(name, *target_masses(query, key, call.layout, call.text_mask, attend))
            raise StopForward
        if self.fused:
            out, share, text = attention_with_masses(query, key, value, call.layout, attend, text_mask=call.text_mask)
        else:
            share, text = target_masses(query, key, call.layout, call.text_mask, attend)
            out = attend(query, key, value)
        call.record(name, share, text)
        return out

    def cross(self, name: str, probs: torch.Tensor, call: ProbeCall | None = None) -> None:
        """Keep the text map of a cross-attention layer's (B, heads, queries, keys) softmax; the forward
        ends after it when this is the layer to stop at."""
        if call is None:
            return
        if call.text_mask is None:
            raise RuntimeError(f"{name}: the probed call carries no text mask")
        mask = call.text_mask.to(probs.device, probs.dtype)
        call.text_maps[name] = torch.einsum("bhqk,bk->bq", probs, mask) / probs.shape[1]
        if call.stop_at == name:
            raise StopForward
