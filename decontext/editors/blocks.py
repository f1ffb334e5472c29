"""Where a denoiser's attention is, and one hooked processor per attention architecture.

``block_map(model)`` reads a model's blocks from the model itself: ``name -> (module, processor key)``
in execution order, named ``double.i`` / ``single.j`` on the DiTs (FLUX.1's FluxTransformer2DModel,
FLUX.2's Flux2Transformer2DModel, Qwen-Image's one stream of dual-stream blocks) and ``down.i`` /
``mid.0`` / ``up.i`` for a UNet's text cross-attention layers. Everything that touches attention
reads it: the editors' probes and early stop, UVR, the premise study's cuts.

Each architecture has ONE processor here. It makes q, k and v exactly as diffusers' stock processor
of that architecture does (diffusers offers no hook between RoPE and the attention call; each restated
part carries a ``# Restates: <object> @ diffusers==<version>`` marker, and tests/test_upstream.py fails
when that upstream source changes), hands them to an ``AttentionHook``
(``decontext.attention``) together with the layer's own attention call, and finishes the output as
the stock processor does. The stock computation is what the default hook returns, so a hooked layer
whose hook does nothing is the stock layer. ``BlockMap.hooked({name: hook})`` installs them for the
length of a ``with``; the stock processors are back afterwards, whatever happens inside.

A model call can carry per-call instructions to its hooks (the probe's ``ProbeCall``): the editor puts
the record into the attention kwargs the model hands every attention layer (``probe_kwargs``; diffusers
calls them ``joint_attention_kwargs`` on FLUX.1 and FLUX.2, ``attention_kwargs`` on Qwen-Image and
``cross_attention_kwargs`` on the UNet, and passes them on to each block, also through its gradient
checkpointing). The hooked processors take it as ``PROBE_KWARG`` and hand it to their hook as ``call``.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from ..attention import AttentionHook, ContextShareProbe, ProbeCall, StopForward

PROBE_KWARG = "probe_call"  # the attention kwarg a probed call's record travels under (``probe_kwargs``)
_RANGE_NOTE = "single:0-25/38"
_RANGE = re.compile(r"^([a-z_]+)(?::(all|\d+(?:-\d+)?)(?:/(\d+))?)?$")


@dataclass(frozen=True)
class Block:
    name: str  # "double.0", "single.3", "down.1", ...
    module: torch.nn.Module  # the block (DiTs) or the attention layer (UNet cross-attention)
    processor_key: str  # its key in ``model.attn_processors``


class BlockMap:
    """The attention blocks of one model, in execution order, and how to hook them.

    ``aliases``: streams a relative block specification may name although this model lacks them, and
    the stream they are read as (Qwen-Image: ``single`` -> its one stream ``double``)."""

    def __init__(
        self, model: torch.nn.Module, blocks: Sequence[Block], processor, aliases: dict[str, str] | None = None
    ):
        self.model = model
        self.blocks = {b.name: b for b in blocks}
        self.processor = processor  # the hooked processor class of this architecture
        self.aliases = dict(aliases or {})

    def __iter__(self) -> Iterator[str]:
        return iter(self.blocks)

    def __contains__(self, name: str) -> bool:
        return name in self.blocks

    def __getitem__(self, name: str) -> Block:
        if name not in self.blocks:
            raise ValueError(f"no block {name!r} in this model ({describe(self.depths)})")
        return self.blocks[name]

    @property
    def names(self) -> list[str]:
        return list(self.blocks)

    @property
    def depths(self) -> dict[str, int]:
        """Blocks per stream, e.g. {"double": 19, "single": 38}."""
        depths: dict[str, int] = {}
        for name in self.blocks:
            stream = name.split(".")[0]
            depths[stream] = depths.get(stream, 0) + 1
        return depths

    def resolve(self, spec: str | Sequence[str]) -> list[str]:
        """Block names for a specification such as ``single:0-25/38`` (``resolve_blocks``); a relative
        range of a stream this model lacks but aliases is read as the same relative depth of the alias."""
        items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
        mapped = []
        for item in items:
            stream, sep, rest = item.partition(":")
            if stream in self.aliases and stream not in self.depths and "." not in item:
                if not sep or "/" not in rest:
                    raise ValueError(
                        f"{item!r}: this model has only {describe(self.depths)}; give a block range of it, "
                        f"or a relative one such as '{_RANGE_NOTE}' "
                        f"(read as the same relative depth of its {self.aliases[stream]} stream)"
                    )
                item = f"{self.aliases[stream]}:{rest}"
            mapped.append(item)
        return resolve_blocks(mapped, self.depths)

    def at_relative_depth(self, stream: str, index: int, of: int) -> str:
        """The block of ``stream`` at the relative depth of block ``index`` of an ``of``-deep stack (the
        same block when this model is ``of`` deep; else the nearest, ``round(index * depth / of)``)."""
        stream = stream if stream in self.depths else self.aliases.get(stream, stream)
        if stream not in self.depths:
            raise ValueError(f"this model has no {stream} blocks ({describe(self.depths)})")
        depth = self.depths[stream]
        return f"{stream}.{index if depth == of else min(depth - 1, round(index * depth / of))}"

    @contextlib.contextmanager
    def hooked(self, hooks: dict[str, AttentionHook], probe_calls: bool = False):
        """This architecture's processor with ``hooks[name]`` on the named blocks for the ``with``.

        ``probe_calls``: the model's calls in the ``with`` may carry a ``ProbeCall`` (``probe_kwargs``), which
        diffusers hands to every attention layer of the model; the layers not hooked then keep their stock
        processor behind ``DropsProbeCall``, so the record reaches them without a warning."""
        unknown = [n for n in hooks if n not in self.blocks]
        if unknown:
            raise ValueError(f"cannot hook {unknown}: this model's blocks are {describe(self.depths)}")
        processors = {self.blocks[name].processor_key: self.processor(hook, name) for name, hook in hooks.items()}
        if probe_calls:
            carriers = {k: DropsProbeCall(p) for k, p in self.model.attn_processors.items() if k not in processors}
            processors = {**carriers, **processors}
        with swapped_processors(self.model, processors):
            yield

    @contextlib.contextmanager
    def probing(self, blocks: Sequence[str], layers: str = "blocks"):
        """One ``ContextShareProbe`` hooked on the named ``blocks`` for the ``with`` (yielded), the model's calls
        free to carry a ``ProbeCall``: the probe every editor family installs. ``layers`` names what the
        blocks are in the error for an unknown or empty list."""
        blocks = list(blocks)
        unknown = [b for b in blocks if b not in self.blocks]
        if unknown or not blocks:
            raise ValueError(f"cannot probe {unknown or 'no ' + layers}: this model's {layers} are {self.depths}")
        probe = ContextShareProbe()
        with self.hooked({name: probe for name in blocks}, probe_calls=True):
            yield probe

    @contextlib.contextmanager
    def stop_after(self, name: str | None):
        """End the forward pass (``StopForward``) before the block after ``name`` runs; nothing when
        ``name`` is None or the last block."""
        names = self.names
        if name is None or name == names[-1]:
            yield
            return
        if name not in self.blocks:
            raise ValueError(f"stop_after={name!r} is not a block of this model ({describe(self.depths)})")
        following = self.blocks[names[names.index(name) + 1]].module

        def stop(module, args, kwargs):
            raise StopForward

        handle = following.register_forward_pre_hook(stop, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()


def describe(depths: dict[str, int]) -> str:
    return ", ".join(f"{n} {stream}" for stream, n in depths.items()) + " blocks"


def probe_kwargs(call: ProbeCall | None) -> dict | None:
    """The attention kwargs of a model call carrying ``call`` (None: a call without one, the stock kwargs)."""
    return None if call is None else {PROBE_KWARG: call}


class DropsProbeCall:
    """A stock processor that also takes a call's probe record, and ignores it.

    diffusers' attention modules compare the kwargs they are handed with their processor's signature, warn
    about the ones it lacks and drop them; a probed call hands its record to every attention layer, so the
    layers a probe does not hook keep their stock processor behind this one while the probe is installed.
    The computation is the stock processor's own call."""

    def __init__(self, stock):
        self.stock = stock

    def __call__(self, attn, *args, probe_call: ProbeCall | None = None, **kwargs):
        return self.stock(attn, *args, **kwargs)


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


