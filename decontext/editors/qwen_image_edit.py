"""Qwen-Image-Edit (and -2509 / -2511) through diffusers' ``QwenImageEditPipeline`` /
``QwenImageEditPlusPipeline`` components.

The model (diffusers 0.42.1 names):
  - ``QwenImageTransformer2DModel``: dual-stream MMDiT blocks only (``transformer_blocks``; no single
    stream, no pooled embedding), positions from ``img_shapes`` (per image (frames, rows, cols) of
    2x2-packed tokens; RoPE frame index = the image's place in that list), text positions after the
    largest image side;
  - ``QwenDoubleStreamAttnProcessor2_0``: joint attention over ``[text | image stream]`` with a boolean
    KEY mask ``[text mask | ones]`` for padded text (``encoder_hidden_states_mask``);
  - ``AutoencoderKLQwenImage`` (a causal 3D VAE: pixels (B, 3, 1, H, W), latents normalised per channel
    by ``latents_mean`` / ``latents_std``);
  - Qwen2.5-VL-7B-Instruct: reads the instruction AND the reference image (a path with no gradient), its
    last hidden states (minus the template's leading tokens) are the DiT's text tokens, zero-padded with
    a mask when prompts differ in length.

Token layout, read from ``QwenImageEditPipeline.__call__``: the image stream is
``torch.cat([latents, image_latents], dim=1)`` (the noisy TARGET tokens first, then the reference's
CONTEXT tokens) with ``img_shapes = [[target (1, h, w), reference (1, h, w)]]``, and the processor puts
the text first. So the joint sequence is ``[text | target | context]``, exactly ``Layout``'s order; every
count comes from tensor shapes. The share is taken with the mask: padded text keys get zero probability.

Where we differ from the pipeline, on purpose: the attack resizes pixels with a differentiable bicubic
(the pipeline: PIL LANCZOS), and the attack encodes the reference with the VAE posterior mode (the
pipeline does too: ``sample_mode="argmax"``).

Qwen-Image-Edit-2509 / -2511 (``QwenImageEditPlusPipeline``, chosen by the checkpoint's model_index.json)
take SEVERAL reference images, read from its ``__call__``:
  - each reference is resized twice, independently of the output size: for the VAE to ~1024^2 area at its
    own aspect (``VAE_IMAGE_SIZE``), for Qwen2.5-VL to ~384^2 area (``CONDITION_IMAGE_SIZE``, PIL resize);
  - the VL prompt lists every image ("Picture i: <|vision_start|><|image_pad|><|vision_end|>" per image,
    then the instruction) in one template, one prompt per call (the pipeline takes batch 1);
  - ``prepare_latents`` packs each reference at its own latent size and concatenates all of them after the
    target: the image stream is ``[target | ref 0 | ref 1 | ...]``, ``img_shapes = [target, ref 0, ref 1, ...]``
    (RoPE frame index = place in that list);
  - the default output size follows the LAST image; ``edit()`` passes the protected image's size instead.
Here the protected image is reference 0 (differentiable); further references (``set_references``) ride
along as fixed, pre-encoded context tokens; ``Layout.context`` counts the keys of every reference.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..attention import Probed, StopForward
from . import FAMILIES, VLM_REFRESH
from .base import Condition, Layout, snap, to_batch, to_vae_input
from .blocks import probe_kwargs
from .dit import JointDiTEditor
from .models import load_pipeline, model_folder

SPEC = FAMILIES["qwen_image_edit"]

DEFAULT_MODEL = "Qwen/Qwen-Image-Edit"
PIPELINES = (
    "QwenImageEditPipeline",
    "QwenImageEditPlusPipeline",
)  # stock classes this editor loads (model_index.json _class_name)
VAE_AREA = (
    1024 * 1024
)  # the pipeline's working area (QwenImageEditPipeline.__call__: calculate_dimensions(1024 * 1024, ratio))
# Qwen-Image-Edit's published usage: 50 steps, true CFG 4.0 against a " " negative prompt, ~1024^2 area.
EDIT_DEFAULTS = {"num_inference_steps": 50, "guidance_scale": 4.0, "resolution": "auto"}
NEGATIVE_PROMPT = " "


# ---------------------------------------------------------------------------------------- geometry
def pipeline_size(height: int, width: int, area: int, multiple: int) -> tuple[int, int]:
    """(H, W) the pipeline picks for an image of that size: ``calculate_dimensions(area, W / H)`` (sides
    rounded to 32), floored to the model's ``multiple``."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_dimensions

    w, h, _ = calculate_dimensions(area, width / height)
    return snap(h, multiple), snap(w, multiple)


