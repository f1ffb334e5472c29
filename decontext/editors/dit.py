"""What every joint-attention DiT editor shares (FLUX.1-Kontext, Step1X-Edit, FLUX.2, Qwen-Image-Edit),
and the FLUX.1 transformer's image-token plumbing that FLUX.1-Kontext and Step1X-Edit share.

``JointDiTEditor``: the block map of the editor's transformer (``blocks.block_map``), the probe's
lifetime (probed blocks hooked for the length of a ``with``), early stopping, the velocity prologue
(batching, sigma, the layout check, the call's probe record), the rectified-flow pair and Euler step. A
family on such a DiT subclasses it and supplies its conditioning (``condition``), its image tokens
(``image_latents``, ``decode``, ``multiple_of``, ``latent_size``), its ``probed_velocity``, geometry and
real pipeline (``edit``).

``Flux1DiTEditor``: a ``JointDiTEditor`` on diffusers' ``FluxTransformer2DModel`` with a FLUX VAE: VAE
latents, 2x2 packing, position ids and the joint call on ``[target | context]`` (FLUX.1-Kontext,
Step1X-Edit; its subclasses write ``condition`` and ``_text_inputs``).
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch

from ..attention import ContextShareProbe, ProbeCall, Probed, StopForward
from .base import (
    Condition,
    Layout,
    draw_noise,
    edit_images,
    enable_vae_memory_savers,
    rectified_flow_pair,
    to_batch,
    to_vae_input,
    vae_pixels,
)
from .blocks import BlockMap, block_map, compile_blocks, probe_kwargs


# Restates: diffusers.pipelines.flux.pipeline_flux_kontext.FluxKontextPipeline._encode_vae_image @ diffusers==0.42.1
def vae_latents(vae, x: torch.Tensor) -> torch.Tensor:
    """Posterior MODE, then ``(z - shift) * scale`` (``FluxKontextPipeline._encode_vae_image``). x in [-1, 1]."""
    latents = vae.encode(x).latent_dist.mode()
    return (latents - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor  # SD-style VAEs: no shift


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latents -> (B, H/2 * W/2, 4C) tokens (the pipeline's own 2x2 packing)."""
    from diffusers import FluxKontextPipeline

    batch, channels, lat_h, lat_w = latents.shape
    return FluxKontextPipeline._pack_latents(latents, batch, channels, lat_h, lat_w)


