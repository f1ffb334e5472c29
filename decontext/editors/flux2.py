"""FLUX.2 through diffusers' ``Flux2Pipeline`` ([dev]) and ``Flux2KleinPipeline`` ([klein]).

Both pipelines drive the same ``Flux2Transformer2DModel`` and ``AutoencoderKLFlux2``; they differ in the
text encoder (Mistral3 for [dev], Qwen3 for [klein]) and in guidance: [dev] is guidance-distilled (a
guidance embedding, one transformer call per step, no true CFG); [klein] has no guidance embedding and
the base checkpoints run true CFG against the empty prompt (the step-distilled ones do neither). The
attack's velocity calls are always the conditional branch, with the guidance embedding where the
transformer has one.

How FLUX.2 differs from FLUX.1-Kontext, read from the pipelines (and followed here by calling them):
  - image tokens: VAE posterior mode -> 2x2 patchify to 4C channels -> the VAE's own BatchNorm running
    statistics (``(z - mean) / sqrt(var + eps)``; no shift/scale factors) -> row-major tokens
    (``_encode_vae_image`` + ``_pack_latents``);
  - 4-axis position ids (T, H, W, L): target T = 0; reference image i has T = 10 + 10 i
    (``_prepare_image_ids``); text tokens (0, 0, 0, l);
  - one OR SEVERAL reference images, each at its own size, all concatenated after the target tokens:
    the joint sequence is ``[text | target | ref_0 | ref_1 | ...]`` and the context share counts the
    keys of every reference image (``Layout.context`` = their total token count, from shapes);
  - single-stream blocks are parallel blocks (``Flux2ParallelSelfAttnProcessor``: fused QKV + MLP
    projection); double blocks use ``Flux2AttnProcessor``. Both are hooked by ``editors.blocks``.

The protected image is reference 0 (it fixes the target size, as in the pipeline); further references
(``set_references``) ride along as fixed context.
"""

from __future__ import annotations

import gc
import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..attention import Probed, StopForward
from . import FAMILIES, FLUX2_GUIDANCE
from .base import Condition, Layout, snap, to_batch, vae_pixels
from .blocks import probe_kwargs
from .dit import JointDiTEditor
from .models import load_pipeline, model_folder

SPEC = FAMILIES["flux2"]

PIPELINES = ("Flux2Pipeline", "Flux2KleinPipeline")  # model_index.json _class_name values this editor loads
DEFAULT_GUIDANCE = FLUX2_GUIDANCE
MAX_REFERENCE_AREA = 1024 * 1024  # the pipelines shrink larger reference images to this area
EDIT_DEFAULTS = {"num_inference_steps": 50, "guidance_scale": DEFAULT_GUIDANCE, "resolution": "auto"}
DISTILLED_EDIT_DEFAULTS = {
    "num_inference_steps": 4,
    "guidance_scale": 1.0,
    "resolution": "auto",
}  # step-distilled [klein]


# ---------------------------------------------------------------------------------------------- tiny
@dataclass(frozen=True)
class TinyFlux2Config:
    """Sizes of a tiny FLUX.2 [klein] (real 4B klein values in comments)."""

    num_layers: int = 1  # double-stream blocks ([dev]: 8, diffusers' default config)
    num_single_layers: int = 4  # ([dev]: 48)
    num_attention_heads: int = 2  # ([dev]: 48)
    attention_head_dim: int = 16  # (real 128) = sum(axes_dims_rope)
    axes_dims_rope: tuple[int, int, int, int] = (4, 4, 4, 4)  # T, H, W, L (real (32, 32, 32, 32))
    timestep_guidance_channels: int = 32  # (real 256)
    guidance_embeds: bool = False  # [klein]: no guidance embedding ([dev]: True)
    latent_channels: int = 8  # (real 32; the transformer sees 4x after 2x2 patchify)
    vae_channels: tuple[int, ...] = (8, 8, 16, 16)  # 4 blocks -> 8x, like the real VAE
    qwen_hidden: int = (
        16  # Qwen3 width (real 2560); joint_attention_dim = this x len(text_encoder_out_layers) (stacked hidden states)
    )
    qwen_layers: int = 3
    qwen_heads: int = 2
    qwen_kv_heads: int = 1
    text_encoder_out_layers: tuple[int, int, int] = (1, 2, 3)  # (real (9, 18, 27))
    max_text_tokens: int = 24  # (real 512)
    is_distilled: bool = False  # base [klein]: true CFG against "" when guidance_scale > 1


