"""Step1X-Edit (StepFun; v1.0 and v1.1) on the editor seam.

Facts: ../shared/reference/step1x_edit.md (a spec written from the official code). The model is
  - the DiT: diffusers' ``FluxTransformer2DModel`` (no guidance embedding, text width 4096, pooled
    768), with weights converted from the OFFICIAL single-file checkpoint by diffusers' own Flux
    converter (``step1x_connector.load_step1x_checkpoint``);
  - the connector (``step1x_connector.Step1XConnector``): Qwen2.5-VL features -> DiT text tokens and
    pooled vector, dependent on the timestep, so it runs inside every velocity call;
  - Qwen2.5-VL-7B-Instruct through transformers: it reads the instruction AND the image, through a
    path with no gradient (the official attack re-reads the perturbed image every step; here
    ``vlm_refresh`` says how often);
  - the FLUX VAE through diffusers ``AutoencoderKL``.

The joint attention sequence is ``[text (max_length) | target | reference]``, the same order as
Kontext's, so the probe, ``Layout`` and every method are shared (``dit.Flux1DiTEditor``).

Where we differ from the official code, on purpose: the attack encodes the reference with the VAE
posterior MODE (the official attack samples it, which only adds gradient noise); any aspect ratio
works (the official attack silently does nothing on non-square inputs); the official re-tokenisation
of quoted characters in the Qwen prompt is not reproduced (it changes only prompts with quotes).
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import FAMILIES, VLM_REFRESH
from .base import Condition, Layout, level_working_size, snap, to_batch
from .dit import Flux1DiTEditor, image_ids, pack_latents, unpack_latents
from .step1x_connector import load_step1x_checkpoint, qwen_features

SPEC = FAMILIES["step1x_edit"]

REAL_DROP_TOKENS = 217  # leading Qwen tokens the official code drops (system turn + the fixed prefix)
REAL_MAX_LENGTH = 640  # Qwen tokens kept (zero-padded); the DiT's text block
QWEN_MIN_PIXELS, QWEN_MAX_PIXELS = 256 * 28 * 28, 324 * 28 * 28  # the official AutoProcessor's bounds
DEFAULT_VLM = "Qwen/Qwen2.5-VL-7B-Instruct"
PREFIX_FLAG = "--prefix-file"
# Official sampler: 28 steps, true CFG 6.0 (negative = "" with the image), size level 512 (the CLI's).
EDIT_DEFAULTS = {"num_inference_steps": 28, "guidance_scale": 6.0, "resolution": 512}
CFG_RESCALE_ABOVE = {"v1.0": 1.0, "v1.1": 0.93}  # t above which v1.1 rescales the CFG difference (v1.0 never)
CFG_RESCALE_POWER = 0.4
REFERENCE_IDS = {"v1.0": (0, 0), "v1.1": (1, 1)}  # (axis 0, row/col offset) of the reference tokens
RESIZE_FILTER = {"v1.0": Image.BICUBIC, "v1.1": Image.LANCZOS}  # v1.0 used PIL's default (bicubic)


def official_size(height: int, width: int, level: int, multiple: int = 16) -> tuple[int, int]:
    """The official resize: keep the aspect ratio at an area of about ``level``^2, then floor both sides
    to ``multiple``. The longer side is computed first (ceil), the other from it (ceil)."""
    ratio = width / height
    if width > height:
        new_w = math.ceil(math.sqrt(level * level * ratio))
        new_h = math.ceil(new_w / ratio)
    else:
        new_h = math.ceil(math.sqrt(level * level / ratio))
        new_w = math.ceil(new_h * ratio)
    return snap(new_h, multiple), snap(new_w, multiple)


# Restates: diffusers.FlowMatchEulerDiscreteScheduler._time_shift_exponential @ diffusers==0.42.1
def shifted_schedule(steps: int, image_tokens: int) -> list[float]:
    """The official (BFL) time schedule: linspace(1, 0, steps + 1) pushed toward 1 by a shift mu that
    grows linearly with the target token count (0.5 at 256 tokens, 1.15 at 4096: diffusers' own
    ``calculate_shift``). The shift itself restates the official code's ``time_shift(mu, 1, t)`` (the same
    as diffusers' ``FlowMatchEulerDiscreteScheduler`` exponential time shift), on this exact grid."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    mu = calculate_shift(image_tokens, 256, 4096, 0.5, 1.15)
    times = torch.linspace(1, 0, steps + 1).tolist()
    return [0.0 if t <= 0 else math.exp(mu) / (math.exp(mu) + (1 / t - 1)) for t in times]


