"""InstructPix2Pix (Brooks, Holynski, Efros, 2023) through diffusers' ``StableDiffusionInstructPix2PixPipeline``.

The editor DANP and TDAE were designed on, and a different family from the in-context DiTs: a
Stable Diffusion 1.5 UNet whose input is the noisy latent CONCATENATED ON CHANNELS with the source
image's latent (VAE posterior mode, unscaled, as the pipeline's ``prepare_image_latents``), a CLIP
text encoder read through cross-attention, noise (epsilon) prediction on a DDPM schedule, and two
guidance scales (text and image). There is no joint attention sequence and no context tokens:
methods that need target->context attention (DeContext) do not apply, and say so; the encoder attack
and the diffusion loss (``flow_loss``, here the noise-prediction loss) do; the cross-attention maps
image queries pay to text keys are exposed with ``text_attention(blocks)`` (what DANP reads).

Noise levels on the seam are in [0, 1] for every editor; here ``sigma`` is the DDPM timestep as a
fraction, t = round(sigma * (T - 1)) of the scheduler's T = 1000 training steps, and the "velocity"
of the seam is the UNet's own training target (epsilon, or v for v-prediction models).
"""

from __future__ import annotations

import contextlib
import gc
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..attention import ContextShareProbe, ProbeCall, Probed, StopForward
from . import FAMILIES, IP2P_IMAGE_GUIDANCE
from .base import (
    Condition,
    Layout,
    content_token_mask,
    draw_noise,
    edit_images,
    enable_vae_memory_savers,
    level_working_size,
    snap,
    to_batch,
    to_vae_input,
    vae_pixels,
)
from .blocks import BlockMap, block_map, compile_blocks, probe_kwargs
from .models import load_pipeline, model_folder, shipped_settings

SPEC = FAMILIES["instruct_pix2pix"]

DEFAULT_MODEL = "timbrooks/instruct-pix2pix"
IMAGE_GUIDANCE = IP2P_IMAGE_GUIDANCE
# The official edit CLI's sampler (= the pipeline's defaults): 100 steps, text guidance 7.5, 512 px.
EDIT_DEFAULTS = {"num_inference_steps": 100, "guidance_scale": 7.5, "resolution": 512}


def official_size(height: int, width: int, resolution: int, multiple: int) -> tuple[int, int]:
    """The official edit CLI's working size: scale the longer side to ``resolution``, round the shorter
    side UP to ``multiple``, then floor both sides to ``multiple`` (the CLI then crops to that aspect
    with ImageOps.fit; this editor resizes instead, so no pixel of the photo is dropped)."""
    factor = resolution / max(width, height)
    factor = math.ceil(min(width, height) * factor / multiple) * multiple / min(width, height)
    return snap(height * factor, multiple), snap(width * factor, multiple)