# Our own Jinja rendering of Qwen3's chat format for one user turn with thinking switched off.
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' ~ message['role'] ~ '\\n' ~ message['content'] ~ '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and not enable_thinking -%}{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}"
    "{%- endif -%}"
)


def tiny_flux2_klein_components(config: TinyFlux2Config = TinyFlux2Config(), seed: int = 0) -> dict:
    """Components of a ``Flux2KleinPipeline`` with seeded random weights, built offline (no download).

    The VAE's BatchNorm running statistics are drawn too, so the latent normalisation is exercised."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from .tiny import _seeded, qwen_tokenizer

    if sum(config.axes_dims_rope) != config.attention_head_dim:
        raise ValueError(
            f"sum(axes_dims_rope)={sum(config.axes_dims_rope)} "
            f"must equal attention_head_dim={config.attention_head_dim}"
        )
    tokenizer = qwen_tokenizer()
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    with _seeded(seed):
        transformer = Flux2Transformer2DModel(
            patch_size=1,
            in_channels=4 * config.latent_channels,
            num_layers=config.num_layers,
            num_single_layers=config.num_single_layers,
            attention_head_dim=config.attention_head_dim,
            num_attention_heads=config.num_attention_heads,
            joint_attention_dim=len(config.text_encoder_out_layers) * config.qwen_hidden,
            timestep_guidance_channels=config.timestep_guidance_channels,
            axes_dims_rope=config.axes_dims_rope,
            guidance_embeds=config.guidance_embeds,
        )
        blocks = len(config.vae_channels)
        vae = AutoencoderKLFlux2(
            down_block_types=("DownEncoderBlock2D",) * blocks,
            up_block_types=("UpDecoderBlock2D",) * blocks,
            block_out_channels=config.vae_channels,
            layers_per_block=1,
            latent_channels=config.latent_channels,
            norm_num_groups=min(8, min(config.vae_channels)),
            sample_size=32,
        )
        vae.bn.running_mean.copy_(0.1 * torch.randn_like(vae.bn.running_mean))
        vae.bn.running_var.copy_(0.5 + torch.rand_like(vae.bn.running_var))
        text_encoder = Qwen3ForCausalLM(
            Qwen3Config(
                vocab_size=len(tokenizer),
                hidden_size=config.qwen_hidden,
                intermediate_size=2 * config.qwen_hidden,
                num_hidden_layers=config.qwen_layers,
                num_attention_heads=config.qwen_heads,
                num_key_value_heads=config.qwen_kv_heads,
                head_dim=config.qwen_hidden // config.qwen_heads,
                max_position_embeddings=512,
                pad_token_id=pad,
                bos_token_id=pad,
                eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
            )
        )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    for module in (transformer, vae, text_encoder):
        module.eval()
    return dict(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        is_distilled=config.is_distilled,
    )


# ---------------------------------------------------------------------------------------------- editor
def _pipeline_class(name: str):
    import diffusers

    if name not in PIPELINES:
        raise ValueError(
            f"not a FLUX.2 pipeline: model_index.json names {name!r} (this editor loads {', '.join(PIPELINES)})"
        )
    return getattr(diffusers, name)


class Flux2Editor(JointDiTEditor):
    """FLUX.2 [dev] or [klein] (or any checkpoint in their diffusers layout, e.g. the tiny one)."""

    family = SPEC.name
    capabilities = SPEC.capabilities
    min_resolution = SPEC.min_resolution
    text_embedding_keys = ("embeds",)  # the stacked hidden states of the text encoder (no pooled embedding in FLUX.2)

    def __init__(
        self,
        pipe,
        name: str = "flux2",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        max_sequence_length: int = 512,
        offload: bool = False,
        guidance: float = DEFAULT_GUIDANCE,
        text_encoder_out_layers: Sequence[int] | None = None,
    ):
        """Wrap a Flux2Pipeline or Flux2KleinPipeline. ``guidance``: the guidance-embedding value of the
        attack's velocity calls (used only by transformers with a guidance embedding, i.e. [dev]).
        ``text_encoder_out_layers``: hidden layers stacked into the prompt embedding (default: the pipeline's)."""
        self.pipe = pipe
        self.name = name
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_sequence_length = max_sequence_length
        self.guidance = guidance
        default_layers = inspect.signature(pipe.encode_prompt).parameters["text_encoder_out_layers"].default
        self.text_encoder_out_layers = tuple(text_encoder_out_layers or default_layers)
        self._prompt_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._references: list[
            tuple[torch.Tensor, tuple[int, int]]
        ] = []  # fixed extra references: (tokens (1, N, C), grid)
        self.recommended = dict(DISTILLED_EDIT_DEFAULTS if self.is_distilled else EDIT_DEFAULTS)
        self._init_probe_state()
        for module in (pipe.transformer, pipe.vae):
            module.requires_grad_(False)
            module.eval()
            if module.dtype != dtype:
                module.to(dtype=dtype)
        self.offload = offload
        if offload:
            if self.device.type == "cpu":
                raise ValueError("offload moves components to a GPU while they run; it needs a GPU device")
            pipe.enable_model_cpu_offload(device=self.device)
        else:
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
        guidance: float = DEFAULT_GUIDANCE,
    ) -> "Flux2Editor":
        if model == "tiny":
            if offload:
                raise ValueError("--offload is for real models on a GPU, not the tiny model")
            editor = cls.tiny(seed=seed, device=device, dtype=dtype)
        else:
            editor = cls.from_pretrained(model, dtype=dtype, device=device, offload=offload)
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
        **kwargs,
    ) -> "Flux2Editor":
        """Load a FLUX.2 pipeline folder or hub id (``black-forest-labs/FLUX.2-dev``, ``.../FLUX.2-klein-4B``):
        the pipeline class is the one its model_index.json names (Flux2Pipeline or Flux2KleinPipeline),
        safetensors weights only, no remote code."""
        from diffusers import DiffusionPipeline

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        folder = model_folder(str(id_or_dir), cls.family)
        index = (
            json.loads((folder / "model_index.json").read_text())
            if folder is not None
            else DiffusionPipeline.load_config(str(id_or_dir))
        )
        pipeline_class = _pipeline_class(index.get("_class_name", "?"))
        pipe = load_pipeline(pipeline_class, id_or_dir, dtype, use_safetensors=True, **kwargs)
        pipe.set_progress_bar_config(disable=True)
        shipped_file = (
            folder / "decontext_flux2.json" if folder is not None else None
        )  # optional settings a folder ships (like the toy)
        shipped = json.loads(shipped_file.read_text()) if shipped_file is not None and shipped_file.is_file() else {}
        layers = shipped.pop("text_encoder_out_layers", None)
        if max_sequence_length is None:
            max_sequence_length = int(shipped.pop("max_sequence_length", 512))
        editor = cls(
            pipe,
            name=str(id_or_dir),
            device=device,
            dtype=dtype,
            max_sequence_length=max_sequence_length,
            offload=offload,
            text_encoder_out_layers=layers,
        )
        editor.recommended.update(shipped)
        return editor

    @classmethod
    def tiny(
        cls,
        config: TinyFlux2Config | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> "Flux2Editor":
        """A random-weight FLUX.2 [klein] built offline from config objects."""
        from diffusers import Flux2KleinPipeline

        config = config or TinyFlux2Config()
        pipe = Flux2KleinPipeline(**tiny_flux2_klein_components(config, seed=seed))
        pipe.set_progress_bar_config(disable=True)
        return cls(
            pipe,
            name="tiny",
            device=device,
            dtype=dtype,
            max_sequence_length=config.max_text_tokens,
            text_encoder_out_layers=config.text_encoder_out_layers,
        )

    def save_pretrained(self, folder: str | Path) -> None:
        """The pipeline (safetensors) plus the settings ``from_pretrained`` cannot read from it."""
        self.pipe.save_pretrained(str(folder), safe_serialization=True)
        settings = {
            "max_sequence_length": self.max_sequence_length,
            "text_encoder_out_layers": list(self.text_encoder_out_layers),
        }
        (Path(folder) / "decontext_flux2.json").write_text(json.dumps(settings))

    # ------------------------------------------------------------------ structure
    @property
    def transformer(self):
        return self.pipe.transformer

    @property
    def vae(self):
        return self.pipe.vae

    @property
    def is_distilled(self) -> bool:
        """A step-distilled [klein]: no CFG at edit time."""
        return bool(getattr(self.pipe.config, "is_distilled", False))

    @property
    def true_cfg(self) -> bool:
        """Whether the edit path runs a second, empty-prompt branch ([klein] base) rather than a guidance embedding."""
        return "negative_prompt_embeds" in inspect.signature(self.pipe.__call__).parameters and not self.is_distilled

    @property
    def multiple_of(self) -> int:
        """Pixel sizes must be multiples of this (VAE downsampling x 2x2 patchify)."""
        return (2 ** (len(self.vae.config.block_out_channels) - 1)) * 2

    # ------------------------------------------------------------------ text
    def _templated(self, prompt: str) -> str:
        """The text the pipeline's tokenizer sees for ``prompt`` (its chat template)."""
        tokenizer = self.pipe.tokenizer
        if type(self.pipe).__name__ == "Flux2KleinPipeline":
            return tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, enable_thinking=False
            )
        from diffusers.pipelines.flux2.pipeline_flux2 import format_input

        return tokenizer.apply_chat_template(
            format_input(prompts=[prompt], system_message=self.pipe.system_message)[0],
            tokenize=False,
            add_generation_prompt=False,
        )

    def _prompt_mask(self, prompt: str, length: int) -> torch.Tensor:
        """(length,) 1 on the tokens that spell ``prompt`` inside its chat template, 0 elsewhere."""
        tokenizer = getattr(
            self.pipe.tokenizer, "tokenizer", self.pipe.tokenizer
        )  # [dev]: a processor around the tokenizer
        text = self._templated(prompt)
        start = text.rfind(prompt) if prompt else -1
        encoded = tokenizer(
            text,
            padding="max_length",
            truncation=True,
            max_length=length,
            return_offsets_mapping=True,
            add_special_tokens=False,
        )
        mask = torch.zeros(length)
        if start < 0:
            return mask
        for i, ((lo, hi), keep) in enumerate(zip(encoded["offset_mapping"], encoded["attention_mask"], strict=False)):
            if keep and hi > lo and lo >= start and hi <= start + len(prompt):
                mask[i] = 1
        return mask

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """(N, L, D) prompt embeddings (the pipeline's ``encode_prompt``), computed once per distinct text and
        cached."""
        prompts = list(prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            if self.pipe.text_encoder is None:
                raise RuntimeError(f"the text encoder was released; cannot encode new prompts such as {missing[0]!r}")
            move = not self.offload
            if move:
                self.pipe.text_encoder.to(self.device)
            try:
                for start in range(0, len(missing), 8):
                    chunk = missing[start : start + 8]
                    embeds, _ = self.pipe.encode_prompt(
                        prompt=chunk,
                        device=self.device,
                        max_sequence_length=self.max_sequence_length,
                        text_encoder_out_layers=self.text_encoder_out_layers,
                    )
                    for i, text in enumerate(chunk):
                        self._prompt_cache[text] = (embeds[i].to(self.dtype), self._prompt_mask(text, embeds.shape[1]))
            finally:
                if move and self.device.type != "cpu":
                    self.pipe.text_encoder.to("cpu")
                    torch.cuda.empty_cache() if self.device.type == "cuda" else None
        return torch.stack([self._prompt_cache[p][0] for p in prompts])

    def text_masks(self, prompts: Sequence[str]) -> torch.Tensor:
        self.encode_prompts(prompts)
        return torch.stack([self._prompt_cache[p][1] for p in prompts])

    def prepare(self, prompts: Sequence[str], release: bool = True) -> None:
        """Embed ``prompts`` (and "" where the edit path runs true CFG) once; with ``release``, drop the
        text encoder (Mistral-Small-3.1 24B for [dev]): conditioning is prompt-only."""
        self.encode_prompts(list(prompts) + ([""] if self.true_cfg else []))
        if release:
            self.pipe.text_encoder = None
            gc.collect()

    # ------------------------------------------------------------------ geometry
    def working_size(self, height: int, width: int, resolution: str | int = "auto") -> tuple[int, int]:
        """``auto``: what the FLUX.2 pipelines do with a reference image (shrunk to 1024x1024 px area when
        larger, then snapped down to the model's multiple); ``native``: snapped only; N: an area of
        N x N px at the image's aspect ratio (at most the pipelines' 1024x1024 cap)."""
        multiple = self.multiple_of
        if resolution == "native":
            return snap(height, multiple), snap(width, multiple)
        if resolution == "auto":
            if height * width > MAX_REFERENCE_AREA:
                scale = math.sqrt(MAX_REFERENCE_AREA / (height * width))
                height, width = int(height * scale), int(width * scale)
            return snap(height, multiple), snap(width, multiple)
        side = int(resolution)
        if side < multiple:
            raise ValueError(f"resolution {side} is below the model's minimum of {multiple} px")
        if side * side > MAX_REFERENCE_AREA:
            raise ValueError(f"resolution {side}: the FLUX.2 pipelines shrink reference images above 1024x1024 px area")
        aspect = width / height
        return snap(round((side * side / aspect) ** 0.5), multiple), snap(
            round((side * side * aspect) ** 0.5), multiple
        )

    def token_grid(self, size: tuple[int, int]) -> tuple[int, int]:
        """(rows, cols) of image tokens at a pixel ``size`` (VAE downsampling x 2x2 patchify)."""
        return size[0] // self.multiple_of, size[1] // self.multiple_of

    # ------------------------------------------------------------------ image tokens
    def _latent_grid(self, pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, 4C, rows, cols) normalised patchified latents: exactly ``Flux2Pipeline._encode_vae_image``
        (posterior mode, 2x2 patchify, BatchNorm running statistics), differentiable."""
        return self.pipe._encode_vae_image(self._to_working(pixels, size), generator=None)

    def image_latents(self, pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, N, 4C) image tokens in the pipeline's row-major order (``_pack_latents``)."""
        return self.pipe._pack_latents(self._latent_grid(pixels, size)).to(self.dtype)

    @torch.no_grad()
    def set_references(self, images: Sequence[torch.Tensor | Image.Image], resolution: str | int = "auto") -> None:
        """Further reference images, after the protected one, as the pipeline would get them in
        ``image=[protected, *images]``: each at its own working size, encoded once (they are not optimised)."""
        self._references = []
        for image in images:
            if isinstance(image, Image.Image):
                image = torch.from_numpy(np.asarray(image.convert("RGB"))).permute(2, 0, 1)[None].float() / 255
            size = self.working_size(*image.shape[-2:], resolution)
            self._references.append((self.image_latents(image, size).detach(), self.token_grid(size)))

    def _grids(self, lat_grids: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        return [torch.zeros(1, 1, rows, cols) for rows, cols in lat_grids]

    def condition(
        self, pixels: torch.Tensor, prompts: Sequence[str], size: tuple[int, int], step: int | None = None
    ) -> Condition:
        """Reference tokens of ``pixels`` (differentiable; the pipeline's ``prepare_image_latents``) plus
        any fixed further references, position ids from the pipeline's own helpers, cached prompt embeddings."""
        prompts = list(prompts)
        latents = self.image_latents(pixels, size)
        embeds = self.encode_prompts(prompts)
        batch = max(latents.shape[0], len(prompts))
        if latents.shape[0] not in (1, batch) or len(prompts) not in (1, batch):
            raise ValueError(
                f"{latents.shape[0]} images and {len(prompts)} prompts: give one of either, or as many of both"
            )
        grid = self.token_grid(size)
        grids = [grid] + [g for _, g in self._references]
        # The pipeline derives every id from latent shapes; zero tensors of those shapes feed its helpers.
        target_ids = self.pipe._prepare_latent_ids(torch.zeros(1, 1, *grid))[0]
        context_ids = self.pipe._prepare_image_ids(self._grids(grids))[0]
        companions = torch.cat([tokens for tokens, _ in self._references], dim=1) if self._references else None
        extra = {
            "embeds": embeds,
            "text_mask": self.text_masks(prompts),
            "text_ids": self.pipe._prepare_text_ids(embeds[:1])[0].to(self.device),
            "target_ids": target_ids.to(self.device),
            "context_ids": context_ids.to(self.device),
            "companions": companions,
            "size": tuple(size),
        }
        latents = to_batch(latents, batch)
        context = latents.shape[1] + (0 if companions is None else companions.shape[1])
        layout = Layout(text=embeds.shape[1], target=grid[0] * grid[1], context=context)
        return Condition(latents, layout, prompts, extra)

    def _context_tokens(self, condition: Condition, batch: int) -> torch.Tensor:
        own = to_batch(condition.latents, batch)
        companions = condition.extra.get("companions")
        return own if companions is None else torch.cat([own, to_batch(companions, batch)], dim=1)

    def _text_inputs(self, condition: Condition, sigma: torch.Tensor, batch: int):
        embeds = to_batch(condition.extra["embeds"], batch).to(self.device, self.dtype)
        guidance = None
        if self.transformer.config.guidance_embeds:  # [dev]: guidance-distilled
            guidance = torch.full((batch,), self.guidance, device=self.device, dtype=torch.float32)
        return embeds, None, guidance

    def probed_velocity(
        self, x_t: torch.Tensor, sigma: torch.Tensor, condition: Condition, stop_after: str | None = None
    ) -> Probed:
        """One transformer pass on ``[text | x_t | references]``: the prediction for the target tokens and
        what an installed probe measured in it.

        Args:
            x_t: (B, N, C) noisy target tokens (B = condition.batch, or 1 to share one draw).
            sigma: (B,) or scalar noise level in [0, 1] (the pipeline's ``timestep / 1000``).
            stop_after: the last block needed; the pass ends there and its velocity is None.
        """
        batch, x_t, sigma = self._batched(x_t, sigma, condition)
        context = self._context_tokens(condition, batch)
        embeds, _, guidance = self._text_inputs(condition, sigma, batch)
        call = self._probe_call(
            condition, Layout(text=embeds.shape[1], target=x_t.shape[1], context=context.shape[1]), batch, stop_after
        )
        try:
            with self.blocks.stop_after(stop_after):
                out = self.transformer(
                    hidden_states=torch.cat([x_t.to(self.dtype), context.to(self.dtype)], dim=1),
                    encoder_hidden_states=embeds,
                    timestep=sigma,
                    img_ids=torch.cat([condition.extra["target_ids"], condition.extra["context_ids"]], dim=0),
                    txt_ids=condition.extra["text_ids"],
                    guidance=guidance,
                    joint_attention_kwargs=probe_kwargs(call),
                    return_dict=False,
                )[0]
        except StopForward:
            return Probed.of(None, call)
        return Probed.of(out[:, : x_t.shape[1]], call)

    # Restates: diffusers.Flux2Pipeline.__call__ @ diffusers==0.42.1  (its decoding of the final latents)
    # Restates: diffusers.Flux2KleinPipeline.__call__ @ diffusers==0.42.1  (the same decoding)
    def decode(self, latents: torch.Tensor, condition: Condition) -> torch.Tensor:
        """Clean target tokens -> pixels in [0, 1]: the pipeline's unpacking by ids, BatchNorm undone,
        2x2 unpatchify, VAE decode (differentiable)."""
        ids = condition.extra["target_ids"][None].expand(latents.shape[0], -1, -1)
        grid = self.pipe._unpack_latents_with_ids(latents, ids)
        bn = self.vae.bn
        std = torch.sqrt(bn.running_var + self.vae.config.batch_norm_eps).view(1, -1, 1, 1).to(grid.dtype)
        grid = grid * std + bn.running_mean.view(1, -1, 1, 1).to(grid.dtype)
        return vae_pixels(self.vae, self.pipe._unpatchify_latents(grid))

    # ------------------------------------------------------------------ editing (the real pipeline)
    def prepare_image(self, image: Image.Image, resolution: str | int = "auto") -> Image.Image:
        """Resize to the working size with the pipelines' own resampling (LANCZOS), so the pipeline
        takes the image as it is (no further shrink or crop)."""
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
        guidance: float = DEFAULT_GUIDANCE,
        resolution: str | int = "auto",
        references: Sequence[Image.Image] = (),
    ) -> list[Image.Image]:
        """Edit with the stock FLUX.2 pipeline, one output per (prompt, seed).

        ``image`` is one image (edited under every prompt) or one per prompt; ``references`` are further
        reference images passed after it (``image=[image, *references]``). ``guidance`` is the pipeline's
        ``guidance_scale``: the guidance embedding on [dev], true CFG against "" on a base [klein]."""
        images = [self.prepare_image(im.convert("RGB"), resolution) for im in self._edit_images(image, prompts, seeds)]
        refs = [self.prepare_image(im.convert("RGB"), resolution) for im in references]
        groups = (
            [(images[0], list(range(len(prompts))))] if len(images) == 1 else [(im, [i]) for i, im in enumerate(images)]
        )
        outputs: dict[int, Image.Image] = {}
        for picture, rows in groups:
            chosen = [prompts[i] for i in rows]
            kwargs = {}
            if self.true_cfg and guidance > 1:
                kwargs["negative_prompt_embeds"] = self.encode_prompts([""] * len(rows))
            result = self.pipe(
                image=[picture, *refs],
                prompt_embeds=self.encode_prompts(chosen),
                height=picture.height,
                width=picture.width,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=[torch.Generator().manual_seed(int(seeds[i])) for i in rows],
                max_sequence_length=self.max_sequence_length,
                text_encoder_out_layers=self.text_encoder_out_layers,
                output_type="np",
                **kwargs,
            )
            for i, arr in zip(rows, result.images, strict=False):
                outputs[i] = Image.fromarray(np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8))
        return [outputs[i] for i in range(len(prompts))]