def condition_size(height: int, width: int) -> tuple[int, int]:
    """(H, W) QwenImageEditPlusPipeline gives Qwen2.5-VL for an image of that size: ``calculate_dimensions(
    CONDITION_IMAGE_SIZE, W / H)`` (~384^2 area, sides rounded to 32)."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import CONDITION_IMAGE_SIZE, calculate_dimensions

    w, h = calculate_dimensions(CONDITION_IMAGE_SIZE, width / height)
    return h, w


def _pipeline_class(name: str):
    import diffusers

    if name not in PIPELINES:
        raise ValueError(
            f"not a Qwen-Image-Edit pipeline: model_index.json names {name!r} "
            f"(this editor loads {', '.join(PIPELINES)})"
        )
    return getattr(diffusers, name)


def _as_pixels(image) -> torch.Tensor:
    """A PIL image or (1, 3, H, W) / (3, H, W) tensor in [0, 1] -> (1, 3, H, W) float32 in [0, 1]."""
    if isinstance(image, Image.Image):
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)[None].float() / 255
    return (image if image.dim() == 4 else image[None]).detach().float().cpu()


def _to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [0, 1] -> uint8 PIL images at their own size (what a saved image holds)."""
    arrays = (pixels.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arrays]


class QwenImageEditEditor(JointDiTEditor):
    """Qwen-Image-Edit (or any model in its diffusers layout, e.g. the tiny editor).

    Reuses ``JointDiTEditor``'s machinery (block map, probe lifetime, early stop, noise, flow pair, Euler
    step) and supplies its own VAE, text path and transformer call. Qwen-Image has ONE stream of 60
    dual-stream blocks, named ``double.i``; a relative range of another stream (the paper's
    ``single:0-25/38``) is read as the same relative depth of it (``--help`` says so).
    """

    family = SPEC.name
    capabilities = SPEC.capabilities
    min_resolution = SPEC.min_resolution
    text_embedding_keys = ("embeds",)  # Qwen2.5-VL's last hidden states of (template, image, prompt)
    text_mask_key = "mask"

    def __init__(
        self,
        pipe,
        name: str = DEFAULT_MODEL,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        vlm_refresh: int = VLM_REFRESH,
    ):
        """``vlm_refresh``: re-read the current (perturbed) image with Qwen2.5-VL every K optimiser steps
        (1 = every step; 0 = read the clean image once). That read has no gradient."""
        if vlm_refresh < 0:
            raise ValueError(f"vlm_refresh must be >= 0, got {vlm_refresh}")
        self.pipe, self.name = pipe, name
        self.device, self.dtype = torch.device(device), dtype
        self.vlm_refresh = vlm_refresh
        self.plus = type(pipe).__name__ == "QwenImageEditPlusPipeline"  # several reference images (2509 / 2511)
        # fixed further references (Plus only): tokens (1, N, C), img_shapes entry, the image Qwen2.5-VL reads
        self._references: list[tuple[torch.Tensor, tuple[int, int, int], Image.Image]] = []
        self.recommended = dict(EDIT_DEFAULTS)
        self._snapshot: torch.Tensor | None = None
        self._features: dict[tuple[int, str], torch.Tensor] = {}
        self._init_probe_state()
        vae_dtype = torch.float64 if dtype == torch.float64 else torch.float32  # the VAE stays in fp32 (fp64 in checks)
        for module, module_dtype in ((pipe.transformer, dtype), (pipe.vae, vae_dtype), (pipe.text_encoder, None)):
            module.requires_grad_(False).eval()
            module.to(self.device) if module_dtype is None else module.to(self.device, module_dtype)

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(
        cls, model: str, device: torch.device, dtype: torch.dtype, seed: int = 0, **options
    ) -> "QwenImageEditEditor":
        if model == "tiny":
            return cls.tiny(seed=seed, device=device, dtype=dtype, **options)
        return cls.from_pretrained(model, device=device, dtype=dtype, **options)

    @classmethod
    def from_pretrained(
        cls,
        id_or_dir: str | Path = DEFAULT_MODEL,
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device | None = None,
        **kwargs,
    ) -> "QwenImageEditEditor":
        """Load a Qwen-Image-Edit folder or hub id (safetensors weights, stock classes only, no remote code):
        the pipeline class is the one its model_index.json names (``QwenImageEditPipeline``, or
        ``QwenImageEditPlusPipeline`` for Qwen-Image-Edit-2509 / -2511)."""
        from diffusers import DiffusionPipeline

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        folder = model_folder(str(id_or_dir), cls.family)
        index = (
            json.loads((folder / "model_index.json").read_text())
            if folder is not None
            else DiffusionPipeline.load_config(str(id_or_dir))
        )
        pipeline_class = _pipeline_class(index.get("_class_name", "?"))
        pipe = load_pipeline(pipeline_class, id_or_dir, dtype, use_safetensors=True)
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, name=str(id_or_dir), device=device, dtype=dtype, **kwargs)

    @classmethod
    def tiny(
        cls,
        config=None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        plus: bool = False,
        **kwargs,
    ) -> "QwenImageEditEditor":
        """A random-weight Qwen-Image-Edit built offline from config objects (``tiny_qwen_image_edit_components``);
        ``plus``: the same components in a ``QwenImageEditPlusPipeline`` (the 2509 / 2511 multi-image pipeline)."""
        pipeline_class = _pipeline_class(PIPELINES[1] if plus else PIPELINES[0])
        pipe = pipeline_class(**tiny_qwen_image_edit_components(config or TinyQwenImageEditConfig(), seed=seed))
        pipe.set_progress_bar_config(disable=True)
        editor = cls(pipe, name="tiny", device=device, dtype=dtype, **kwargs)
        return editor

    # ------------------------------------------------------------------ structure
    @property
    def transformer(self):
        return self.pipe.transformer

    @property
    def vae(self):
        return self.pipe.vae

    def text_attention(self, blocks):
        raise ValueError(
            "the qwen_image_edit editor does not offer text-attention maps (no 'text_cross_attention' capability)"
        )

    @property
    def multiple_of(self) -> int:
        """Pixel sizes must be multiples of this (VAE downsampling x 2x2 packing)."""
        return self.pipe.vae_scale_factor * 2

    def latent_size(self, size: tuple[int, int]) -> tuple[int, int]:
        factor = self.pipe.vae_scale_factor
        return size[0] // factor, size[1] // factor

    def working_size(self, height: int, width: int, resolution: str | int = "auto") -> tuple[int, int]:
        """``auto``: what QwenImageEditPipeline picks (~1024^2 area, sides rounded to 32); N: the same rule
        at an area of N x N; ``native``: the image's size snapped down to the model's multiple."""
        multiple = self.multiple_of
        if resolution == "native":
            return snap(height, multiple), snap(width, multiple)
        area = VAE_AREA if resolution == "auto" else int(resolution) ** 2
        if resolution != "auto" and int(resolution) < multiple:
            raise ValueError(f"resolution {resolution} is below the model's minimum of {multiple} px")
        return pipeline_size(height, width, area, multiple)

    def image_shapes(self, size: tuple[int, int]) -> tuple[int, int, int]:
        """(frames, rows, cols) of one image's packed tokens at ``size`` (an ``img_shapes`` entry)."""
        lat_h, lat_w = self.latent_size(size)
        return (1, lat_h // 2, lat_w // 2)

    # ------------------------------------------------------------------ image tokens
    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(self.vae.config.latents_mean, device=like.device, dtype=like.dtype).view(shape)
        std = torch.tensor(self.vae.config.latents_std, device=like.device, dtype=like.dtype).view(shape)
        return mean, std

    # Restates: diffusers.QwenImageEditPipeline._encode_vae_image @ diffusers==0.42.1
    def image_latents(self, pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, N, 4 z) packed tokens: pixels in [-1, 1] as one frame, VAE posterior mode, per-channel
        ``(z - mean) / std``, 2x2 packing (``QwenImageEditPipeline.prepare_latents``), differentiable."""
        x = to_vae_input(pixels, size, self.multiple_of, self.device, self.vae.dtype).unsqueeze(2)
        latents = self.vae.encode(x).latent_dist.mode()
        mean, std = self._latent_stats(latents)
        latents = (latents - mean) / std
        batch, channels, _, lat_h, lat_w = latents.shape
        return self.pipe._pack_latents(latents, batch, channels, lat_h, lat_w).to(self.dtype)

    # Restates: diffusers.QwenImageEditPipeline.__call__ @ diffusers==0.42.1  (its decoding of the final latents)
    def decode(self, latents: torch.Tensor, condition: Condition) -> torch.Tensor:
        """Packed clean tokens -> pixels in [0, 1]: unpack, undo the normalisation, VAE decode (first frame)."""
        height, width = condition.extra["size"]
        z = self.pipe._unpack_latents(latents, height, width, self.pipe.vae_scale_factor).to(self.vae.dtype)
        mean, std = self._latent_stats(z)
        frames = self.vae.decode(z * std + mean).sample
        return ((frames[:, :, 0].float() + 1) / 2).clamp(0, 1)

    # ------------------------------------------------------------------ text (Qwen2.5-VL reads image + prompt)
    def prepare(self, prompts: Sequence[str], release: bool = True) -> None:
        """Nothing to cache up front: Qwen2.5-VL reads every new image with the prompt, so it stays."""

    def _vlm_images(self, pixels: torch.Tensor, size: tuple[int, int]) -> list[Image.Image]:
        """The reference as the pipeline hands it to Qwen2.5-VL: at the working size, as uint8 PIL (Plus:
        the image as uint8 PIL, resized by the pipeline's own ``image_processor.resize`` to ~384^2 area)."""
        if self.plus:
            return [self._plus_vlm_image(image) for image in _to_pil(pixels)]
        x = pixels.detach().float()
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="bicubic", antialias=True, align_corners=False)
        arrays = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a) for a in arrays]

    def _plus_vlm_image(self, image: Image.Image) -> Image.Image:
        """What QwenImageEditPlusPipeline hands Qwen2.5-VL for ``image``: its own resize to ~384^2 area."""
        return self.pipe.image_processor.resize(image, *condition_size(image.height, image.width))

    @torch.no_grad()
    def encode_prompts(self, images: list[Image.Image], prompts: list[str]) -> list[torch.Tensor]:
        """Per (image, prompt) pair, the (L_i, D) unpadded text tokens the pipeline's ``encode_prompt`` makes
        (Plus: one call per prompt with ``[image, *fixed references]``, as the pipeline reads them)."""
        if self.plus:
            tokens = []
            for image, prompt in zip(images, prompts, strict=False):
                embeds, mask = self.pipe.encode_prompt(
                    prompt=[prompt], image=[image, *(vl for _, _, vl in self._references)], device=self.device
                )
                tokens.append(embeds[0] if mask is None else embeds[0][mask[0].bool()])
            return [t.to(self.dtype) for t in tokens]
        embeds, mask = self.pipe.encode_prompt(prompt=list(prompts), image=list(images), device=self.device)
        mask = torch.ones(embeds.shape[:2], dtype=torch.bool, device=embeds.device) if mask is None else mask.bool()
        return [embeds[k][mask[k]].to(self.dtype) for k in range(embeds.shape[0])]

    def _text_tokens(
        self, pixels: torch.Tensor, prompts: list[str], size: tuple[int, int], step: int | None, batch: int
    ):
        """(B, L, D) zero-padded text tokens and (B, L) mask for each row's (image, prompt); read from the
        snapshot of the image taken at step 0 and every ``vlm_refresh`` steps (``step=None``: these pixels)."""
        rows = [(i if pixels.shape[0] > 1 else 0, prompts[i] if len(prompts) > 1 else prompts[0]) for i in range(batch)]
        if step is None:
            source, cache = pixels.detach(), {}
        else:
            if (
                step == 0
                or self._snapshot is None
                or self._snapshot.shape != pixels.shape
                or (self.vlm_refresh and step % self.vlm_refresh == 0)
            ):
                self._snapshot, self._features = pixels.detach().clone(), {}
            source, cache = self._snapshot, self._features
        missing = [row for row in dict.fromkeys(rows) if row not in cache]
        if missing:
            images = self._vlm_images(source, size)
            cache.update(
                zip(
                    missing, self.encode_prompts([images[i] for i, _ in missing], [p for _, p in missing]), strict=False
                )
            )
        tokens = [cache[row] for row in rows]
        length = max(t.shape[0] for t in tokens)
        embeds = torch.stack([F.pad(t, (0, 0, 0, length - t.shape[0])) for t in tokens])
        mask = torch.stack([torch.arange(length, device=t.device) < t.shape[0] for t in tokens])
        return embeds, mask

    # ------------------------------------------------------------------ further references (Plus)
    @torch.no_grad()
    def set_references(self, images: Sequence[torch.Tensor | Image.Image], resolution: str | int = "auto") -> None:
        """Further reference images after the protected one, as QwenImageEditPlusPipeline gets them in
        ``image=[protected, *images]``: each VAE-encoded once at its own working size (not optimised) and
        read by Qwen2.5-VL with the protected image. ``[]`` removes them."""
        images = list(images)
        if images and not self.plus:
            raise ValueError(
                "further reference images need a QwenImageEditPlusPipeline checkpoint (Qwen-Image-Edit-2509 / -2511)"
            )
        references = []
        for image in images:
            pixels = _as_pixels(image)
            size = self.working_size(*pixels.shape[-2:], resolution)
            vl_image = self._plus_vlm_image(
                image.convert("RGB") if isinstance(image, Image.Image) else _to_pil(pixels)[0]
            )
            references.append((self.image_latents(pixels, size).detach(), self.image_shapes(size), vl_image))
        self._references = references
        self._snapshot, self._features = None, {}  # the text tokens read every image: read them again

    def _companions(self, batch: int) -> torch.Tensor | None:
        if not self._references:
            return None
        return to_batch(torch.cat([tokens for tokens, _, _ in self._references], dim=1), batch)

    # ------------------------------------------------------------------ conditioning
    def condition(
        self, pixels: torch.Tensor, prompts: Sequence[str], size: tuple[int, int], step: int | None = None
    ) -> Condition:
        """Context tokens of ``pixels`` (differentiable) and Qwen2.5-VL text tokens of (image, prompt)
        (no gradient; re-read per ``vlm_refresh``)."""
        prompts = list(prompts)
        latents = self.image_latents(pixels, size)
        batch = max(latents.shape[0], len(prompts))
        if latents.shape[0] not in (1, batch) or len(prompts) not in (1, batch):
            raise ValueError(
                f"{latents.shape[0]} images and {len(prompts)} prompts: give one of either, or as many of both"
            )
        embeds, mask = self._text_tokens(pixels, prompts, size, step, batch)
        latents = to_batch(latents, batch)
        companions = self._companions(1)
        # img_shapes as the pipeline lists them: [target, reference 0 (the protected image), further references]
        shapes = [self.image_shapes(size)] * 2 + [shape for _, shape, _ in self._references]
        context = sum(math.prod(shape) for shape in shapes[1:])
        layout = Layout(text=embeds.shape[1], target=latents.shape[1], context=context)
        extra = {"embeds": embeds, "mask": mask, "size": tuple(size), "img_shapes": shapes, "companions": companions}
        return Condition(latents, layout, prompts, extra)

    def probed_velocity(
        self, x_t: torch.Tensor, sigma: torch.Tensor, condition: Condition, stop_after: str | None = None
    ) -> Probed:
        """One transformer pass on ``[x_t | context]`` (the pipeline's ``torch.cat([latents, image_latents])``
        with ``img_shapes`` [target, reference] and the text mask): the prediction for the target tokens and
        what an installed probe measured in it.

        Args:
            x_t: (B, N, C) noisy target tokens (B = condition.batch, or 1 to share one draw).
            sigma: (B,) or scalar noise level in [0, 1] (the pipeline passes t / 1000 = sigma).
            stop_after: the last block needed; when it is probed the pass ends right after its probe.
        Returns:
            ``Probed``: the (B, N, C) velocity (None when stopped early) and the shares.
        """
        batch, x_t, sigma = self._batched(x_t, sigma, condition)
        context = to_batch(condition.latents, batch)
        companions = condition.extra.get("companions")
        if companions is not None:  # the Plus pipeline's torch.cat(all reference latents, dim=1), after reference 0
            context = torch.cat([context, to_batch(companions, batch).to(context.dtype)], dim=1)
        embeds = to_batch(condition.extra["embeds"], batch).to(self.device, self.dtype)
        mask = to_batch(condition.extra["mask"], batch).to(self.device)
        layout = Layout(text=embeds.shape[1], target=x_t.shape[1], context=context.shape[1])
        shapes = (
            condition.extra.get("img_shapes") or [self.image_shapes(condition.extra["size"])] * 2
        )  # [target, references...]
        if (math.prod(shapes[0]), sum(math.prod(s) for s in shapes[1:])) != (layout.target, layout.context):
            raise ValueError(f"img_shapes {shapes} do not match the tokens {layout}")
        call = self._probe_call(condition, layout, batch, stop_after, text_mask=False)  # no text maps on this editor
        try:
            with self.blocks.stop_after(stop_after):
                out = self.transformer(
                    hidden_states=torch.cat([x_t.to(self.dtype), context], dim=1),
                    timestep=sigma,
                    encoder_hidden_states=embeds,
                    encoder_hidden_states_mask=None
                    if bool(mask.all())
                    else mask,  # the pipeline drops an all-valid mask
                    img_shapes=[shapes] * batch,
                    attention_kwargs=probe_kwargs(call),
                    return_dict=False,
                )[0]
        except StopForward:
            return Probed.of(None, call)
        return Probed.of(out[:, : layout.target], call)

    # ------------------------------------------------------------------ editing (the real pipeline)
    @torch.no_grad()
    def edit(
        self,
        image: Image.Image | Sequence[Image.Image],
        prompts: Sequence[str],
        seeds: Sequence[int],
        steps: int = EDIT_DEFAULTS["num_inference_steps"],
        guidance: float = EDIT_DEFAULTS["guidance_scale"],
        resolution: str | int = EDIT_DEFAULTS["resolution"],
        references: Sequence[Image.Image] = (),
    ) -> list[Image.Image]:
        """Edit with QwenImageEditPipeline (or QwenImageEditPlusPipeline), one output per (prompt, seed),
        each its own pipeline call.

        ``guidance`` is the pipeline's ``true_cfg_scale`` (negative prompt " "; <= 1: no CFG). The pipeline
        always reads the reference at ~1024^2 area (its own resize); ``resolution`` sets the output size
        (from the edited image, also on Plus, whose own default follows the last image). ``references``
        (Plus only): further reference images passed after the edited one, ``image=[image, *references]``."""
        images = self._edit_images(image, prompts, seeds)
        refs = [im.convert("RGB") for im in references]
        if refs and not self.plus:
            raise ValueError(
                "further reference images need a QwenImageEditPlusPipeline checkpoint (Qwen-Image-Edit-2509 / -2511)"
            )
        outputs = []
        for k, (prompt, seed) in enumerate(zip(prompts, seeds, strict=False)):
            source = images[0 if len(images) == 1 else k].convert("RGB")
            height, width = self.working_size(source.height, source.width, resolution)
            result = self.pipe(
                image=[source, *refs] if self.plus else source,
                prompt=prompt,
                negative_prompt=NEGATIVE_PROMPT if guidance > 1 else None,
                true_cfg_scale=guidance,
                height=height,
                width=width,
                num_inference_steps=steps,
                generator=torch.Generator().manual_seed(int(seed)),
                output_type="np",
            )
            outputs.append(Image.fromarray(np.round(np.clip(result.images[0], 0, 1) * 255).astype(np.uint8)))
        return outputs


