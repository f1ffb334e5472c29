"""FLUX.1-Kontext through diffusers' ``FluxKontextPipeline`` components.

The attack path calls the VAE and the transformer directly (the pipeline's ``__call__`` runs under
``no_grad``) but reproduces the pipeline's context encoding exactly: pixels in [-1, 1], VAE posterior
MODE, ``(z - shift_factor) * scaling_factor``, 2x2 packing, context position ids with axis 0 = 1, and
the joint sequence ``[text | target | context]`` inside every attention call. The edit path is the
stock pipeline call.
"""

from __future__ import annotations

import contextlib
import gc
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..attention import ContextShareProbe, swapped_processors
from .base import ContextLatents, Layout, PromptEmbeddings, resolve_blocks, snap

try:  # diffusers internals used by the probed processor (read, not copied: see docs/ARCHITECTURE.md)
    from diffusers.models.attention_dispatch import dispatch_attention_fn
    from diffusers.models.embeddings import apply_rotary_emb
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, _get_qkv_projections
except ImportError as exc:  # pragma: no cover - only with an incompatible diffusers
    raise ImportError(f"decontext needs diffusers with FluxAttnProcessor (tested with 0.42.1): {exc}") from exc


class ProbedFluxAttnProcessor(FluxAttnProcessor):
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
            # FluxKontextPipeline passes none; a mask would change which keys the share is taken over.
            raise NotImplementedError(f"{self.name}: the context-share probe does not support attention masks")
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
        if self.probe.stop_at == self.name:
            # Only this layer's q and k matter to the loss: its attention, MLP and the rest are skipped.
            self.probe.record(self.name, query, key)
            raise _StopForward
        out = self.probe.attend(self.name, query, key, value, self._attend)
        out = out.flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is None:
            return out
        text_out, image_out = out.split_with_sizes([encoder_hidden_states.shape[1], out.shape[1] - encoder_hidden_states.shape[1]], dim=1)
        image_out = attn.to_out[1](attn.to_out[0](image_out.contiguous()))
        return image_out, attn.to_add_out(text_out.contiguous())

    def _attend(self, query, key, value, scale):
        return dispatch_attention_fn(query, key, value, scale=scale, backend=self._attention_backend, parallel_config=self._parallel_config)


class _StopForward(Exception):
    """Raised by a pre-hook on the first block a method does not need: the rest is never run."""


def _load_quantized_transformer(id_or_dir: str, quantize: str, dtype: torch.dtype, device: torch.device, local_files_only: bool):
    """The transformer with bitsandbytes weight quantisation (diffusers' BitsAndBytesConfig)."""
    if quantize not in ("8bit", "4bit"):
        raise ValueError(f"quantize must be '8bit' or '4bit', got {quantize!r}")
    if device.type != "cuda":
        raise ValueError(f"quantize={quantize!r} uses bitsandbytes kernels, which need a CUDA GPU (device is {device}); run without --quantize on the CPU")
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
        id_or_dir, subfolder="transformer", quantization_config=config, dtype=dtype, local_files_only=local_files_only, device_map={"": device.index or 0}
    )


def _preferred_kontext_resolutions() -> list[tuple[int, int]]:
    from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

    return list(PREFERRED_KONTEXT_RESOLUTIONS)


