"""FLUX.1-Kontext through diffusers' ``FluxKontextPipeline`` components.

The attack path calls the VAE and the transformer directly (the pipeline's ``__call__`` runs under
``no_grad``) but reproduces the pipeline's context encoding exactly: pixels in [-1, 1], VAE posterior
MODE, ``(z - shift_factor) * scaling_factor``, 2x2 packing, context position ids with axis 0 = 1, and
the joint sequence ``[text | target | context]`` inside every attention call. Conditioning is the
prompt's T5 + CLIP embeddings (computed once, then the text encoders can go) and the guidance
embedding. The edit path is the stock pipeline call.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from . import FAMILIES, KONTEXT_GUIDANCE
from .base import Condition, Layout, content_token_mask, snap, to_batch
from .dit import Flux1DiTEditor, image_ids, joint_velocity, pack_latents, vae_latents  # noqa: F401 (re-exported)
from .models import load_pipeline, model_folder, shipped_settings

SPEC = FAMILIES["flux_kontext"]
ATTACK_GUIDANCE = KONTEXT_GUIDANCE  # the guidance-embedding value of the official attack and of the paper's edits
EDIT_DEFAULTS = {
    "num_inference_steps": 20,
    "guidance_scale": ATTACK_GUIDANCE,
    "resolution": 512,
}  # the paper's edit protocol


def _load_quantized_transformer(
    id_or_dir: str, quantize: str, dtype: torch.dtype, device: torch.device, local_files_only: bool
):
    """The transformer with bitsandbytes weight quantisation (diffusers' BitsAndBytesConfig)."""
    if quantize not in ("8bit", "4bit"):
        raise ValueError(f"quantize must be '8bit' or '4bit', got {quantize!r}")
    if device.type != "cuda":
        raise ValueError(
            f"quantize={quantize!r} uses bitsandbytes kernels, which need a CUDA GPU (device is {device}); "
            "run without --quantize on the CPU"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ImportError("quantize needs bitsandbytes: pip install bitsandbytes") from None
    from diffusers import BitsAndBytesConfig, FluxTransformer2DModel

    if quantize == "8bit":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    return FluxTransformer2DModel.from_pretrained(
        id_or_dir,
        subfolder="transformer",
        quantization_config=config,
        dtype=dtype,
        local_files_only=local_files_only,
        device_map={"": device.index or 0},
    )


def _preferred_kontext_resolutions() -> list[tuple[int, int]]:
    from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

    return list(PREFERRED_KONTEXT_RESOLUTIONS)


def latent_ids(lat_h: int, lat_w: int, context: bool, device=None, dtype=torch.float32) -> torch.Tensor:
    """Kontext position ids (N, 3) of a (lat_h, lat_w) latent's tokens: target axis 0 = 0, context 1."""
    return image_ids(lat_h, lat_w, axis0=1 if context else 0, device=device, dtype=dtype)


class FluxKontextEditor(Flux1DiTEditor):
    """FLUX.1-Kontext (or any model in its diffusers layout, e.g. the tiny and toy editors)."""

    family = SPEC.name
    capabilities = SPEC.capabilities
    min_resolution = SPEC.min_resolution
    text_embedding_keys = ("embeds", "pooled")  # T5 token embeddings and the pooled CLIP embedding

    def __init__(
        self,
        pipe,
        name: str = "flux_kontext",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        max_sequence_length: int = 512,
        offload: bool = False,
        guidance: float = ATTACK_GUIDANCE,
    ):
        """Wrap a FluxKontextPipeline. ``offload=True`` uses diffusers' model CPU offload (each
        component visits the GPU only while it runs) instead of keeping transformer and VAE resident.
        ``guidance``: the guidance-embedding value of the attack's velocity calls."""
        self.pipe = pipe
        self.name = name
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_sequence_length = max_sequence_length
        self.guidance = guidance
        self._prompt_cache: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.recommended: dict = dict(EDIT_DEFAULTS)  # a model folder's decontext_toy.json overrides these
        self._init_probe_state()
        for module in (pipe.transformer, pipe.vae):
            module.requires_grad_(False)
            module.eval()
            if module.dtype != dtype and not getattr(module, "is_quantized", False):
                module.to(dtype=dtype)
        self.offload = offload
        if offload:
            if self.device.type == "cpu":
                raise ValueError("offload moves components to a GPU while they run; it needs a GPU device")
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            if not getattr(pipe.transformer, "is_quantized", False):  # bitsandbytes places its own weights
                pipe.transformer.to(self.device)
            pipe.vae.to(self.device)

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(
        cls,
        model: str,
        device: torch.device,
        dtype: torch.dtype,
        seed: int = 0,
        offload: bool = False,
        quantize: str | None = None,
        guidance: float = ATTACK_GUIDANCE,
    ) -> "FluxKontextEditor":
        """``tiny`` (random weights, smoke path), ``toy`` / ``toy-v1`` ... (the trained embedded editors), or a
        FLUX.1-Kontext hub id / local diffusers folder."""
        if quantize is not None and model == "tiny":
            raise ValueError(
                "--quantize loads a saved model (hub id, folder or a toy); "
                "the in-memory tiny model has no weights to quantise"
            )
        if model == "tiny":
            if offload:
                raise ValueError("--offload is for real models on a GPU, not the tiny model")
            editor = cls.tiny(seed=seed, device=device, dtype=dtype)
        else:
            editor = cls.from_pretrained(
                model_folder(model, cls.family) or model, dtype=dtype, device=device, offload=offload, quantize=quantize
            )
            editor.name = model
        editor.guidance = guidance
        return editor

    @classmethod
    def from_pretrained(
        cls,
        id_or_dir: str | Path,
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device | None = None,
        max_sequence_length: int | None = None,
        offload: bool = False,
        quantize: str | None = None,
        **kwargs,
    ) -> "FluxKontextEditor":
        """Load a FluxKontextPipeline folder or hub id (``black-forest-labs/FLUX.1-Kontext-dev``).

        Text encoders stay on the CPU until ``encode_prompts`` needs them and are released after.
        ``quantize="8bit"|"4bit"`` loads the transformer weight-quantised with bitsandbytes (LLM.int8 or
        NF4, computing in ``dtype``), for GPUs with less memory; the VAE stays in ``dtype``.
        """
        from diffusers import FluxKontextPipeline

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        folder = model_folder(str(id_or_dir), cls.family)
        if quantize is not None:
            kwargs["transformer"] = _load_quantized_transformer(
                str(id_or_dir), quantize, dtype, device, local_files_only=folder is not None
            )
        pipe = load_pipeline(FluxKontextPipeline, id_or_dir, dtype, **kwargs)
        pipe.set_progress_bar_config(disable=True)
        shipped = shipped_settings(folder)
        if max_sequence_length is None and shipped.get("max_sequence_length"):
            max_sequence_length = int(shipped["max_sequence_length"])
        if max_sequence_length is None:
            max_sequence_length = min(512, int(getattr(pipe.tokenizer_2, "model_max_length", 512) or 512))
        editor = cls(
            pipe,
            name=str(id_or_dir),
            device=device,
            dtype=dtype,
            max_sequence_length=max_sequence_length,
            offload=offload,
        )
        editor.recommended.update(shipped)
        return editor

    @classmethod
    def tiny(
        cls, config=None, seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> "FluxKontextEditor":
        """A random-weight FLUX.1-Kontext built offline from config objects (see ``editors.tiny``)."""
        from diffusers import FluxKontextPipeline

        from .tiny import TinyKontextConfig, tiny_kontext_components

        config = config or TinyKontextConfig()
        pipe = FluxKontextPipeline(**tiny_kontext_components(config, seed=seed))
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, name="tiny", device=device, dtype=dtype, max_sequence_length=config.max_text_tokens)

    # ------------------------------------------------------------------ structure
    @property
    def transformer(self):
        return self.pipe.transformer

    @property
    def vae(self):
        return self.pipe.vae

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, L, D) T5 and (N, P) CLIP embeddings of each prompt, computed once per distinct text and cached."""
        prompts = list(prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            if self.pipe.text_encoder is None or self.pipe.text_encoder_2 is None:
                raise RuntimeError(f"text encoders were released; cannot encode new prompts such as {missing[0]!r}")
            encoders = (self.pipe.text_encoder, self.pipe.text_encoder_2)
            # Encode on the editor's device when it is an accelerator (much faster), then move back.
            # Under model offload the pipeline's hooks do the moving.
            move = not self.offload
            for encoder in encoders if move else ():
                encoder.to(self.device)
            try:
                for start in range(0, len(missing), 8):
                    chunk = missing[start : start + 8]
                    embeds, pooled, _ = self.pipe.encode_prompt(
                        prompt=chunk, prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length
                    )
                    mask = content_token_mask(self.pipe.tokenizer_2, chunk, embeds.shape[1])
                    for i, text in enumerate(chunk):
                        self._prompt_cache[text] = (embeds[i].to(self.dtype), pooled[i].to(self.dtype), mask[i])
            finally:
                if move and self.device.type != "cpu":
                    for encoder in encoders:
                        encoder.to("cpu")
                    torch.cuda.empty_cache() if self.device.type == "cuda" else None
        embeds = torch.stack([self._prompt_cache[p][0] for p in prompts])
        pooled = torch.stack([self._prompt_cache[p][1] for p in prompts])
        return embeds, pooled

    def text_masks(self, prompts: Sequence[str]) -> torch.Tensor:
        """(N, L) 1 on the T5 tokens that spell each prompt (encoded with it); 0 on EOS and padding."""
        missing = [p for p in prompts if p not in self._prompt_cache]
        if missing:
            self.encode_prompts(missing)
        return torch.stack([self._prompt_cache[p][2] for p in prompts])

    def prepare(self, prompts: Sequence[str], release: bool = True) -> None:
        """Embed ``prompts`` once; with ``release``, drop the text encoders (T5-XXL alone is ~9.5 GB in
        bf16): conditioning is prompt-only, so cached embeddings serve every later call."""
        self.encode_prompts(prompts)
        if release:
            self.pipe.text_encoder = None
            self.pipe.text_encoder_2 = None
            gc.collect()

    # ------------------------------------------------------------------ geometry
    def working_size(self, height: int, width: int, resolution: str | int = "auto") -> tuple[int, int]:
        """(H, W) the editor works at for an image of ``height`` x ``width``.

        ``auto``: what FluxKontextPipeline picks by default (the preferred Kontext resolution nearest in
        aspect ratio); ``native``: the image's own size snapped down to the model's multiple; an int N:
        an area of N x N pixels at the image's aspect ratio (512 reproduces the paper).
        """
        multiple = self.multiple_of
        if resolution == "auto":
            aspect = width / height
            _, w, h = min((abs(aspect - w / h), w, h) for w, h in _preferred_kontext_resolutions())
            return snap(h, multiple), snap(w, multiple)
        if resolution == "native":
            return snap(height, multiple), snap(width, multiple)
        side = int(resolution)
        if side < multiple:
            raise ValueError(f"resolution {side} is below the model's minimum of {multiple} px")
        aspect = width / height
        return snap(round((side * side / aspect) ** 0.5), multiple), snap(
            round((side * side * aspect) ** 0.5), multiple
        )

    # ------------------------------------------------------------------ conditioning
    def condition(
        self, pixels: torch.Tensor, prompts: Sequence[str], size: tuple[int, int], step: int | None = None
    ) -> Condition:
        """Context tokens of ``pixels`` (differentiable; exactly FluxKontextPipeline.prepare_latents) and
        the cached embeddings of ``prompts``. ``step`` is not needed: the text path never sees the image."""
        prompts = list(prompts)
        latents = self.image_latents(pixels, size)
        embeds, pooled = self.encode_prompts(prompts)
        batch = max(latents.shape[0], len(prompts))
        if latents.shape[0] not in (1, batch) or len(prompts) not in (1, batch):
            raise ValueError(
                f"{latents.shape[0]} images and {len(prompts)} prompts: give one of either, or as many of both"
            )
        lat_h, lat_w = self.latent_size(size)
        extra = {
            "embeds": embeds,
            "pooled": pooled,
            "text_mask": self.text_masks(prompts),
            "target_ids": latent_ids(lat_h, lat_w, False, self.device, self.dtype),
            "context_ids": latent_ids(lat_h, lat_w, True, self.device, self.dtype),
            "size": tuple(size),
        }
        latents = to_batch(latents, batch)
        layout = Layout(text=embeds.shape[1], target=latents.shape[1], context=latents.shape[1])
        return Condition(latents, layout, prompts, extra)

    def _text_inputs(self, condition: Condition, sigma: torch.Tensor, batch: int):
        embeds, pooled = (
            to_batch(condition.extra["embeds"], batch),
            to_batch(condition.extra["pooled"], batch),
        )  # one prompt: every image
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((batch,), self.guidance, device=self.device, dtype=torch.float32)
        return embeds.to(self.device, self.dtype), pooled.to(self.device, self.dtype), guidance

    # ------------------------------------------------------------------ editing (the real pipeline)
    def prepare_image(self, image: Image.Image, resolution: str | int = EDIT_DEFAULTS["resolution"]) -> Image.Image:
        """Resize a PIL image to the working size with the pipeline's own resampling (LANCZOS)."""
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
        """Edit with FluxKontextPipeline, one output per (prompt, seed) pair, as one batch.

        ``image`` is one image (edited under every prompt) or one image per prompt (same size).
        Prompt embeddings come from the cache (``prepare``), so text encoders may be released.
        """
        images = self._edit_images(image, prompts, seeds)
        images = [self.prepare_image(im.convert("RGB"), resolution) for im in images]
        if len({im.size for im in images}) != 1:
            raise ValueError("a batch of images must share one size")
        embeds, pooled = self.encode_prompts(prompts)
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        result = self.pipe(
            image=images[0] if len(images) == 1 else images,
            prompt_embeds=embeds,
            pooled_prompt_embeds=pooled,
            height=images[0].height,
            width=images[0].width,
            max_area=images[0].height * images[0].width,
            _auto_resize=False,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
            max_sequence_length=self.max_sequence_length,
            output_type="np",
        )
        return [Image.fromarray(np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8)) for arr in result.images]

    # ------------------------------------------------------------------ the edit's own sampler, for methods
    def edit_levels(self, condition: Condition, steps: int) -> list[float]:
        """The ``steps + 1`` noise levels ``edit`` steps through at ``condition``'s working size: the pipeline's
        ``linspace(1, 1/steps, steps)`` shifted by its scheduler for that many target tokens (FLUX's
        resolution-dependent shift, ``calculate_shift``), then 0; the float32 values its scheduler holds."""
        from diffusers.pipelines.flux.pipeline_flux_kontext import calculate_shift

        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        # a scheduler of its own: the pipeline's keeps the state of the last edit
        scheduler = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        config = scheduler.config
        mu = calculate_shift(
            condition.layout.target,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
        return scheduler.sigmas.tolist()

    # Restates: diffusers.FlowMatchEulerDiscreteScheduler.step @ diffusers==0.42.1  (its Euler update)
    # Restates: diffusers.FluxKontextPipeline.__call__ @ diffusers==0.42.1  (the timestep it hands the transformer)
    def edit_denoise(self, x_t: torch.Tensor, sigma: float, sigma_next: float, condition: Condition) -> torch.Tensor:
        """One step of ``edit``'s sampler between two of its ``edit_levels``, with its arithmetic: the transformer
        reads the scheduler's timestep (sigma * 1000 in float32, cast to the editor's dtype, then / 1000) and the
        Euler step runs as ``FlowMatchEulerDiscreteScheduler.step`` does (float32 latents plus the float32 sigma
        difference times the velocity, back to the velocity's dtype). The same step as ``denoise`` in exact
        arithmetic; its roundings differ from ``denoise``'s, in bfloat16 even more than in float32."""
        levels = torch.tensor([float(sigma), float(sigma_next)], dtype=torch.float32, device=self.device)
        timestep = (levels[:1] * 1000).to(self.dtype) / 1000
        velocity = self.velocity(x_t, timestep, condition)
        return (x_t.float() + (levels[1] - levels[0]) * velocity).to(velocity.dtype)

    def edit_noise(self, condition: Condition, generators) -> torch.Tensor:
        """The start noise ``edit`` draws from ``generators`` (one per row, seeded as ``edit`` seeds each (prompt,
        seed) pair; or one for the whole batch): the pipeline's own ``prepare_latents`` draw in its latent layout
        (B, C, h, w), then packed, in the editor's dtype. ``noise_like`` draws the packed tokens (B, N, 4C)
        directly in float32, so the same seed gives the same numbers in another order."""
        generators = list(generators)
        if len(generators) not in (1, condition.batch):
            raise ValueError(f"{len(generators)} generators for noise of {condition.batch} rows")
        height, width = condition.extra["size"]
        noise, *_ = self.pipe.prepare_latents(
            None,
            condition.batch,
            self.transformer.config.in_channels // 4,
            height,
            width,
            self.dtype,
            self.device,
            generators if len(generators) == condition.batch else generators[0],
        )
        return noise