# ---------------------------------------------------------------------------------------------- block specifications
def resolve_blocks(spec: str | Sequence[str], depths: dict[str, int]) -> list[str]:
    """Turn a block specification into block names ``"<stream>.<index>"`` of a concrete model.

    ``spec`` is a comma-separated list of items:
      - ``single.3`` / ``double.0``: one block by name;
      - ``single`` or ``single:all``: every block of that stream;
      - ``single:0-25``: blocks 0..25 of this model;
      - ``all``: every block of every stream;
      - ``single:0-25/38``: blocks 0..25 of a 38-deep stack, scaled to this model's depth: block i of n is
        kept when its relative position i/n lies in [0/38, 26/38). On FLUX (38 single blocks) this is
        exactly 0..25; on a 4-single-block tiny model it is 0..2.
    Streams are the model's own (``double``/``single`` on the DiTs; ``down``/``mid``/``up``
    cross-attention layers on UNets). The result keeps model order and has no duplicates.
    """
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    items = [stream for item in items for stream in (depths if item == "all" else [item])]
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
        if stream not in depths:
            raise ValueError(f"unknown block stream {stream!r} in {item!r}: this model has {depths}")
        depth = depths[stream]
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
    order = [f"{s}.{i}" for s, depth in depths.items() for i in range(depth)]
    result = [name for name in order if name in chosen]
    if not result:
        raise ValueError(f"block specification {spec!r} selects no block of this model ({depths})")
    return result