def guided_velocity(
    cond: torch.Tensor, uncond: torch.Tensor, scale: float, t: float, rescale_above: float
) -> torch.Tensor:
    """True CFG; above ``rescale_above`` the difference is divided, per token, by its channel norm to the
    power 0.4 where that norm exceeds 1 (Step1X-Edit v1.1)."""
    diff = cond - uncond
    if t > rescale_above:
        norm = diff.norm(dim=-1, keepdim=True)
        diff = diff / torch.where(norm > 1, norm.pow(CFG_RESCALE_POWER), torch.ones_like(norm))
    return uncond + scale * diff


def to_vlm_image(pixels: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> PIL as the official code hands it to Qwen (x255, truncated to uint8)."""
    array = (pixels.detach().float().clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


class Step1XEditor(Flux1DiTEditor):
    """Step1X-Edit v1.0 / v1.1: official single-file DiT + connector, FLUX VAE, Qwen2.5-VL."""

    family = SPEC.name
    capabilities = SPEC.capabilities
    min_resolution = SPEC.min_resolution
    text_embedding_keys = ("features",)  # the Qwen2.5-VL hidden states the connector reads
    text_mask_key = "mask"  # the connector's valid-token mask (the VLM's tokens of the prompt and its template)

    def __init__(
        self,
        transformer,
        connector,
        vae,
        vlm,
        processor,
        prefix: str,
        version: str = "v1.1",
        name: str = "step1x_edit",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        drop_tokens: int = REAL_DROP_TOKENS,
        max_length: int = REAL_MAX_LENGTH,
        vlm_refresh: int = VLM_REFRESH,
        vlm_offload: bool = False,
    ):
        """``vlm_refresh``: re-read the current (perturbed) image with Qwen every K optimiser steps (1 =
        every step, as the official attack; 0 = read the clean image once). ``vlm_offload``: keep Qwen on
        the CPU and bring it to the device only while it encodes."""
        if version not in REFERENCE_IDS:
            raise ValueError(f"unknown Step1X-Edit version {version!r} (v1.0 or v1.1)")
        if vlm_refresh < 0:
            raise ValueError(f"vlm_refresh must be >= 0, got {vlm_refresh}")
        self.transformer, self.connector, self.vae, self.vlm, self.processor = (
            transformer,
            connector,
            vae,
            vlm,
            processor,
        )
        self.prefix, self.version, self.name = prefix, version, name
        self.device, self.dtype = torch.device(device), dtype
        self.drop_tokens, self.max_length = drop_tokens, max_length
        self.vlm_refresh, self.vlm_offload = vlm_refresh, vlm_offload
        self.recommended = dict(EDIT_DEFAULTS)
        self._pool: list[str] = []
        self._snapshot: torch.Tensor | None = None  # the pixels Qwen last read (no gradient)
        self._features: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._init_probe_state()
        # DiT and connector in the compute dtype; the VAE in fp32 as the official code keeps it (fp64 in checks).
        vae_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        for module, module_dtype in ((transformer, dtype), (connector, dtype), (vae, vae_dtype)):
            module.requires_grad_(False).eval().to(self.device, module_dtype)
        vlm.requires_grad_(False).eval()
        vlm.to("cpu" if vlm_offload else self.device)

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, model: str, device: torch.device, dtype: torch.dtype, seed: int = 0, **options) -> "Step1XEditor":
        if model == "tiny":
            for key in ("vae", "vlm", "prefix_file"):
                if options.get(key):
                    raise ValueError(
                        f"--{key.replace('_', '-')} is for real checkpoints; the tiny model brings its own"
                    )
                options.pop(key, None)
            return cls.tiny(seed=seed, device=device, dtype=dtype, **options)
        return cls.from_pretrained(model, device=device, dtype=dtype, **options)

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        vae: str | Path | None = None,
        vlm: str | Path | None = None,
        prefix_file: str | Path | None = None,
        prefix: str | None = None,
        drop_tokens: int | None = None,
        max_length: int | None = None,
        head_dim: int = 128,
        axes_dims_rope: Sequence[int] | None = None,
        connector_heads: int | None = None,
        **kwargs,
    ) -> "Step1XEditor":
        """Load the official single-file checkpoint (or a folder holding one ``*.safetensors`` besides
        ``vae.safetensors``), the FLUX VAE and Qwen2.5-VL. ``prefix_file`` (or ``prefix``) is the official
        conditioning prefix; a folder may carry it as ``prefix.txt`` and its sizes in ``step1x.json``
        (the tiny model does)."""
        import json

        path = Path(checkpoint)
        folder = path if path.is_dir() else path.parent
        if path.is_dir():
            candidates = sorted(p for p in path.glob("*.safetensors") if p.name != "vae.safetensors")
            if len(candidates) != 1:
                raise FileNotFoundError(
                    f"{path}: expected exactly one Step1X-Edit checkpoint (*.safetensors besides vae.safetensors), "
                    f"found {[p.name for p in candidates]}"
                )
            path = candidates[0]
        sizes = json.loads((folder / "step1x.json").read_text()) if (folder / "step1x.json").is_file() else {}
        head_dim = sizes.get("head_dim", head_dim)
        axes_dims_rope = sizes.get("axes_dims_rope", axes_dims_rope)
        connector_heads = sizes.get("connector_heads", connector_heads)
        drop_tokens = drop_tokens if drop_tokens is not None else sizes.get("drop_tokens", REAL_DROP_TOKENS)
        max_length = max_length if max_length is not None else sizes.get("max_length", REAL_MAX_LENGTH)
        if prefix is None:
            prefix_path = (
                Path(prefix_file)
                if prefix_file
                else (folder / "prefix.txt" if (folder / "prefix.txt").is_file() else None)
            )
            if prefix_path is None:
                raise ValueError(
                    "Step1X-Edit conditions Qwen2.5-VL on a fixed prefix it was trained with; "
                    f"pass it with {PREFIX_FLAG} "
                    "(the text of Qwen25VL_7b_PREFIX in the official repo's modules/conditioner.py, saved as a file)"
                )
            if not prefix_path.is_file():
                raise FileNotFoundError(f"{PREFIX_FLAG} {prefix_path}: no such file")
            prefix = prefix_path.read_text(encoding="utf-8").rstrip("\n")
        device = torch.device(device)
        transformer, connector, version = load_step1x_checkpoint(
            path, dtype=dtype, head_dim=head_dim, axes_dims_rope=axes_dims_rope, connector_heads=connector_heads
        )
        vae_model = load_flux_vae(vae or _default_vae(folder))
        vlm_model, processor = load_qwen(
            vlm or _default_vlm(folder),
            dtype,
            sizes.get("min_pixels", QWEN_MIN_PIXELS),
            sizes.get("max_pixels", QWEN_MAX_PIXELS),
        )
        return cls(
            transformer,
            connector,
            vae_model,
            vlm_model,
            processor,
            prefix,
            version,
            name=str(checkpoint),
            device=device,
            dtype=dtype,
            drop_tokens=drop_tokens,
            max_length=max_length,
            **kwargs,
        )

    @classmethod
    def tiny(
        cls,
        config=None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        version: str = "v1.1",
        folder: str | Path | None = None,
        **kwargs,
    ) -> "Step1XEditor":
        """Random weights, built offline: writes a tiny checkpoint in the OFFICIAL single-file layout, a
        diffusers VAE folder and a Qwen2.5-VL folder, then loads them through ``from_pretrained``."""
        from .tiny import write_tiny_step1x_folder

        scratch = folder is None  # a folder of our own: everything is in memory once loaded, so it goes
        folder = Path(tempfile.mkdtemp(prefix="decontext-step1x-tiny-")) if scratch else Path(folder)
        try:
            write_tiny_step1x_folder(folder, config, version=version, seed=seed)
            editor = cls.from_pretrained(folder, device=device, dtype=dtype, **kwargs)
        finally:
            if scratch:
                shutil.rmtree(folder, ignore_errors=True)
        editor.name = "tiny"
        return editor

    # ------------------------------------------------------------------ conditioning
    def prepare(self, prompts: Sequence[str], release: bool = True) -> None:
        """Remember the prompt pool: with ``vlm_refresh = 0`` every prompt is encoded for an image at
        once, so Qwen visits the GPU once per image. Nothing can be released for good: Qwen reads
        every new image."""
        self._pool = list(dict.fromkeys(prompts))

    def working_size(self, height: int, width: int, resolution: str | int = "auto") -> tuple[int, int]:
        """``auto``: the official resize at size level 512 (any aspect ratio); N: the official resize at
        level N (512 / 768 / 1024 are the official levels); ``native``: the image's size snapped down."""
        return level_working_size(
            height, width, resolution, self.multiple_of, EDIT_DEFAULTS["resolution"], official_size
        )

    def _vlm_images(self, pixels: torch.Tensor, size: tuple[int, int]) -> list[Image.Image]:
        """The resized reference as Qwen sees it: the same pixels the VAE gets, as uint8."""
        x = pixels.detach().float()
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        return [to_vlm_image(image) for image in x]

    def _encode(self, images: list[Image.Image], prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.vlm_offload:
            self.vlm.to(self.device)
        try:
            return qwen_features(
                self.vlm,
                self.processor,
                images,
                prompts,
                self.prefix,
                self.drop_tokens,
                self.max_length,
                self.device,
                self.dtype,
                prefix_flag=PREFIX_FLAG,
            )
        finally:
            if self.vlm_offload:
                self.vlm.to("cpu")

    def _features_for(
        self, pixels: torch.Tensor, prompts: list[str], size: tuple[int, int], step: int | None, batch: int
    ):
        """(B, L, D) features and (B, L) mask for each row's (image, prompt), read from the current
        snapshot of the image; the snapshot is re-taken at step 0 and every ``vlm_refresh`` steps."""
        rows = [(i if pixels.shape[0] > 1 else 0, prompts[i] if len(prompts) > 1 else prompts[0]) for i in range(batch)]
        if step is None:  # a measurement: read exactly these pixels, keep nothing
            images = self._vlm_images(pixels, size)
            return self._encode([images[i] for i, _ in rows], [p for _, p in rows])
        if step == 0 or self._snapshot is None or (self.vlm_refresh and step % self.vlm_refresh == 0):
            self._snapshot, self._features = pixels.detach().clone(), {}
            if self.vlm_refresh == 0 and self._pool:
                # Read the clean image once under every prompt of the pool, then Qwen can leave the GPU.
                images = self._vlm_images(self._snapshot, size)
                pairs = [(i, p) for i in range(len(images)) for p in self._pool]
                features, mask = self._encode([images[i] for i, _ in pairs], [p for _, p in pairs])
                self._features = {pair: (features[k : k + 1], mask[k : k + 1]) for k, pair in enumerate(pairs)}
                if not self.vlm_offload and self.device.type != "cpu":
                    self.vlm.to("cpu")
                    torch.cuda.empty_cache() if self.device.type == "cuda" else None
        missing = [row for row in dict.fromkeys(rows) if row not in self._features]
        if missing:
            if self.vlm_refresh == 0 and self.device.type != "cpu" and not self.vlm_offload:
                self.vlm.to(self.device)  # a prompt outside the prepared pool
            images = self._vlm_images(self._snapshot, size)
            features, mask = self._encode([images[i] for i, _ in missing], [p for _, p in missing])
            self._features.update({row: (features[k : k + 1], mask[k : k + 1]) for k, row in enumerate(missing)})
        return torch.cat([self._features[row][0] for row in rows]), torch.cat([self._features[row][1] for row in rows])

    def _condition(
        self,
        latents: torch.Tensor,
        features: torch.Tensor,
        mask: torch.Tensor,
        prompts: list[str],
        size: tuple[int, int],
    ) -> Condition:
        lat_h, lat_w = self.latent_size(size)
        axis0, offset = REFERENCE_IDS[self.version]
        extra = {
            "features": features,
            "mask": mask,
            "target_ids": image_ids(lat_h, lat_w, 0, 0, self.device, self.dtype),
            "context_ids": image_ids(lat_h, lat_w, axis0, offset, self.device, self.dtype),
            "size": tuple(size),
        }
        layout = Layout(text=features.shape[1], target=latents.shape[1], context=latents.shape[1])
        return Condition(latents, layout, prompts, extra)

    def condition(
        self, pixels: torch.Tensor, prompts: Sequence[str], size: tuple[int, int], step: int | None = None
    ) -> Condition:
        """Reference tokens of ``pixels`` (differentiable: VAE posterior mode, packed) and Qwen2.5-VL
        features of (image, prompt) (no gradient; re-read per ``vlm_refresh``)."""
        prompts = list(prompts)
        latents = self.image_latents(pixels, size)
        batch = max(latents.shape[0], len(prompts))
        if latents.shape[0] not in (1, batch) or len(prompts) not in (1, batch):
            raise ValueError(
                f"{latents.shape[0]} images and {len(prompts)} prompts: give one of either, or as many of both"
            )
        features, mask = self._features_for(pixels, prompts, size, step, batch)
        return self._condition(to_batch(latents, batch), features, mask, prompts, size)

    def _text_inputs(self, condition: Condition, sigma: torch.Tensor, batch: int):
        features, mask = to_batch(condition.extra["features"], batch), to_batch(condition.extra["mask"], batch)
        tokens, pooled = self.connector(features.to(self.device, self.dtype), sigma, mask.to(self.device))
        return tokens, pooled, None

    # ------------------------------------------------------------------ editing (the official sampler)
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
        """Official Step1X-Edit sampling, one output per (prompt, seed), each the input's size.

        Reference resized by the official rule (LANCZOS in v1.1), VAE posterior sampled with the seed,
        noise from the seed, shifted schedule, Euler steps, true CFG against the empty prompt (which
        still carries the image), v1.1's norm rescale above t = 0.93, decode, resize back."""
        images = self._edit_images(image, prompts, seeds)
        outputs = []
        for k, (prompt, seed) in enumerate(zip(prompts, seeds, strict=False)):
            source = images[0 if len(images) == 1 else k].convert("RGB")
            height, width = self.working_size(source.height, source.width, resolution)
            reference = (
                source.resize((width, height), RESIZE_FILTER[self.version])
                if source.size != (width, height)
                else source
            )
            pixels = torch.from_numpy(np.array(reference)).permute(2, 0, 1)[None].float() / 255
            generator = torch.Generator().manual_seed(int(seed))
            x = (pixels * 2 - 1).to(self.device, self.vae.dtype)
            posterior = self.vae.encode(x).latent_dist
            sample = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(
                posterior.mean
            )
            latents = pack_latents((sample - self.vae.config.shift_factor) * self.vae.config.scaling_factor).to(
                self.dtype
            )
            features, mask = self._encode([reference, reference], [prompt, ""])
            condition = self._condition(latents.expand(2, -1, -1), features, mask, [prompt, ""], (height, width))
            lat_h, lat_w = self.latent_size((height, width))
            noise = torch.randn((1, self.vae.config.latent_channels, lat_h, lat_w), generator=generator)
            x_t = pack_latents(noise).to(self.device, self.dtype)
            times = shifted_schedule(steps, x_t.shape[1])
            for t, t_next in zip(times[:-1], times[1:], strict=False):
                v_cond, v_uncond = (
                    self.velocity(x_t.expand(2, -1, -1), torch.tensor([t, t]), condition).float().chunk(2)
                )
                v = guided_velocity(v_cond, v_uncond, guidance, t, CFG_RESCALE_ABOVE[self.version])
                x_t = (x_t.float() + (t_next - t) * v).to(self.dtype)
            decoded = self.vae.decode(
                unpack_latents(x_t.float(), lat_h, lat_w) / self.vae.config.scaling_factor
                + self.vae.config.shift_factor
            ).sample
            array = ((decoded[0].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy()
            edited = Image.fromarray(np.round(array * 255).astype(np.uint8))
            outputs.append(
                edited.resize(source.size, RESIZE_FILTER[self.version]) if edited.size != source.size else edited
            )
        return outputs


# ---------------------------------------------------------------------------------------- components
FLUX_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=16,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
    force_upcast=True,
)


def _default_vae(folder: Path) -> Path:
    for candidate in (folder / "vae.safetensors", folder / "vae"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"no FLUX VAE beside the checkpoint in {folder} (vae.safetensors or vae/); pass --vae")


def _default_vlm(folder: Path) -> str:
    for candidate in (folder / "Qwen2.5-VL-7B-Instruct", folder / "qwen"):
        if candidate.is_dir():
            return str(candidate)
    return DEFAULT_VLM


def load_flux_vae(path: str | Path):
    """The FLUX VAE: a diffusers ``AutoencoderKL`` folder, or the official ``vae.safetensors`` (BFL
    layout) converted by diffusers' own LDM-VAE converter into FLUX.1's VAE configuration."""
    from diffusers import AutoencoderKL

    path = Path(path)
    if path.is_dir():
        return AutoencoderKL.from_pretrained(str(path), torch_dtype=torch.float32)
    if not path.is_file():
        raise FileNotFoundError(f"FLUX VAE not found: {path}")
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    vae = AutoencoderKL(**FLUX_VAE_CONFIG)
    missing, unexpected = vae.load_state_dict(convert_ldm_vae_checkpoint(state, FLUX_VAE_CONFIG), strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: not a FLUX VAE (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return vae


def load_qwen(
    id_or_dir: str | Path, dtype: torch.dtype, min_pixels: int = QWEN_MIN_PIXELS, max_pixels: int = QWEN_MAX_PIXELS
):
    """Qwen2.5-VL and its processor with the official pixel bounds, also for a local folder (no remote code)."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    local = Path(id_or_dir).exists()
    processor = AutoProcessor.from_pretrained(
        str(id_or_dir), min_pixels=min_pixels, max_pixels=max_pixels, local_files_only=local
    )
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(id_or_dir), dtype=dtype, attn_implementation="sdpa", local_files_only=local
    )
    return model, processor