class InstructPix2PixEditor:
    """InstructPix2Pix (or any ``StableDiffusionInstructPix2PixPipeline`` folder, e.g. the tiny and toy ones)."""

    family = SPEC.name
    capabilities = SPEC.capabilities
    min_resolution = SPEC.min_resolution
    text_embedding_keys = ("embeds",)  # CLIP last hidden states

    def __init__(
        self,
        pipe,
        name: str = "instruct_pix2pix",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        image_guidance: float = IMAGE_GUIDANCE,
    ):
        self.pipe, self.name = pipe, name
        self.device, self.dtype = torch.device(device), dtype
        self.image_guidance = image_guidance
        self.recommended: dict = dict(EDIT_DEFAULTS)
        self._prompt_cache: dict[str, torch.Tensor] = {}
        self._mask_cache: dict[str, torch.Tensor] = {}
        self._active_probe: ContextShareProbe | None = None
        self._probed: list[str] = []
        self._blocks: BlockMap | None = None
        for module in (pipe.unet, pipe.vae):
            module.requires_grad_(False).eval()
            if module.dtype != dtype:
                module.to(dtype=dtype)
            module.to(self.device)
        if pipe.text_encoder is not None:
            pipe.text_encoder.requires_grad_(False).eval()
        alphas = pipe.scheduler.alphas_cumprod
        self._alphas_cumprod = torch.as_tensor(alphas, dtype=torch.float64)
        from diffusers import DDPMScheduler

        # The training-time noising of the UNet (its betas, from the pipeline's scheduler configuration):
        # diffusers' own add_noise / get_velocity give the flow_pair.
        self._training_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.prediction_type = pipe.scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(
                f"{name}: scheduler prediction_type {self.prediction_type!r} is not supported (epsilon or v_prediction)"
            )

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(
        cls, model: str, device: torch.device, dtype: torch.dtype, seed: int = 0, image_guidance: float | None = None
    ) -> "InstructPix2PixEditor":
        if model == "tiny":
            editor = cls.tiny(seed=seed, device=device, dtype=dtype)
        else:
            editor = cls.from_pretrained(model_folder(model, cls.family) or model, device=device, dtype=dtype)
            editor.name = model
        if image_guidance is not None:
            editor.image_guidance = image_guidance
        return editor

    @classmethod
    def from_pretrained(
        cls,
        id_or_dir: str | Path,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float16,
        **kwargs,
    ) -> "InstructPix2PixEditor":
        """Load a ``StableDiffusionInstructPix2PixPipeline`` folder or hub id, without its safety checker
        (the attack and the edits here need neither it nor its CLIP image model). A folder's
        ``decontext_toy.json`` overrides the editing defaults (``recommended``)."""
        from diffusers import StableDiffusionInstructPix2PixPipeline

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        folder = model_folder(str(id_or_dir), cls.family)
        pipe = load_pipeline(
            StableDiffusionInstructPix2PixPipeline,
            id_or_dir,
            dtype,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            **kwargs,
        )
        pipe.set_progress_bar_config(disable=True)
        editor = cls(pipe, name=str(id_or_dir), device=device, dtype=dtype)
        shipped = shipped_settings(folder)
        editor.recommended.update({k: shipped[k] for k in EDIT_DEFAULTS if k in shipped})
        editor.image_guidance = float(shipped.get("image_guidance_scale", editor.image_guidance))
        return editor

    @classmethod
    def tiny(
        cls, config=None, seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> "InstructPix2PixEditor":
        """A random-weight InstructPix2Pix built offline from config objects (see ``editors.tiny``)."""
        from diffusers import StableDiffusionInstructPix2PixPipeline

        from .tiny import TinyIP2PConfig, tiny_ip2p_components

        pipe = StableDiffusionInstructPix2PixPipeline(**tiny_ip2p_components(config or TinyIP2PConfig(), seed=seed))
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, name="tiny", device=device, dtype=dtype)

    # ------------------------------------------------------------------ structure
    @property
    def unet(self):
        return self.pipe.unet

    @property
    def vae(self):
        return self.pipe.vae

    @property
    def transformer(self):
        """The denoiser (named as on the DiT editors, for code that inspects processors)."""
        return self.pipe.unet

    @property
    def blocks(self) -> BlockMap:
        """The UNet's text cross-attention layers in execution order: ``down.i``, ``mid.0``, ``up.i``."""
        if self._blocks is None or self._blocks.model is not self.unet:
            self._blocks = block_map(self.unet)
        return self._blocks

    @property
    def depths(self) -> dict[str, int]:
        """Cross-attention layers per UNet stage, e.g. {"down": 6, "mid": 1, "up": 9} on SD 1.5."""
        return self.blocks.depths

    @property
    def block_names(self) -> list[str]:
        return self.blocks.names

    def resolve_blocks(self, spec) -> list[str]:
        """Cross-attention layers by specification: ``down``, ``mid``, ``up:0-2``, ``down.1`` ..."""
        return self.blocks.resolve(spec)

    @property
    def multiple_of(self) -> int:
        """Pixel sizes must be multiples of this (VAE downsampling x the UNet's downsamplings)."""
        vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return vae_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def enable_gradient_checkpointing(self) -> None:
        self.unet.enable_gradient_checkpointing()

    def compile_blocks(self, backend: str = "inductor") -> int:
        """``torch.compile`` each attention block of the denoiser in place (``blocks.compile_blocks``)."""
        return compile_blocks(self.unet, backend)

    def enable_vae_memory_savers(self, tiling: bool = False, slicing: bool = False) -> None:
        enable_vae_memory_savers(self.vae, tiling, slicing)

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """(N, 77, D) CLIP last hidden states of each prompt (what the pipeline feeds the UNet), cached."""
        prompts = list(prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            if self.pipe.text_encoder is None:
                raise RuntimeError(f"the text encoder was released; cannot encode new prompts such as {missing[0]!r}")
            encoder = self.pipe.text_encoder.to(self.device)
            try:
                for start in range(0, len(missing), 16):
                    chunk = missing[start : start + 16]
                    tokens = self.pipe.tokenizer(
                        chunk,
                        padding="max_length",
                        max_length=self.pipe.tokenizer.model_max_length,
                        truncation=True,
                        return_tensors="pt",
                    )
                    hidden = encoder(tokens.input_ids.to(self.device))[0]
                    for text, row in zip(chunk, hidden, strict=False):
                        self._prompt_cache[text] = row.to(self.dtype)
            finally:
                if self.device.type != "cpu":
                    encoder.to("cpu")
        return torch.stack([self._prompt_cache[p] for p in prompts])

    def text_masks(self, prompts: Sequence[str]) -> torch.Tensor:
        """(N, 77) 1 on the CLIP tokens that spell each prompt; 0 on BOS, EOS and padding."""
        prompts = list(prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._mask_cache]
        if missing:
            masks = content_token_mask(self.pipe.tokenizer, missing, self.pipe.tokenizer.model_max_length)
            self._mask_cache.update(zip(missing, masks, strict=False))
        return torch.stack([self._mask_cache[p] for p in prompts])

    def prepare(self, prompts: Sequence[str], release: bool = True) -> None:
        """Embed ``prompts`` and the empty prompt (the unconditional branch of the edits) once; with
        ``release``, drop the text encoder."""
        self.encode_prompts(list(prompts) + [""])
        if release:
            self.pipe.text_encoder = None
            gc.collect()

    # ------------------------------------------------------------------ geometry and latents
    def working_size(self, height: int, width: int, resolution: str | int = "auto") -> tuple[int, int]:
        """``auto``: the official edit CLI's size at 512 (longer side 512); ``native``: the image's size
        snapped down; N: the official rule with the longer side N."""
        return level_working_size(
            height, width, resolution, self.multiple_of, EDIT_DEFAULTS["resolution"], official_size
        )

    # Restates: diffusers.StableDiffusionInstructPix2PixPipeline.prepare_image_latents @ diffusers==0.42.1
    def image_latents(self, pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, C, h, w) source latents as the pipeline makes them: VAE posterior mode, NOT scaled."""
        return (
            self.vae.encode(to_vae_input(pixels, size, self.multiple_of, self.device, self.vae.dtype))
            .latent_dist.mode()
            .to(self.dtype)
        )

    def condition(
        self, pixels: torch.Tensor, prompts: Sequence[str], size: tuple[int, int], step: int | None = None
    ) -> Condition:
        """Source latents of ``pixels`` (differentiable) and the cached CLIP embeddings of ``prompts``.
        ``layout.context`` is 0: the source enters through the UNet's input channels, not attention."""
        prompts = list(prompts)
        latents = self.image_latents(pixels, size)
        embeds = self.encode_prompts(prompts)
        batch = max(latents.shape[0], len(prompts))
        if latents.shape[0] not in (1, batch) or len(prompts) not in (1, batch):
            raise ValueError(
                f"{latents.shape[0]} images and {len(prompts)} prompts: give one of either, or as many of both"
            )
        latents = to_batch(latents, batch)
        layout = Layout(text=embeds.shape[1], target=latents.shape[-2] * latents.shape[-1], context=0)
        return Condition(
            latents, layout, prompts, {"embeds": embeds, "text_mask": self.text_masks(prompts), "size": tuple(size)}
        )

    def noise_like(self, condition: Condition, generators) -> torch.Tensor:
        return draw_noise(condition.latents.shape, generators, self.device, self.dtype)

    def timesteps(self, sigma) -> torch.Tensor:
        """DDPM timestep indices of noise levels in [0, 1]: round(sigma * (T - 1))."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        if (sigma < 0).any() or (sigma > 1).any():
            raise ValueError(f"noise levels must be in [0, 1], got {sigma.tolist()}")
        return torch.round(sigma * (len(self._alphas_cumprod) - 1)).long()

    def flow_pair(self, condition: Condition, noise: torch.Tensor, sigma) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, target) of the UNet's training objective on the image itself: x_0 = the SCALED source
        latent, x_t = sqrt(a) x_0 + sqrt(1 - a) noise with a = alphas_cumprod[t], target = noise
        (epsilon models) or sqrt(a) noise - sqrt(1 - a) x_0 (v-prediction)."""
        x0 = (condition.latents * self.vae.config.scaling_factor).float()
        t = self.timesteps(sigma).to(self.device)
        t = t.expand(x0.shape[0]) if t.numel() == 1 else t
        x_t = self._training_scheduler.add_noise(x0, noise.float(), t)
        target = (
            noise.float()
            if self.prediction_type == "epsilon"
            else self._training_scheduler.get_velocity(x0, noise.float(), t)
        )
        return x_t.to(self.dtype), target.to(self.dtype)

    # Restates: diffusers.schedulers.scheduling_ddim.DDIMScheduler.step @ diffusers==0.42.1
    def denoise(self, x_t: torch.Tensor, sigma: float, sigma_next: float, condition: Condition) -> torch.Tensor:
        """Deterministic DDIM step (eta 0) from t(sigma) to t(sigma_next); ``sigma_next = 0`` gives the
        clean-latent estimate x_0 (alpha_cumprod 1, as the schedulers' final step). Restates
        ``DDIMScheduler.step`` (diffusers 0.42.1, eta 0, no clipping) for arbitrary pairs of timesteps, which
        that scheduler's fixed timestep grid does not offer."""
        prediction = self.velocity(x_t, float(sigma), condition).float()
        a = self._alphas_cumprod[self.timesteps(float(sigma))].item()
        a_next = 1.0 if float(sigma_next) == 0 else self._alphas_cumprod[self.timesteps(float(sigma_next))].item()
        x = x_t.float()
        if self.prediction_type == "epsilon":
            eps, x0 = prediction, (x - (1 - a) ** 0.5 * prediction) / a**0.5
        else:  # v-prediction
            eps, x0 = (1 - a) ** 0.5 * x + a**0.5 * prediction, a**0.5 * x - (1 - a) ** 0.5 * prediction
        return (a_next**0.5 * x0 + (1 - a_next) ** 0.5 * eps).to(self.dtype)

    def decode(self, latents: torch.Tensor, condition: Condition) -> torch.Tensor:
        """Scaled clean latents -> pixels in [0, 1] through the VAE decoder."""
        return vae_pixels(self.vae, latents / self.vae.config.scaling_factor)

    def velocity(
        self, x_t: torch.Tensor, sigma, condition: Condition, stop_after: str | None = None
    ) -> torch.Tensor | None:
        """``probed_velocity``'s prediction (None when stopped early); what a probe measured is dropped."""
        return self.probed_velocity(x_t, sigma, condition, stop_after).velocity

    def probed_velocity(self, x_t: torch.Tensor, sigma, condition: Condition, stop_after: str | None = None) -> Probed:
        """The UNet's prediction (its training target: epsilon or v) for ``x_t`` at noise level ``sigma``,
        text-and-image conditioned (the first of the pipeline's three guidance branches), and the text
        maps an installed ``text_attention`` probe read in that pass.
        ``stop_after``: a layer probed with ``text_attention``; the pass ends right after its maps."""
        batch = max(x_t.shape[0], condition.batch)
        x_t, source = to_batch(x_t, batch), to_batch(condition.latents, batch)
        embeds = to_batch(condition.extra["embeds"], batch)
        t = self.timesteps(sigma)
        t = (t.expand(batch) if t.numel() == 1 else t).to(self.device)
        if stop_after is not None and (self._active_probe is None or stop_after not in self._probed):
            raise ValueError(f"stop_after={stop_after!r} needs that layer probed (with editor.text_attention([...]))")
        call = None
        if self._active_probe is not None:
            call = ProbeCall(
                condition.layout,
                # With activation checkpointing, backward re-runs whole UNet blocks: a layer that ended the
                # forward would end the re-run too, so then the pass runs to the end instead.
                stop_at=None if self.unet.is_gradient_checkpointing else stop_after,
                text_mask=to_batch(condition.extra["text_mask"], batch),
            )
        try:
            out = self.unet(
                torch.cat([x_t.to(self.dtype), source.to(self.dtype)], dim=1),
                t,
                encoder_hidden_states=embeds.to(self.device, self.dtype),
                cross_attention_kwargs=probe_kwargs(call),
                return_dict=False,
            )[0]
            return Probed.of(None if stop_after is not None else out, call)
        except StopForward:
            return Probed.of(None, call)

    # ------------------------------------------------------------------ probes
    @contextlib.contextmanager
    def probe(self, blocks: Sequence[str]):
        raise ValueError(
            "InstructPix2Pix has no target->context attention to probe: the source image enters through the UNet's "
            "input channels (concatenated with the noisy latent), not as context tokens of a joint attention. "
            "Methods built on that attention (DeContext) do not apply; use encoder, flow_loss or noise."
        )
        yield  # pragma: no cover

    @contextlib.contextmanager
    def text_attention(self, blocks: Sequence[str]):
        """Inside ``with editor.text_attention(blocks):``, ``probed_velocity`` returns the cross-attention map
        of each of those layers (``text_maps[name]``: (B, image queries), the attention mass on the prompt's
        own tokens, mean over heads); the stock processors are back afterwards, whatever happens inside."""
        if self._active_probe is not None:
            raise RuntimeError("a probe is already installed on this editor; probes do not nest")
        blocks = list(blocks)
        with self.blocks.probing(blocks, "cross-attention layers") as probe:
            self._active_probe, self._probed = probe, blocks
            try:
                yield probe
            finally:
                self._active_probe, self._probed = None, []

    # ------------------------------------------------------------------ editing (the real pipeline)
    @property
    def edit_settings(self) -> dict:
        """Settings of ``edit`` beyond steps / guidance / resolution, recorded in the run's index.json."""
        return {"image_guidance": self.image_guidance}

    def prepare_image(self, image: Image.Image, resolution: str | int = EDIT_DEFAULTS["resolution"]) -> Image.Image:
        height, width = self.working_size(image.height, image.width, resolution)
        if (image.height, image.width) != (height, width):
            image = image.resize((width, height), Image.LANCZOS)
        return image

    @torch.no_grad()
    def edit(
        self,
        image: Image.Image | Sequence[Image.Image],
        prompts: Sequence[str],
        seeds: Sequence[int],
        steps: int = EDIT_DEFAULTS["num_inference_steps"],
        guidance: float = EDIT_DEFAULTS["guidance_scale"],
        resolution: str | int = EDIT_DEFAULTS["resolution"],
    ) -> list[Image.Image]:
        """Edit with StableDiffusionInstructPix2PixPipeline (text guidance ``guidance``, image guidance
        ``self.image_guidance``), one output per (prompt, seed) pair, as one batch."""
        images = edit_images(image, prompts, seeds, self._active_probe is not None)
        images = [self.prepare_image(im.convert("RGB"), resolution) for im in images]
        if len({im.size for im in images}) != 1:
            raise ValueError("a batch of images must share one size")
        if len(images) == 1 and len(prompts) > 1:
            images = images * len(prompts)
        embeds = self.encode_prompts(prompts)
        negative = self.encode_prompts([""] * len(prompts))
        result = self.pipe(
            image=images,
            prompt_embeds=embeds,
            negative_prompt_embeds=negative,
            num_inference_steps=steps,
            guidance_scale=guidance,
            image_guidance_scale=self.image_guidance,
            generator=[torch.Generator().manual_seed(int(s)) for s in seeds],
            output_type="np",
        )
        return [Image.fromarray(np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8)) for arr in result.images]