# ---------------------------------------------------------------------------------------------- the processors
def _attend(processor, key_mask=None):
    """The layer's own attention call ``attend(q, k, v, scale=None, mask=None)``: diffusers' dispatcher
    with the processor's backend (a user's attention backend is kept) and the layer's key mask; a hook
    may pass a score mask of its own (e.g. the premise study's cut) on a layer without one."""
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    def attend(query, key, value, scale=None, mask=None):
        if mask is not None and key_mask is not None:
            raise NotImplementedError("a score mask on a layer that already masks keys")
        return dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=key_mask if mask is None else mask,
            scale=scale,
            backend=processor._attention_backend,
            parallel_config=processor._parallel_config,
        )

    return attend


def _heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    return x.unflatten(-1, (-1, head_dim))


def _with_call(call: ProbeCall | None) -> dict:
    # Only a call that carries a record hands it on, so hooks that never meet one need not take ``call``.
    return {} if call is None else {"call": call}


# Restates: diffusers.models.transformers.transformer_flux.FluxAttnProcessor.__call__ @ diffusers==0.42.1
# Restates: diffusers.models.transformers.transformer_flux2.Flux2AttnProcessor.__call__ @ diffusers==0.42.1
def _flux_style_qkv(projections, attn, hidden_states, encoder_hidden_states, image_rotary_emb):
    """q, k, v (B, S, H, D) of the joint sequence as ``FluxAttnProcessor.__call__`` and
    ``Flux2AttnProcessor.__call__`` make them (diffusers 0.42.1, transformer_flux.py / transformer_flux2.py):
    projections, QK RMSNorm, text tokens first in double-stream blocks, then RoPE."""
    from diffusers.models.embeddings import apply_rotary_emb

    query, key, value, text_query, text_key, text_value = projections(attn, hidden_states, encoder_hidden_states)
    query, key, value = (
        attn.norm_q(_heads(query, attn.head_dim)),
        attn.norm_k(_heads(key, attn.head_dim)),
        _heads(value, attn.head_dim),
    )
    if attn.added_kv_proj_dim is not None:
        # Double-stream block: text tokens come first in the joint sequence.
        query = torch.cat([attn.norm_added_q(_heads(text_query, attn.head_dim)), query], dim=1)
        key = torch.cat([attn.norm_added_k(_heads(text_key, attn.head_dim)), key], dim=1)
        value = torch.cat([_heads(text_value, attn.head_dim), value], dim=1)
    if image_rotary_emb is not None:
        query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
        key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
    return query, key, value


