"""Machinery shared by every editor whose denoiser is diffusers' ``FluxTransformer2DModel`` (FLUX.1-Kontext,
Step1X-Edit): the probed attention processor, block naming, the probe's lifetime, early stopping, and
the image-token plumbing (VAE latents, 2x2 packing, position ids, the joint call on [target | context]).

An editor family built on this DiT subclasses ``FluxDiTEditor`` and supplies its conditioning
(``condition`` and ``_text_inputs``), its geometry and its real pipeline (``edit``).
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch

from ..attention import ContextShareProbe, swapped_processors
from .base import Condition, Layout, edit_images, enable_vae_memory_savers, rectified_flow_pair, resolve_blocks, to_batch, to_vae_input, vae_pixels

try:  # diffusers internals used by the probed processor (read, not copied: see docs/ARCHITECTURE.md)
    from diffusers.models.attention_dispatch import dispatch_attention_fn
    from diffusers.models.embeddings import apply_rotary_emb
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, _get_qkv_projections
except ImportError as exc:  # pragma: no cover - only with an incompatible diffusers
    raise ImportError(f"decontext needs diffusers with FluxAttnProcessor (tested with 0.42.1): {exc}") from exc


def joint_qkv(attn, hidden_states, encoder_hidden_states=None, image_rotary_emb=None):
    """q, k, v (B, S, H, D) of the joint sequence exactly as ``FluxAttnProcessor`` makes them: projections,
    QK RMSNorm, text tokens first in double-stream blocks, then RoPE. (diffusers offers no hook between
    RoPE and the attention call, so our processors restate this part.)"""
    query, key, value, text_query, text_key, text_value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
    query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))
    key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
    value = value.unflatten(-1, (-1, attn.head_dim))
    if attn.added_kv_proj_dim is not None:
        # Double-stream block: text tokens come first in the joint sequence.
        query = torch.cat([attn.norm_added_q(text_query.unflatten(-1, (-1, attn.head_dim))), query], dim=1)
        key = torch.cat([attn.norm_added_k(text_key.unflatten(-1, (-1, attn.head_dim))), key], dim=1)
        value = torch.cat([text_value.unflatten(-1, (-1, attn.head_dim)), value], dim=1)
    if image_rotary_emb is not None:
        query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
        key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
    return query, key, value


def joint_output(attn, out: torch.Tensor, encoder_hidden_states=None):
    """The stock processor's tail: (B, S, H, D) attention output -> the single block's (B, S, H*D), or
    a double block's (image, text) outputs through their projections."""
    out = out.flatten(2, 3)
    if encoder_hidden_states is None:
        return out
    text_out, image_out = out.split_with_sizes([encoder_hidden_states.shape[1], out.shape[1] - encoder_hidden_states.shape[1]], dim=1)
    image_out = attn.to_out[1](attn.to_out[0](image_out.contiguous()))
    return image_out, attn.to_add_out(text_out.contiguous())


class JointAttnProcessor(FluxAttnProcessor):
    """Base of our FLUX processors that restate the joint attention (``joint_qkv`` ... ``joint_output``):
    ``_attend`` is the stock processor's attention call, through diffusers' dispatcher, so a user's
    attention backend is kept."""

    def _attend(self, query, key, value, scale=None, attn_mask=None):
        return dispatch_attention_fn(query, key, value, attn_mask=attn_mask, scale=scale, backend=self._attention_backend, parallel_config=self._parallel_config)


class ProbedFluxAttnProcessor(JointAttnProcessor):
    """``FluxAttnProcessor`` that also reports the target->context attention share to a probe.

    The layer output equals the stock processor's; the share uses the same q and k (after RMSNorm and
    RoPE), measured inside the layer's own attention call (``attention_with_share``), or by a
    separate indicator call in the last probed layer, whose attention output is never needed.
    """

    def __init__(self, probe: ContextShareProbe, name: str):
        super().__init__()
        self.probe = probe
        self.name = name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if attention_mask is not None:
            # Neither Kontext nor Step1X passes one; a mask would change which keys the share is taken over.
            raise NotImplementedError(f"{self.name}: the context-share probe does not support attention masks")
        query, key, value = joint_qkv(attn, hidden_states, encoder_hidden_states, image_rotary_emb)
        if self.probe.stop_at == self.name:
            # Only this layer's q and k matter to the loss: its attention, MLP and the rest are skipped.
            self.probe.record(self.name, query, key)
            raise _StopForward
        out = self.probe.attend(self.name, query, key, value, self._attend)
        return joint_output(attn, out.to(query.dtype), encoder_hidden_states)