def vae_latents(vae, x: torch.Tensor) -> torch.Tensor:
    """``FluxKontextPipeline._encode_vae_image``: posterior MODE, then ``(z - shift) * scale``. x in [-1, 1]."""
    latents = vae.encode(x).latent_dist.mode()
    return (latents - vae.config.shift_factor) * vae.config.scaling_factor


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latents -> (B, H/2 * W/2, 4C) tokens (the pipeline's own 2x2 packing)."""
    from diffusers import FluxKontextPipeline

    batch, channels, lat_h, lat_w = latents.shape
    return FluxKontextPipeline._pack_latents(latents, batch, channels, lat_h, lat_w)


def latent_ids(lat_h: int, lat_w: int, context: bool, device=None, dtype=torch.float32) -> torch.Tensor:
    """Position ids (N, 3) of a (lat_h, lat_w) latent's tokens; context tokens get axis 0 = 1."""
    from diffusers import FluxKontextPipeline

    ids = FluxKontextPipeline._prepare_latent_image_ids(1, lat_h // 2, lat_w // 2, device or "cpu", dtype)
    if context:
        ids[..., 0] = 1
    return ids


def joint_velocity(transformer, target, target_ids, context_tokens, context_ids, embeds, pooled, timestep, guidance=None):
    """One Kontext transformer call on ``[target | context]`` image tokens (text ids all zero, as the
    pipeline makes them); returns the prediction for the target tokens. Shared by the attack path
    (``FluxKontextEditor.forward``) and the toy editor's training, so both run the same plumbing."""
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


class FluxKontextEditor:
    """FLUX.1-Kontext (or any model in its diffusers layout, e.g. the tiny and toy editors)."""

    family = "flux_kontext"

    def __init__(
        self,
        pipe,
        name: str = "flux_kontext",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        max_sequence_length: int = 512,
        offload: bool = False,
    ):
        """Wrap a FluxKontextPipeline. ``offload=True`` uses diffusers' model CPU offload (each
        component visits the GPU only while it runs) instead of keeping transformer and VAE resident."""
        self.pipe = pipe
        self.name = name
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_sequence_length = max_sequence_length
        self._prompt_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.recommended: dict = {}  # editing settings shipped with a model folder (decontext_toy.json)
        self.probe = ContextShareProbe()
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
    def from_pretrained(
        cls,
        id_or_dir: str | Path,
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device | None = None,
        max_sequence_length: int | None = None,
        local_files_only: bool | None = None,
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
        path = Path(id_or_dir)
        if local_files_only is None:
            local_files_only = path.exists()
        if path.exists() and not (path / "model_index.json").is_file():
            raise FileNotFoundError(f"{path}: not a diffusers pipeline folder (no model_index.json)")
        if quantize is not None:
            kwargs["transformer"] = _load_quantized_transformer(str(id_or_dir), quantize, dtype, device, local_files_only)
        pipe = FluxKontextPipeline.from_pretrained(str(id_or_dir), dtype=dtype, local_files_only=local_files_only, **kwargs)
        pipe.set_progress_bar_config(disable=True)
        settings_file = path / "decontext_toy.json" if path.exists() else None
        recommended = json.loads(settings_file.read_text()) if settings_file is not None and settings_file.is_file() else {}
        if max_sequence_length is None and recommended.get("max_sequence_length"):
            max_sequence_length = int(recommended["max_sequence_length"])
        if max_sequence_length is None:
            max_sequence_length = min(512, int(getattr(pipe.tokenizer_2, "model_max_length", 512) or 512))
        editor = cls(pipe, name=str(id_or_dir), device=device, dtype=dtype, max_sequence_length=max_sequence_length, offload=offload)
        editor.recommended = recommended
        return editor

    def enable_gradient_checkpointing(self) -> None:
        """Recompute block activations in backward: much less memory per PGD step for ~30% more time."""
        self.transformer.enable_gradient_checkpointing()

    @classmethod
    def tiny(cls, config=None, seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> "FluxKontextEditor":
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
        return self.pipe.vae_scale_factor * 2

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> PromptEmbeddings:
        """Embeddings of each prompt, computed once per distinct text and cached on the editor."""
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
                    for i, text in enumerate(chunk):
                        self._prompt_cache[text] = (embeds[i].to(self.dtype), pooled[i].to(self.dtype))
            finally:
                if move and self.device.type != "cpu":
                    for encoder in encoders:
                        encoder.to("cpu")
                    torch.cuda.empty_cache() if self.device.type == "cuda" else None
        embeds = torch.stack([self._prompt_cache[p][0] for p in prompts])
        pooled = torch.stack([self._prompt_cache[p][1] for p in prompts])
        return PromptEmbeddings(prompts, embeds, pooled)

    def release_text_encoders(self) -> None:
        """Drop the text encoders (T5-XXL alone is ~9.5 GB in bf16); cached embeddings stay usable."""
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
        return snap(round((side * side / aspect) ** 0.5), multiple), snap(round((side * side * aspect) ** 0.5), multiple)

    # ------------------------------------------------------------------ image conditioning
    def encode_context(self, pixels: torch.Tensor, size: tuple[int, int] | None = None) -> ContextLatents:
        """Differentiable context encoding, as FluxKontextPipeline.prepare_latents does it.

        Args:
            pixels: (B, 3, H, W) in [0, 1], any size. Resized (bicubic, antialiased) to ``size`` if it differs.
            size: working (H, W), multiples of ``multiple_of``; default: ``pixels``' own size snapped.
        """
        height, width = pixels.shape[-2:]
        size = size or self.working_size(height, width, "native")
        if size[0] % self.multiple_of or size[1] % self.multiple_of:
            raise ValueError(f"working size {size} is not a multiple of {self.multiple_of}")
        x = pixels.to(self.device, torch.float32)
        if (height, width) != tuple(size):
            x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        x = (x * 2 - 1).to(self.dtype)
        latents = vae_latents(self.vae, x)
        lat_h, lat_w = latents.shape[-2:]
        ids = latent_ids(lat_h, lat_w, True, self.device, self.dtype)
        return ContextLatents(pack_latents(latents), ids, (lat_h, lat_w), tuple(size))

    def target_like(self, context: ContextLatents, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Pure-noise target tokens of the context's size (sigma = 1), and their position ids.

        Noise is drawn on the CPU from ``generator`` so runs are reproducible across devices.
        """
        noise = torch.randn(context.tokens.shape, generator=generator, dtype=torch.float32).to(self.device, self.dtype)
        lat_h, lat_w = context.latent_size
        return noise, latent_ids(lat_h, lat_w, False, self.device, self.dtype)

    def layout(self, embeds: torch.Tensor, target: torch.Tensor, context: ContextLatents) -> Layout:
        return Layout(text=embeds.shape[1], target=target.shape[1], context=context.tokens.shape[1])

    # ------------------------------------------------------------------ transformer
    def _probed_processors(self, blocks: Sequence[str]) -> dict:
        return {self._processor_key(name): ProbedFluxAttnProcessor(self.probe, name) for name in blocks}

    def install_probe(self, blocks: Sequence[str]) -> ContextShareProbe:
        """Put probed processors on ``blocks`` (stock ones everywhere else) until ``remove_probe``.

        Stays installed across forward AND backward, which activation checkpointing needs: it re-runs
        the blocks during backward and must see the same processors. Idempotent for the same blocks.
        """
        blocks = list(blocks)
        if getattr(self, "_probed_blocks", None) == blocks:
            return self.probe
        self.remove_probe()
        self._stock_processors = dict(self.transformer.attn_processors)
        self.transformer.set_attn_processor({**self._stock_processors, **self._probed_processors(blocks)})
        self._probed_blocks = blocks
        return self.probe

    def remove_probe(self) -> None:
        self.probe.stop_at = None
        if getattr(self, "_probed_blocks", None) is not None:
            self.transformer.set_attn_processor(self._stock_processors)
            self._probed_blocks = None

    @contextlib.contextmanager
    def probing(self, blocks: Sequence[str]):
        """Probe ``blocks`` for the duration of the context (for passes whose backward also runs inside)."""
        self.probe.clear()
        with swapped_processors(self.transformer, self._probed_processors(blocks)):
            yield self.probe

    @contextlib.contextmanager
    def _stop_after(self, block: str | None):
        names = self.block_names
        if block is None or block == names[-1]:
            yield
            return
        following = self._block(names[names.index(block) + 1])

        def stop(module, args, kwargs):
            raise _StopForward

        handle = following.register_forward_pre_hook(stop, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    def forward(
        self,
        target: torch.Tensor,
        target_ids: torch.Tensor,
        context: ContextLatents,
        embeds: torch.Tensor,
        pooled: torch.Tensor,
        timestep: torch.Tensor,
        guidance: float | None = 3.5,
        stop_after: str | None = None,
    ) -> torch.Tensor | None:
        """One transformer pass on ``[target | context]`` tokens.

        Args:
            target: (B, N_t, C) noisy target tokens; context: encoded context (batch 1 or B).
            embeds, pooled: (B, L, D) and (B, P) prompt conditioning.
            timestep: (B,) sigma in [0, 1] (the model multiplies by 1000 itself).
            stop_after: name of the last block needed; the blocks after it are skipped, and when that
                block is probed it ends right after its probe (its attention output is not needed).
        Returns:
            The velocity prediction for the target tokens, or None when stopped early.
        """
        batch = target.shape[0]
        context_tokens = context.tokens.expand(batch, -1, -1) if context.tokens.shape[0] == 1 else context.tokens
        if embeds.shape[0] == 1 and batch > 1:  # one prompt for a batch of images
            embeds, pooled = embeds.expand(batch, -1, -1), pooled.expand(batch, -1)
        if timestep.numel() == 1 and batch > 1:
            timestep = timestep.reshape(1).expand(batch)
        self.probe.layout = self.layout(embeds, target, context)
        self.probe.stop_at = stop_after if stop_after in (getattr(self, "_probed_blocks", None) or ()) else None
        guidance_tensor = None
        if self.transformer.config.guidance_embeds:
            guidance_tensor = torch.full((batch,), 3.5 if guidance is None else guidance, device=self.device, dtype=torch.float32)
        try:
            with self._stop_after(stop_after):
                return joint_velocity(
                    self.transformer,
                    target,
                    target_ids,
                    context_tokens,
                    context.ids,
                    embeds.to(self.device, self.dtype),
                    pooled.to(self.device, self.dtype),
                    timestep.to(self.device, self.dtype),
                    guidance_tensor,
                )
        except _StopForward:
            return None
        # probe.stop_at stays set until the next forward: activation checkpointing re-runs the stopped
        # block during backward, and the re-run must take the same (measure-only) path.

    # ------------------------------------------------------------------ editing (the real pipeline)
    def enable_vae_memory_savers(self, tiling: bool = False, slicing: bool = False) -> None:
        """VAE tiling (large images decode tile by tile) and slicing (a batch decodes one image at a time)."""
        if tiling:
            self.vae.enable_tiling()
        if slicing:
            self.vae.enable_slicing()

    def prepare_image(self, image: Image.Image, resolution: str | int = 512) -> Image.Image:
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
        steps: int = 20,
        guidance: float = 3.5,
        resolution: str | int = 512,
    ) -> list[Image.Image]:
        """Edit with FluxKontextPipeline, one output per (prompt, seed) pair, as one batch.

        ``image`` is one image (edited under every prompt) or one image per prompt (same size).
        Prompt embeddings come from the cache (``encode_prompts``), so text encoders may be released.
        """
        if len(prompts) != len(seeds):
            raise ValueError("edit() takes one seed per prompt")
        images = [image] if isinstance(image, Image.Image) else list(image)
        if len(images) not in (1, len(prompts)):
            raise ValueError("edit() takes one image, or one image per prompt")
        self.remove_probe()  # the pipeline runs the stock processors
        images = [self.prepare_image(im.convert("RGB"), resolution) for im in images]
        if len({im.size for im in images}) != 1:
            raise ValueError("a batch of images must share one size")
        embeddings = self.encode_prompts(prompts)
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        result = self.pipe(
            image=images[0] if len(images) == 1 else images,
            prompt_embeds=embeddings.embeds,
            pooled_prompt_embeds=embeddings.pooled,
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