def flux_qkv(attn, hidden_states, encoder_hidden_states=None, image_rotary_emb=None):
    """q, k, v (B, S, H, D) of a ``FluxTransformer2DModel`` layer, exactly as its stock processor makes them."""
    from diffusers.models.transformers.transformer_flux import _get_qkv_projections

    return _flux_style_qkv(_get_qkv_projections, attn, hidden_states, encoder_hidden_states, image_rotary_emb)


def _no_mask(name: str, attention_mask) -> None:
    if attention_mask is not None:
        # The FLUX pipelines pass none; a mask would change which keys a share, a cut or UVR acts on.
        raise NotImplementedError(f"{name}: hooked attention does not support attention masks")


# Restates: diffusers.models.transformers.transformer_flux.FluxAttnProcessor.__call__ @ diffusers==0.42.1
def _flux_processor():
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, _get_qkv_projections

    class HookedFluxProcessor(FluxAttnProcessor):
        """``FluxAttnProcessor`` (FLUX.1-Kontext, FLUX.1-dev, Step1X-Edit) with an attention hook."""

        def __init__(self, hook: AttentionHook, name: str):
            super().__init__()
            self.hook, self.name = hook, name

        def __call__(
            self,
            attn,
            hidden_states,
            encoder_hidden_states=None,
            attention_mask=None,
            image_rotary_emb=None,
            probe_call: ProbeCall | None = None,
        ):
            _no_mask(self.name, attention_mask)
            query, key, value = _flux_style_qkv(
                _get_qkv_projections, attn, hidden_states, encoder_hidden_states, image_rotary_emb
            )
            out = self.hook.joint(self.name, query, key, value, _attend(self), **_with_call(probe_call))
            out = out.flatten(2, 3).to(query.dtype)
            if encoder_hidden_states is None:
                return out
            # The stock tail (transformer_flux.py): image through to_out, text through to_add_out.
            text_out, image_out = out.split_with_sizes(
                [encoder_hidden_states.shape[1], out.shape[1] - encoder_hidden_states.shape[1]], dim=1
            )
            image_out = attn.to_out[1](attn.to_out[0](image_out.contiguous()))
            return image_out, attn.to_add_out(text_out.contiguous())

    return HookedFluxProcessor