class _StopForward(Exception):
    """Raised on the first block a method does not need: the rest is never run."""


def vae_latents(vae, x: torch.Tensor) -> torch.Tensor:
    """Posterior MODE, then ``(z - shift) * scale`` (``FluxKontextPipeline._encode_vae_image``). x in [-1, 1]."""
    latents = vae.encode(x).latent_dist.mode()
    return (latents - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor  # SD-style VAEs: no shift


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latents -> (B, H/2 * W/2, 4C) tokens (the pipeline's own 2x2 packing)."""
    from diffusers import FluxKontextPipeline

    batch, channels, lat_h, lat_w = latents.shape
    return FluxKontextPipeline._pack_latents(latents, batch, channels, lat_h, lat_w)


def image_ids(lat_h: int, lat_w: int, axis0: int = 0, offset: int = 0, device=None, dtype=torch.float32) -> torch.Tensor:
    """Position ids (N, 3) = (axis0, row + offset, col + offset) of a (lat_h, lat_w) latent's packed tokens."""
    from diffusers import FluxKontextPipeline

    ids = FluxKontextPipeline._prepare_latent_image_ids(1, lat_h // 2, lat_w // 2, device or "cpu", dtype)
    ids[..., 0] = axis0
    if offset:
        ids[..., 1:] += offset
    return ids


def joint_velocity(transformer, target, target_ids, context_tokens, context_ids, embeds, pooled, timestep, guidance=None):
    """One transformer call on ``[target | context]`` image tokens (text ids all zero, as both Kontext
    and Step1X make them); returns the prediction for the target tokens. Shared by the attack path and
    the toy editor's training, so both run the same plumbing."""
    out = transformer(
        hidden_states=torch.cat([target, context_tokens], dim=1),
        encoder_hidden_states=embeds,
        pooled_projections=pooled,
        timestep=timestep,
        img_ids=torch.cat([target_ids, context_ids], dim=0),
        txt_ids=torch.zeros(embeds.shape[1], 3, device=embeds.device, dtype=embeds.dtype),
        guidance=guidance,
        return_dict=False,
    )[0]
    return out[:, : target.shape[1]]


def unpack_latents(tokens: torch.Tensor, lat_h: int, lat_w: int) -> torch.Tensor:
    """(B, N, 4C) packed tokens -> (B, C, lat_h, lat_w) latents (the pipeline's own unpacking)."""
    from diffusers import FluxKontextPipeline

    # _unpack_latents takes pixel sizes and the VAE scale factor; with scale 1 latent sizes pass through.
    return FluxKontextPipeline._unpack_latents(tokens, lat_h, lat_w, 1)


class FluxDiTEditor:
    """Base of the editors built on ``FluxTransformer2DModel`` + a FLUX-style VAE.

    Subclasses set ``transformer``, ``vae``, ``device``, ``dtype`` and implement ``condition`` and
    ``_text_inputs(condition, sigma, batch) -> (embeds, pooled, guidance)``. ``Condition.extra`` must
    hold ``context_ids`` and ``target_ids`` (each (N, 3)).
    """

    family = "flux_dit"
    min_resolution = 16  # the stock checkpoints' pixel multiple (VAE x8, 2x2 packing): checked before loading
    text_mask_key = "text_mask"  # the Condition.extra entry marking the prompt's tokens (``_text_mask``)
    capabilities = frozenset({"context_attention", "text_cross_attention", "diffusion_loss", "vae", "text_embeddings", "sampling"})
    recommended: dict

    def _init_probe_state(self) -> None:
        self._active_probe: ContextShareProbe | None = None
        self._probed_blocks: list[str] = []
        self._probe_text = False

    # ------------------------------------------------------------------ structure
    @property
    def depths(self) -> dict[str, int]:
        return {"double": len(self.transformer.transformer_blocks), "single": len(self.transformer.single_transformer_blocks)}

    @property
    def block_names(self) -> list[str]:
        return [f"{stream}.{i}" for stream, depth in self.depths.items() for i in range(depth)]

    def resolve_blocks(self, spec) -> list[str]:
        return resolve_blocks(spec, self.depths)

    def _block(self, name: str) -> torch.nn.Module:
        stream, index = name.split(".")
        blocks = self.transformer.transformer_blocks if stream == "double" else self.transformer.single_transformer_blocks
        return blocks[int(index)]

    def _processor_key(self, name: str) -> str:
        stream, index = name.split(".")
        prefix = "transformer_blocks" if stream == "double" else "single_transformer_blocks"
        return f"{prefix}.{index}.attn.processor"

    @property
    def multiple_of(self) -> int:
        """Pixel sizes must be multiples of this (VAE downsampling x 2x2 packing)."""
        return (2 ** (len(self.vae.config.block_out_channels) - 1)) * 2

    def enable_gradient_checkpointing(self) -> None:
        """Recompute block activations in backward: much less memory per PGD step for ~30% more time."""
        self.transformer.enable_gradient_checkpointing()

    def enable_vae_memory_savers(self, tiling: bool = False, slicing: bool = False) -> None:
        enable_vae_memory_savers(self.vae, tiling, slicing)

    # ------------------------------------------------------------------ image tokens
    def _to_working(self, pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> the VAE's input range [-1, 1] at ``size`` (bicubic, antialiased)."""
        return to_vae_input(pixels, size, self.multiple_of, self.device, self.vae.dtype)

    def image_latents(self, pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, N, 64) packed latent tokens: VAE posterior mode, ``(z - shift) * scale``, 2x2 packing."""
        return pack_latents(vae_latents(self.vae, self._to_working(pixels, size))).to(self.dtype)

    def latent_size(self, size: tuple[int, int]) -> tuple[int, int]:
        factor = self.multiple_of // 2
        return size[0] // factor, size[1] // factor

    def noise_like(self, condition: Condition, generator: torch.Generator) -> torch.Tensor:
        """Noise is drawn on the CPU from ``generator`` so runs are reproducible across devices."""
        noise = torch.randn(condition.latents.shape, generator=generator, dtype=torch.float32)
        return noise.to(self.device, self.dtype)

    def flow_pair(self, condition: Condition, noise: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rectified_flow_pair(condition.latents, noise, sigma)

    def denoise(self, x_t: torch.Tensor, sigma: float, sigma_next: float, condition: Condition) -> torch.Tensor:
        """Euler step of the rectified flow: ``x + (sigma_next - sigma) * v`` (the pipelines' scheduler step)."""
        velocity = self.velocity(x_t, torch.tensor(float(sigma)), condition)
        return x_t + (float(sigma_next) - float(sigma)) * velocity

    def decode(self, latents: torch.Tensor, condition: Condition) -> torch.Tensor:
        """Packed clean tokens -> pixels in [0, 1]: unpack, undo ``(z - shift) * scale``, VAE decode."""
        lat_h, lat_w = self.latent_size(condition.extra["size"])
        return vae_pixels(self.vae, unpack_latents(latents, lat_h, lat_w) / self.vae.config.scaling_factor + (self.vae.config.shift_factor or 0.0))

    # ------------------------------------------------------------------ probe
    def _probed_processors(self, probe: ContextShareProbe, blocks: Sequence[str]) -> dict:
        return {self._processor_key(name): ProbedFluxAttnProcessor(probe, name) for name in blocks}

    @contextlib.contextmanager
    def probe(self, blocks: Sequence[str], text: bool = False):
        """Probed processors on ``blocks`` for the duration of the ``with`` (forward AND backward: activation
        checkpointing re-runs blocks during backward and must see the same processors); the stock
        processors and an unset stop point afterwards, whatever happens inside. With ``text``, every
        forward also records ``probe.text_maps`` (see ``text_attention``)."""
        if self._active_probe is not None:
            raise RuntimeError("a probe is already installed on this editor; probes do not nest "
                               "(DeContext and DANP cannot share one MM-DiT editor in one composition)")
        blocks = list(blocks)
        unknown = [b for b in blocks if b not in self.block_names]
        if unknown or not blocks:
            raise ValueError(f"cannot probe {unknown or 'no blocks'}: this model's blocks are {self.depths}")
        probe = ContextShareProbe()
        with swapped_processors(self.transformer, self._probed_processors(probe, blocks)):
            self._active_probe, self._probed_blocks, self._probe_text = probe, blocks, text
            try:
                yield probe
            finally:
                self._active_probe, self._probed_blocks, self._probe_text = None, [], False

    def text_attention(self, blocks: Sequence[str]):
        """``with editor.text_attention(blocks) as probe:`` records, in every forward, ``probe.text_maps[name]``
        (B, target tokens): per target-image query, the attention mass the joint attention of that block
        puts on the prompt's own tokens (``_text_mask``), mean over heads; exact, from the same q and k as
        the layer (after RMSNorm and RoPE, softmax over all keys). The layer outputs stay stock."""
        return self.probe(blocks, text=True)

    def _text_mask(self, condition: Condition, batch: int) -> torch.Tensor:
        """(batch, text tokens) 1 on the tokens that carry the prompt, 0 on padding and special tokens:
        the condition's entry named ``text_mask_key``."""
        return to_batch(condition.extra[self.text_mask_key].float(), batch)

    @contextlib.contextmanager
    def _stop_after(self, block: str | None):
        names = self.block_names
        if block is None or block == names[-1]:
            yield
            return
        if block not in names:
            raise ValueError(f"stop_after={block!r} is not a block of this model ({self.depths})")
        following = self._block(names[names.index(block) + 1])

        def stop(module, args, kwargs):
            raise _StopForward

        handle = following.register_forward_pre_hook(stop, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    def _edit_images(self, image, prompts: Sequence[str], seeds: Sequence[int]) -> list:
        """The checks every ``edit()`` makes (``base.edit_images``)."""
        return edit_images(image, prompts, seeds, self._active_probe is not None)

    # ------------------------------------------------------------------ transformer
    def _text_inputs(self, condition: Condition, sigma: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def _batched(self, x_t: torch.Tensor, sigma, condition: Condition) -> tuple[int, torch.Tensor, torch.Tensor]:
        """(batch, x_t, sigma) of a velocity call: the batch is the larger of the draw's and the
        condition's, sigma a (batch,) tensor in the model's dtype."""
        batch = max(x_t.shape[0], condition.batch)
        sigma = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1)
        sigma = (sigma.expand(batch) if sigma.numel() == 1 else sigma).to(self.device, self.dtype)
        return batch, to_batch(x_t, batch), sigma

    def _arm_probe(self, condition: Condition, layout: Layout, batch: int, stop_after: str | None, text_mask: bool = True) -> Layout:
        """Check the tokens against the condition's layout and tell an installed probe this call's layout,
        where to stop and (``text_mask``, where the probe reads text attention) which text tokens count."""
        if layout != condition.layout:
            raise ValueError(f"tokens {layout} do not match the condition's layout {condition.layout}")
        probe = self._active_probe
        if probe is not None:
            probe.layout = layout
            # stop_at stays set until the probe context exits: activation checkpointing re-runs the
            # stopped block during backward, and the re-run must take the same (measure-only) path.
            probe.stop_at = stop_after if stop_after in self._probed_blocks else None
            probe.text_mask = self._text_mask(condition, batch) if (self._probe_text and text_mask) else None
        return layout

    def velocity(self, x_t: torch.Tensor, sigma: torch.Tensor, condition: Condition, stop_after: str | None = None) -> torch.Tensor | None:
        """One transformer pass on ``[x_t | context]`` tokens; the prediction for the target tokens.

        Args:
            x_t: (B, N, C) noisy target tokens (B = condition.batch, or 1 to share one draw).
            sigma: (B,) or scalar noise level in [0, 1] (the model multiplies by 1000 itself).
            stop_after: name of the last block needed; the blocks after it are skipped, and when that
                block is probed it ends right after its probe (its attention output is not needed).
        Returns:
            (B, N, C) velocity, or None when stopped early.
        """
        batch, x_t, sigma = self._batched(x_t, sigma, condition)
        context = to_batch(condition.latents, batch)
        embeds, pooled, guidance = self._text_inputs(condition, sigma, batch)
        layout = self._arm_probe(condition, Layout(text=embeds.shape[1], target=x_t.shape[1], context=context.shape[1]), batch, stop_after)
        try:
            with self._stop_after(stop_after):
                return joint_velocity(
                    self.transformer, x_t.to(self.dtype), condition.extra["target_ids"], context,
                    condition.extra["context_ids"], embeds, pooled, sigma, guidance,
                )
        except _StopForward:
            return None