def image_ids(
    lat_h: int, lat_w: int, axis0: int = 0, offset: int = 0, device=None, dtype=torch.float32
) -> torch.Tensor:
    """Position ids (N, 3) = (axis0, row + offset, col + offset) of a (lat_h, lat_w) latent's packed tokens."""
    from diffusers import FluxKontextPipeline

    ids = FluxKontextPipeline._prepare_latent_image_ids(1, lat_h // 2, lat_w // 2, device or "cpu", dtype)
    ids[..., 0] = axis0
    if offset:
        ids[..., 1:] += offset
    return ids


def joint_velocity(
    transformer,
    target,
    target_ids,
    context_tokens,
    context_ids,
    embeds,
    pooled,
    timestep,
    guidance=None,
    attention_kwargs: dict | None = None,
):
    """One transformer call on ``[target | context]`` image tokens (text ids all zero, as both Kontext
    and Step1X make them); returns the prediction for the target tokens. Shared by the attack path and
    the toy editor's training, so both run the same plumbing. ``attention_kwargs``: the model's
    ``joint_attention_kwargs`` (a probed call's record, ``blocks.probe_kwargs``)."""
    out = transformer(
        hidden_states=torch.cat([target, context_tokens], dim=1),
        encoder_hidden_states=embeds,
        pooled_projections=pooled,
        timestep=timestep,
        img_ids=torch.cat([target_ids, context_ids], dim=0),
        txt_ids=torch.zeros(embeds.shape[1], 3, device=embeds.device, dtype=embeds.dtype),
        guidance=guidance,
        joint_attention_kwargs=attention_kwargs,
        return_dict=False,
    )[0]
    return out[:, : target.shape[1]]


def unpack_latents(tokens: torch.Tensor, lat_h: int, lat_w: int) -> torch.Tensor:
    """(B, N, 4C) packed tokens -> (B, C, lat_h, lat_w) latents (the pipeline's own unpacking)."""
    from diffusers import FluxKontextPipeline

    # _unpack_latents takes pixel sizes and the VAE scale factor; with scale 1 latent sizes pass through.
    return FluxKontextPipeline._unpack_latents(tokens, lat_h, lat_w, 1)


class JointDiTEditor:
    """Base of the editors whose denoiser is a joint-attention DiT (text, target and context tokens in
    one attention sequence).

    Subclasses set ``transformer``, ``vae``, ``device``, ``dtype`` and implement ``condition``,
    ``probed_velocity`` (calling ``_batched`` and ``_probe_call`` first; ``velocity`` is its prediction),
    ``image_latents``, ``decode``, ``multiple_of`` and ``latent_size``.
    """

    min_resolution = 16  # the stock checkpoints' pixel multiple (VAE x8, 2x2 packing): checked before loading
    text_mask_key = "text_mask"  # the Condition.extra entry marking the prompt's tokens (``_text_mask``)
    capabilities = frozenset(
        {"context_attention", "text_cross_attention", "diffusion_loss", "vae", "text_embeddings", "sampling"}
    )
    recommended: dict

    def _init_probe_state(self) -> None:
        # The installed probe (the hook on its blocks, which blocks, whether text maps are read); what
        # one call measures travels in that call's ProbeCall, not here.
        self._active_probe: ContextShareProbe | None = None
        self._probed_blocks: list[str] = []
        self._probe_text = False
        self._blocks: BlockMap | None = None

    # ------------------------------------------------------------------ structure
    @property
    def blocks(self) -> BlockMap:
        """The transformer's attention blocks (name -> module, processor key), read from the model once."""
        if self._blocks is None or self._blocks.model is not self.transformer:
            self._blocks = block_map(self.transformer)
        return self._blocks

    @property
    def depths(self) -> dict[str, int]:
        return self.blocks.depths

    @property
    def block_names(self) -> list[str]:
        return self.blocks.names

    def resolve_blocks(self, spec) -> list[str]:
        return self.blocks.resolve(spec)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute block activations in backward: much less memory per PGD step for ~30% more time."""
        self.transformer.enable_gradient_checkpointing()

    def compile_blocks(self, backend: str = "inductor") -> int:
        """``torch.compile`` each attention block of the denoiser in place (``blocks.compile_blocks``)."""
        return compile_blocks(self.transformer, backend)

    def enable_vae_memory_savers(self, tiling: bool = False, slicing: bool = False) -> None:
        enable_vae_memory_savers(self.vae, tiling, slicing)

    # ------------------------------------------------------------------ image tokens
    def _to_working(self, pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> the VAE's input range [-1, 1] at ``size`` (bicubic, antialiased)."""
        return to_vae_input(pixels, size, self.multiple_of, self.device, self.vae.dtype)

    def noise_like(self, condition: Condition, generators) -> torch.Tensor:
        return draw_noise(condition.latents.shape, generators, self.device, self.dtype)

    def flow_pair(
        self, condition: Condition, noise: torch.Tensor, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return rectified_flow_pair(condition.latents, noise, sigma)

    def denoise(self, x_t: torch.Tensor, sigma: float, sigma_next: float, condition: Condition) -> torch.Tensor:
        """Euler step of the rectified flow: ``x + (sigma_next - sigma) * v`` (the pipelines' scheduler step)."""
        velocity = self.velocity(x_t, torch.tensor(float(sigma)), condition)
        return x_t + (float(sigma_next) - float(sigma)) * velocity

    # ------------------------------------------------------------------ probe
    @contextlib.contextmanager
    def probe(self, blocks: Sequence[str], text: bool = False):
        """Probed processors on ``blocks`` for the duration of the ``with`` (forward AND backward: activation
        checkpointing re-runs blocks during backward and must see the same processors); the stock
        processors afterwards, whatever happens inside. Inside, ``probed_velocity`` returns each call's
        shares (with ``text``, also its text maps: see ``text_attention``). Yields the probe's hook, whose
        one setting is ``fused``."""
        if self._active_probe is not None:
            raise RuntimeError(
                "a probe is already installed on this editor; probes do not nest "
                "(DeContext and DANP cannot share one MM-DiT editor in one composition)"
            )
        blocks = list(blocks)
        with self.blocks.probing(blocks) as probe:
            self._active_probe, self._probed_blocks, self._probe_text = probe, blocks, text
            try:
                yield probe
            finally:
                self._active_probe, self._probed_blocks, self._probe_text = None, [], False

    def text_attention(self, blocks: Sequence[str]):
        """Inside ``with editor.text_attention(blocks):``, ``probed_velocity`` also returns ``text_maps[name]``
        (B, target tokens): per target-image query, the attention mass the joint attention of that block
        puts on the prompt's own tokens (``_text_mask``), mean over heads; exact, from the same q and k as
        the layer (after RMSNorm and RoPE, softmax over all keys). The layer outputs stay stock."""
        return self.probe(blocks, text=True)

    def _text_mask(self, condition: Condition, batch: int) -> torch.Tensor:
        """(batch, text tokens) 1 on the tokens that carry the prompt, 0 on padding and special tokens:
        the condition's entry named ``text_mask_key``."""
        return to_batch(condition.extra[self.text_mask_key].float(), batch)

    def _edit_images(self, image, prompts: Sequence[str], seeds: Sequence[int]) -> list:
        """The checks every ``edit()`` makes (``base.edit_images``)."""
        return edit_images(image, prompts, seeds, self._active_probe is not None)

    # ------------------------------------------------------------------ transformer
    def _batched(self, x_t: torch.Tensor, sigma, condition: Condition) -> tuple[int, torch.Tensor, torch.Tensor]:
        """(batch, x_t, sigma) of a velocity call: the batch is the larger of the draw's and the
        condition's, sigma a (batch,) tensor in the model's dtype."""
        batch = max(x_t.shape[0], condition.batch)
        sigma = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1)
        sigma = (sigma.expand(batch) if sigma.numel() == 1 else sigma).to(self.device, self.dtype)
        return batch, to_batch(x_t, batch), sigma

    def velocity(
        self, x_t: torch.Tensor, sigma: torch.Tensor, condition: Condition, stop_after: str | None = None
    ) -> torch.Tensor | None:
        """``probed_velocity``'s prediction (None when stopped early); what a probe measured is dropped."""
        return self.probed_velocity(x_t, sigma, condition, stop_after).velocity

    def probed_velocity(
        self, x_t: torch.Tensor, sigma: torch.Tensor, condition: Condition, stop_after: str | None = None
    ) -> Probed:
        raise NotImplementedError

    def _probe_call(
        self, condition: Condition, layout: Layout, batch: int, stop_after: str | None, text_mask: bool = True
    ) -> ProbeCall | None:
        """Check the tokens against the condition's layout; under a probe, this call's record: its layout,
        where to stop and (``text_mask``, where the probe reads text attention) which text tokens count.
        None without a probe (the model gets its stock attention kwargs)."""
        if layout != condition.layout:
            raise ValueError(f"tokens {layout} do not match the condition's layout {condition.layout}")
        if self._active_probe is None:
            return None
        # The record rides in the blocks' arguments, which activation checkpointing keeps for the backward
        # re-run: a stopped block re-runs on the same measure-only path, as the recomputation must.
        return ProbeCall(
            layout,
            stop_at=stop_after if stop_after in self._probed_blocks else None,
            text_mask=self._text_mask(condition, batch) if (self._probe_text and text_mask) else None,
        )


class Flux1DiTEditor(JointDiTEditor):
    """A ``JointDiTEditor`` on ``FluxTransformer2DModel`` + a FLUX-style VAE (FLUX.1-Kontext, Step1X-Edit).

    Subclasses implement ``condition`` and ``_text_inputs(condition, sigma, batch) -> (embeds, pooled,
    guidance)``. ``Condition.extra`` must hold ``context_ids`` and ``target_ids`` (each (N, 3)) and ``size``.
    """

    @property
    def multiple_of(self) -> int:
        """Pixel sizes must be multiples of this (VAE downsampling x 2x2 packing)."""
        return (2 ** (len(self.vae.config.block_out_channels) - 1)) * 2

    def image_latents(self, pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, N, 64) packed latent tokens: VAE posterior mode, ``(z - shift) * scale``, 2x2 packing."""
        return pack_latents(vae_latents(self.vae, self._to_working(pixels, size))).to(self.dtype)

    def latent_size(self, size: tuple[int, int]) -> tuple[int, int]:
        factor = self.multiple_of // 2
        return size[0] // factor, size[1] // factor

    # Restates: diffusers.FluxKontextPipeline.__call__ @ diffusers==0.42.1  (its decoding of the final latents)
    def decode(self, latents: torch.Tensor, condition: Condition) -> torch.Tensor:
        """Packed clean tokens -> pixels in [0, 1]: unpack, undo ``(z - shift) * scale``, VAE decode."""
        lat_h, lat_w = self.latent_size(condition.extra["size"])
        return vae_pixels(
            self.vae,
            unpack_latents(latents, lat_h, lat_w) / self.vae.config.scaling_factor
            + (self.vae.config.shift_factor or 0.0),
        )

    def _text_inputs(
        self, condition: Condition, sigma: torch.Tensor, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def probed_velocity(
        self, x_t: torch.Tensor, sigma: torch.Tensor, condition: Condition, stop_after: str | None = None
    ) -> Probed:
        """One transformer pass on ``[x_t | context]`` tokens: the prediction for the target tokens and what
        an installed probe measured in it.

        Args:
            x_t: (B, N, C) noisy target tokens (B = condition.batch, or 1 to share one draw).
            sigma: (B,) or scalar noise level in [0, 1] (the model multiplies by 1000 itself).
            stop_after: name of the last block needed; the blocks after it are skipped, and when that
                block is probed it ends right after its probe (its attention output is not needed).
        Returns:
            ``Probed``: the (B, N, C) velocity (None when stopped early), the shares and text maps.
        """
        batch, x_t, sigma = self._batched(x_t, sigma, condition)
        context = to_batch(condition.latents, batch)
        embeds, pooled, guidance = self._text_inputs(condition, sigma, batch)
        call = self._probe_call(
            condition, Layout(text=embeds.shape[1], target=x_t.shape[1], context=context.shape[1]), batch, stop_after
        )
        try:
            with self.blocks.stop_after(stop_after):
                out = joint_velocity(
                    self.transformer,
                    x_t.to(self.dtype),
                    condition.extra["target_ids"],
                    context,
                    condition.extra["context_ids"],
                    embeds,
                    pooled,
                    sigma,
                    guidance,
                    probe_kwargs(call),
                )
        except StopForward:
            out = None
        return Probed.of(out, call)