# Restates: diffusers.models.transformers.transformer_flux2.Flux2AttnProcessor.__call__ @ diffusers==0.42.1
# Restates: diffusers.models.transformers.transformer_flux2.Flux2ParallelSelfAttnProcessor.__call__ @ diffusers==0.42.1
def _flux2_processors():
    from diffusers.models.embeddings import apply_rotary_emb
    from diffusers.models.transformers.transformer_flux2 import (
        Flux2AttnProcessor,
        Flux2ParallelSelfAttnProcessor,
        _get_qkv_projections,
    )

    class HookedFlux2Processor(Flux2AttnProcessor):
        """``Flux2AttnProcessor`` (FLUX.2 double-stream blocks) with an attention hook."""

        def __init__(self, hook: AttentionHook, name: str):
            super().__init__()
            self.hook, self.name = hook, name

        def __call__(
            self,
            attn,
            hidden_states,
            encoder_hidden_states=None,
            attention_mask=None,
            image_rotary_emb=None,
            probe_call: ProbeCall | None = None,
        ):
            _no_mask(self.name, attention_mask)
            query, key, value = _flux_style_qkv(
                _get_qkv_projections, attn, hidden_states, encoder_hidden_states, image_rotary_emb
            )
            out = self.hook.joint(self.name, query, key, value, _attend(self), **_with_call(probe_call))
            out = out.flatten(2, 3).to(query.dtype)
            if encoder_hidden_states is None:
                return attn.to_out[1](attn.to_out[0](out))
            text_out, image_out = out.split_with_sizes(
                [encoder_hidden_states.shape[1], out.shape[1] - encoder_hidden_states.shape[1]], dim=1
            )
            return attn.to_out[1](attn.to_out[0](image_out)), attn.to_add_out(text_out)

    class HookedFlux2ParallelProcessor(Flux2ParallelSelfAttnProcessor):
        """``Flux2ParallelSelfAttnProcessor`` (FLUX.2 single-stream parallel blocks) with an attention hook.

        Restated from ``Flux2ParallelSelfAttnProcessor.__call__`` (diffusers 0.42.1): the fused projection
        is split into QKV and MLP halves by their global ratio; attention and the SwiGLU MLP are joined by
        the fused output projection."""

        def __init__(self, hook: AttentionHook, name: str):
            super().__init__()
            self.hook, self.name = hook, name

        def __call__(
            self, attn, hidden_states, attention_mask=None, image_rotary_emb=None, probe_call: ProbeCall | None = None
        ):
            _no_mask(self.name, attention_mask)
            fused = attn.to_qkv_mlp_proj(hidden_states)
            qkv_width, mlp_width = 3 * attn.inner_dim, attn.mlp_hidden_dim * attn.mlp_mult_factor
            local_qkv = fused.shape[-1] * qkv_width // (qkv_width + mlp_width)
            qkv, mlp = torch.split(fused, [local_qkv, fused.shape[-1] - local_qkv], dim=-1)
            query, key, value = (_heads(t, attn.head_dim) for t in qkv.chunk(3, dim=-1))
            query, key = attn.norm_q(query), attn.norm_k(key)
            if image_rotary_emb is not None:
                query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
                key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
            out = self.hook.joint(self.name, query, key, value, _attend(self), **_with_call(probe_call))
            out = out.flatten(2, 3).to(query.dtype)
            return attn.to_out(torch.cat([out, attn.mlp_act_fn(mlp)], dim=-1))

    return HookedFlux2Processor, HookedFlux2ParallelProcessor


def joint_key_mask(text_mask: torch.Tensor | None, image_tokens: int) -> torch.Tensor | None:
    """(B, S) boolean key mask ``[text mask | ones]`` (Qwen-Image's processor's), or None without a text mask."""
    if text_mask is None:
        return None
    text_mask = text_mask.bool()
    return torch.cat([text_mask, text_mask.new_ones(text_mask.shape[0], image_tokens)], dim=1)