# ---------------------------------------------------------------------------------------- tiny model
@dataclass(frozen=True)
class TinyQwenImageEditConfig:
    """Sizes of a tiny Qwen-Image-Edit (real values in comments; ``bench/bench_step.py --family
    qwen_image_edit --preset real`` builds the real transformer and VAE shapes with random weights)."""

    num_layers: int = 2  # real 60
    num_attention_heads: int = 2  # real 24
    attention_head_dim: int = 16  # real 128; = sum(axes_dims_rope)
    axes_dims_rope: tuple[int, int, int] = (4, 6, 6)  # real (16, 56, 56)
    z_dim: int = 16  # real 16
    vae_base_dim: int = 8  # real 96
    vae_dim_mult: tuple[int, ...] = (1, 2, 2, 2)  # real (1, 2, 4, 4); 4 levels, 3 downsamplings -> 8x
    vae_res_blocks: int = 1  # real 2
    # the Qwen2.5-VL sizes (editors.tiny.TinyStep1XConfig; None = its tiny default);
    # its qwen_hidden is the DiT's text width
    vlm: object = None


def tiny_qwen_image_edit_components(config: TinyQwenImageEditConfig = TinyQwenImageEditConfig(), seed: int = 0) -> dict:
    """Components of a ``QwenImageEditPipeline`` with seeded random weights, built offline (the Qwen2.5-VL
    text encoder and processor are ``editors.tiny``'s, as for Step1X-Edit)."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel

    from .tiny import TinyStep1XConfig, _seeded, tiny_qwen25vl

    vlm_config = config.vlm or TinyStep1XConfig()
    text_encoder, processor = tiny_qwen25vl(vlm_config, seed)
    with _seeded(seed + 1):
        transformer = QwenImageTransformer2DModel(
            patch_size=2,
            in_channels=4 * config.z_dim,
            out_channels=config.z_dim,
            num_layers=config.num_layers,
            attention_head_dim=config.attention_head_dim,
            num_attention_heads=config.num_attention_heads,
            joint_attention_dim=vlm_config.qwen_hidden,
            axes_dims_rope=config.axes_dims_rope,
        )
        generator = torch.Generator().manual_seed(seed)
        vae = AutoencoderKLQwenImage(
            base_dim=config.vae_base_dim,
            z_dim=config.z_dim,
            dim_mult=list(config.vae_dim_mult),
            num_res_blocks=config.vae_res_blocks,
            temperal_downsample=[False, True, True],
            latents_mean=(
                torch.randn(config.z_dim, generator=generator, device="cpu") * 0.5
            ).tolist(),  # also under a default-device context
            latents_std=(1 + torch.rand(config.z_dim, generator=generator, device="cpu")).tolist(),
        )
    # Qwen-Image's published scheduler settings.
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=0.9,
        base_image_seq_len=256,
        max_image_seq_len=8192,
        shift_terminal=0.02,
        time_shift_type="exponential",
    )
    for module in (transformer, vae, text_encoder):
        module.eval()
    return dict(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=processor.tokenizer,
        processor=processor,
        scheduler=scheduler,
    )