# Restates: diffusers.models.transformers.transformer_qwenimage.QwenDoubleStreamAttnProcessor2_0 @ diffusers==0.42.1
def qwen_joint_qkv(attn, hidden_states, encoder_hidden_states, image_rotary_emb=None):
    """q, k, v (B, S, H, D) of the joint sequence ``[text | image]`` as ``QwenDoubleStreamAttnProcessor2_0.__call__``
    makes them (diffusers 0.42.1, transformer_qwenimage.py): separate projections per stream, QK RMSNorm
    (where the layer has one), RoPE with image and text frequencies, text first."""
    from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen

    head_dim = attn.inner_dim // attn.heads

    def normed(norm, tensor):
        return tensor if norm is None else norm(tensor)

    img_q, img_k, img_v = (_heads(proj(hidden_states), head_dim) for proj in (attn.to_q, attn.to_k, attn.to_v))
    txt_q, txt_k, txt_v = (
        _heads(proj(encoder_hidden_states), head_dim) for proj in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
    )
    img_q, img_k = normed(attn.norm_q, img_q), normed(attn.norm_k, img_k)
    txt_q, txt_k = normed(attn.norm_added_q, txt_q), normed(attn.norm_added_k, txt_k)
    if image_rotary_emb is not None:
        img_freqs, txt_freqs = image_rotary_emb
        img_q, img_k = (
            apply_rotary_emb_qwen(img_q, img_freqs, use_real=False),
            apply_rotary_emb_qwen(img_k, img_freqs, use_real=False),
        )
        txt_q, txt_k = (
            apply_rotary_emb_qwen(txt_q, txt_freqs, use_real=False),
            apply_rotary_emb_qwen(txt_k, txt_freqs, use_real=False),
        )
    return torch.cat([txt_q, img_q], dim=1), torch.cat([txt_k, img_k], dim=1), torch.cat([txt_v, img_v], dim=1)


# Restates: diffusers.models.transformers.transformer_qwenimage.QwenDoubleStreamAttnProcessor2_0 @ diffusers==0.42.1
def _qwen_processor():
    from diffusers.models.transformers.transformer_qwenimage import QwenDoubleStreamAttnProcessor2_0

    class HookedQwenProcessor(QwenDoubleStreamAttnProcessor2_0):
        """``QwenDoubleStreamAttnProcessor2_0`` with an attention hook; the layer's attention call carries
        its key mask ``[text mask | ones]`` (padded text keys get zero probability, in measurements too)."""

        def __init__(self, hook: AttentionHook, name: str):
            super().__init__()
            self.hook, self.name = hook, name

        def __call__(
            self,
            attn,
            hidden_states,
            encoder_hidden_states=None,
            encoder_hidden_states_mask=None,
            attention_mask=None,
            image_rotary_emb=None,
            probe_call: ProbeCall | None = None,
        ):
            if encoder_hidden_states is None:
                raise ValueError(f"{self.name}: the Qwen-Image processor needs the text stream")
            if attention_mask is not None:
                raise ValueError(
                    f"{self.name}: the Qwen-Image processor takes encoder_hidden_states_mask, not an attention_mask"
                )
            query, key, value = qwen_joint_qkv(attn, hidden_states, encoder_hidden_states, image_rotary_emb)
            mask = joint_key_mask(encoder_hidden_states_mask, hidden_states.shape[1])
            attend = _attend(self, None if mask is None else mask[:, None, None, :])
            out = self.hook.joint(self.name, query, key, value, attend, **_with_call(probe_call))
            # The stock tail: text and image split, image through to_out (and its dropout), text through to_add_out.
            out = out.to(query.dtype).flatten(2, 3)
            text_tokens = encoder_hidden_states.shape[1]
            text_out, image_out = out[:, :text_tokens], out[:, text_tokens:]
            image_out = attn.to_out[0](image_out.contiguous())
            if len(attn.to_out) > 1:
                image_out = attn.to_out[1](image_out)
            return image_out, attn.to_add_out(text_out.contiguous())

    return HookedQwenProcessor


# Restates: diffusers.models.attention_processor.AttnProcessor.__call__ @ diffusers==0.42.1
class HookedCrossAttnProcessor:
    """diffusers' classic attention computation (``AttnProcessor``, attention_processor.py) with explicit
    probabilities, shown to the hook (``cross``) before they are used; the output is what the stock
    processor computes (tested against it)."""

    def __init__(self, hook: AttentionHook, name: str):
        self.hook, self.name = hook, name

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        *args,
        probe_call: ProbeCall | None = None,
        **kwargs,
    ):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        spatial = hidden_states.ndim == 4
        if spatial:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, keys = context.shape[0], context.shape[1]
        attention_mask = attn.prepare_attention_mask(attention_mask, keys, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)  # (B * heads, queries, keys)
        self.hook.cross(
            self.name, probs.view(batch, attn.heads, probs.shape[1], probs.shape[2]), **_with_call(probe_call)
        )
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if spatial:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


# ---------------------------------------------------------------------------------------------- block maps
CROSS_ATTENTION = "attn2"  # diffusers' name of the text cross-attention inside a UNet transformer block
_UNET_STAGES = {"down_blocks.": "down", "mid_block.": "mid", "up_blocks.": "up"}


def compile_blocks(model, backend: str = "inductor", **options) -> int:
    """Regional compilation: every attention block of the denoiser compiled in place (``nn.Module.compile``,
    i.e. ``torch.compile`` of its forward), the rest eager. Compiling blocks, not the whole model, keeps what
    the methods rely on: processors swapped in and out by the hooks (a new processor is a guard, compiled
    once), ``StopForward`` between blocks, and one compiled graph reused by every block of a shape (the
    compile cost of one block, not of the model). Returns the number of modules compiled."""
    done: set[int] = set()
    for block in block_map(model).blocks.values():
        if id(block.module) not in done:
            block.module.compile(backend=backend, **options)
            done.add(id(block.module))
    return len(done)


def block_map(model) -> BlockMap:
    """The block map of a diffusers denoiser (or of anything holding one as ``.transformer`` / ``.unet``)."""
    model = _denoiser_of(model)
    kind = type(model).__name__
    if kind in ("FluxTransformer2DModel", "Flux2Transformer2DModel"):
        blocks = [
            Block(f"double.{i}", b, f"transformer_blocks.{i}.attn.processor")
            for i, b in enumerate(model.transformer_blocks)
        ]
        blocks += [
            Block(f"single.{i}", b, f"single_transformer_blocks.{i}.attn.processor")
            for i, b in enumerate(model.single_transformer_blocks)
        ]
        if kind == "FluxTransformer2DModel":
            return BlockMap(model, blocks, _flux_processor())
        double, parallel = _flux2_processors()
        return BlockMap(
            model, blocks, lambda hook, name: (double if name.startswith("double") else parallel)(hook, name)
        )
    if kind == "QwenImageTransformer2DModel":
        # One stream of dual-stream blocks: named "double"; a relative "single:..." range means the same depth of it.
        blocks = [
            Block(f"double.{i}", b, f"transformer_blocks.{i}.attn.processor")
            for i, b in enumerate(model.transformer_blocks)
        ]
        return BlockMap(model, blocks, _qwen_processor(), aliases={"single": "double"})
    if kind == "UNet2DConditionModel":
        streams: dict[str, list[str]] = {s: [] for s in _UNET_STAGES.values()}
        for key in model.attn_processors:
            if key.endswith(f".{CROSS_ATTENTION}.processor"):
                streams[next(s for p, s in _UNET_STAGES.items() if key.startswith(p))].append(key)
        modules = dict(model.named_modules())
        blocks = [
            Block(f"{s}.{i}", modules[key[: -len(".processor")]], key)
            for s, keys in streams.items()
            for i, key in enumerate(keys)
        ]
        return BlockMap(model, blocks, HookedCrossAttnProcessor)
    raise TypeError(
        f"no block map for {kind}: the hooked architectures are FLUX.1, FLUX.2, Qwen-Image and UNet cross-attention"
    )


def _denoiser_of(model):
    for attr in ("transformer", "unet"):
        inner = getattr(model, attr, None)
        if isinstance(inner, torch.nn.Module):
            return inner
    return model


__all__ = [
    "PROBE_KWARG",
    "Block",
    "BlockMap",
    "DropsProbeCall",
    "HookedCrossAttnProcessor",
    "block_map",
    "flux_qkv",
    "joint_key_mask",
    "probe_kwargs",
    "qwen_joint_qkv",
    "resolve_blocks",
    "swapped_processors",
]
