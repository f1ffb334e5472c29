"""The editor seam: what protection methods see of a model family, and all they see.

A method never knows which editor it runs on. It asks the editor for a ``Condition`` of some pixels
and prompts (differentiable in the pixels where the editor allows), draws noise, asks for the
velocity at a noise level (optionally stopping after a named block), reads the flow-matching
training pair, and measures attention inside ``with editor.probe(blocks):``, where
``editor.probed_velocity`` returns what each call measured. Everything else (text
encoders, vision-language models, connectors, token packing, position ids, guidance embeddings) is
the editor's business.

Adding an editor = one module in this package with a class answering ``Editor`` plus one line in
``decontext.editors.EDITORS``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ContextManager, Protocol, Sequence, runtime_checkable

import torch
from PIL import Image

from ..attention import Layout, Probed  # noqa: F401 (re-exported: the seam's token layout, a probed call's result)
from . import CAPABILITIES  # noqa: F401 (re-exported: what an editor can offer methods)
from .blocks import resolve_blocks  # noqa: F401 (re-exported)


@dataclass
class Condition:
    """What an editor needs to predict a velocity for a batch of (image, prompt) pairs.

    Methods may read ``latents``, ``layout`` and ``prompts``; ``extra`` belongs to the editor that
    made it (prompt embeddings, position ids, connector inputs, ...).
    """

    # (B, ...) the image's own latents as the editor reads them (DiTs: (B, N, C) packed tokens, the context and
    # x_0 of the flow)
    latents: torch.Tensor
    layout: Layout  # the joint attention sequence of a velocity call with this condition (context 0: none)
    prompts: list[str]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.latents.shape[0]


@runtime_checkable
class Editor(Protocol):
    """An in-context editor as protection methods, the batch drivers and the CLIs see it.

    Pixels are (B, 3, H, W) in [0, 1]; ``size`` is the (H, W) working size the editor resizes to.
    Noise levels ``sigma`` are in [0, 1] (1 = pure noise): flow matching's sigma on the DiTs, the DDPM
    timestep fraction t / T on diffusion editors. "Velocity" is whatever the denoiser was trained to
    predict (flow velocity, or epsilon), i.e. the target of ``flow_pair``.
    """

    family: str  # registry key, e.g. "flux_kontext"
    min_resolution: (
        int  # smallest --resolution N of the family's stock checkpoints (a model's own ``multiple_of`` may be smaller)
    )
    capabilities: frozenset  # what methods may rely on (CAPABILITIES); a method lists what it needs in ``requires``
    name: str  # what the user loaded ("tiny", "toy", a hub id or a folder)
    device: torch.device
    dtype: torch.dtype
    recommended: dict  # editing defaults shipped with the model (num_inference_steps, guidance_scale, resolution)
    # entries of ``Condition.extra`` that are the prompt's embeddings (may be replaced: ``with_text_embeddings``)
    text_embedding_keys: tuple

    @property
    def depths(self) -> dict[str, int]:
        """Blocks per stream, e.g. {"double": 19, "single": 38}."""

    def resolve_blocks(self, spec: str | Sequence[str]) -> list[str]:
        """Block names of this model for a specification such as ``single:0-25/38``."""

    def working_size(self, height: int, width: int, resolution: str | int = "auto") -> tuple[int, int]:
        """(H, W) the editor works at for an image of that size (``auto``: what its pipeline picks)."""

    def prepare(self, prompts: Sequence[str], release: bool = True) -> None:
        """Make conditioning on ``prompts`` cheap (e.g. embed them once); with ``release``, free
        whatever later conditioning on these prompts no longer needs (e.g. text encoders)."""

    def condition(
        self, pixels: torch.Tensor, prompts: Sequence[str], size: tuple[int, int], step: int | None = None
    ) -> Condition:
        """Conditioning of a velocity call, differentiable in ``pixels`` where the editor allows.

        One image with several prompts, several images with one prompt, or one prompt per image.
        ``step`` is the optimiser's step (0 = a new image); editors whose conditioning reads the
        image through a non-differentiable path (a vision-language model) use it to decide when to
        re-read the current pixels. ``None`` = read these pixels now (for measurements).
        """

    def image_latents(self, pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, N, C) packed latent tokens of the image, differentiable (what ``Condition.latents`` holds)."""

    def compile_blocks(self, backend: str = "inductor") -> int:
        """``torch.compile`` every attention block of the denoiser in place (``--compile``); returns how many."""

    def noise_like(self, condition: Condition, generators) -> torch.Tensor:
        """Pure-noise target tokens shaped like ``condition.latents`` (``draw_noise``: row by row from per-image
        generators, or whole from a single one)."""

    def velocity(
        self, x_t: torch.Tensor, sigma: torch.Tensor, condition: Condition, stop_after: str | None = None
    ) -> torch.Tensor | None:
        """The editor's velocity prediction for target tokens ``x_t`` at noise level ``sigma`` ((B,) or
        scalar). ``stop_after`` names the last block needed; the pass ends there and returns None.
        ``probed_velocity(...).velocity``: inside a probe, the same pass (its measurements dropped)."""

    def probed_velocity(
        self, x_t: torch.Tensor, sigma: torch.Tensor, condition: Condition, stop_after: str | None = None
    ) -> Probed:
        """The same pass as ``velocity``, returning a ``Probed``: the velocity (None when stopped early) and
        what the installed probe measured in this call alone: ``shares[block]`` ((B,), ``mean_share``) under
        ``probe``, ``text_maps[block]`` ((B, target tokens)) under ``text_attention``; empty without a probe.
        A probed block ``stop_after`` names ends the pass right after its measurement."""

    def flow_pair(
        self, condition: Condition, noise: torch.Tensor, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, target): the image's latents noised to ``sigma`` and the velocity the editor was
        trained to predict there (the flow-matching training pair)."""

    def denoise(self, x_t: torch.Tensor, sigma: float, sigma_next: float, condition: Condition) -> torch.Tensor:
        """One deterministic sampler step from noise level ``sigma`` to ``sigma_next`` (< sigma), conditioned
        on ``condition`` (no guidance branches): flow editors take an Euler step, DDPM editors a DDIM step.
        At ``sigma_next = 0`` the result is the clean-latent estimate, what ``decode`` reads."""

    def decode(self, latents: torch.Tensor, condition: Condition) -> torch.Tensor:
        """(B, 3, H, W) pixels in [0, 1] at the condition's working size from clean latents in the
        denoiser's space (the end of ``denoise``), differentiable."""

    def probe(self, blocks: Sequence[str]) -> ContextManager:
        """``with editor.probe(blocks):`` hooks those blocks (forward and backward) so that each
        ``probed_velocity`` call returns their target->context attention shares; on exit the editor is
        exactly as before. Each call carries its own record (``attention.ProbeCall``) to the hooked layers
        through the model's attention kwargs; the yielded hook keeps no per-call state."""

    def edit(
        self,
        image: Image.Image | Sequence[Image.Image],
        prompts: Sequence[str],
        seeds: Sequence[int],
        steps: int,
        guidance: float,
        resolution: str | int,
    ) -> list[Image.Image]:
        """Edit through the editor's real pipeline: one output per (prompt, seed)."""

    def enable_gradient_checkpointing(self) -> None: ...

    def enable_vae_memory_savers(self, tiling: bool = False, slicing: bool = False) -> None: ...


def text_embeddings(editor, condition: Condition) -> dict[str, torch.Tensor]:
    """The prompt embeddings of ``condition`` (what an editor with the ``text_embeddings`` capability
    conditions on, e.g. FLUX's T5 and pooled CLIP embeddings), by name."""
    keys = getattr(editor, "text_embedding_keys", ())
    if not keys:
        raise ValueError(
            f"the {getattr(editor, 'family', type(editor).__name__)} editor does not expose its prompt embeddings"
        )
    return {key: condition.extra[key] for key in keys}


def with_text_embeddings(editor, condition: Condition, embeddings: dict[str, torch.Tensor]) -> Condition:
    """``condition`` with some prompt embeddings replaced (same names and shapes; e.g. optimised ones)."""
    current = text_embeddings(editor, condition)
    for key, value in embeddings.items():
        if key not in current:
            raise KeyError(f"{key!r} is not a prompt embedding of this editor ({', '.join(current)})")
        if tuple(value.shape) != tuple(current[key].shape):
            raise ValueError(
                f"embedding {key!r} of shape {tuple(value.shape)} replaces one of shape {tuple(current[key].shape)}"
            )
    return Condition(condition.latents, condition.layout, list(condition.prompts), {**condition.extra, **embeddings})


def to_batch(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """``tensor`` (N, ...) with N = batch, or one row (1, ...) broadcast to ``batch`` rows (a view)."""
    return tensor.expand(batch, *tensor.shape[1:]) if tensor.shape[0] == 1 else tensor


def vae_pixels(vae, z: torch.Tensor) -> torch.Tensor:
    """Decode VAE latents ``z`` (already unscaled) to pixels in [0, 1], differentiable (``to_vae_input``'s inverse)."""
    return ((vae.decode(z.to(vae.dtype)).sample.float() + 1) / 2).clamp(0, 1)


def content_token_mask(tokenizer, prompts: Sequence[str], max_length: int) -> torch.Tensor:
    """(N, max_length) float mask: 1 on the tokens that spell each prompt, 0 on special tokens (BOS, EOS)
    and padding, for the fixed-length tokenisation a pipeline feeds its text encoder."""
    tokens = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=max_length,
        truncation=True,
        return_special_tokens_mask=True,
        return_tensors="pt",
    )
    return (tokens.attention_mask.bool() & ~tokens.special_tokens_mask.bool()).float()


def rectified_flow_pair(
    latents: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x_t = (1 - sigma) * x_0 + sigma * noise`` and the velocity target ``noise - x_0`` (FLUX-family
    training). ``sigma``: scalar or (B,)."""
    s = torch.as_tensor(sigma, device=latents.device, dtype=latents.dtype).reshape(-1, 1, 1)
    return (1 - s) * latents + s * noise, noise - latents


def to_vae_input(pixels: torch.Tensor, size: tuple[int, int], multiple: int, device, dtype) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> a VAE's input range [-1, 1] at ``size`` (bicubic, antialiased, clamped),
    differentiable; ``size`` must be a multiple of the editor's ``multiple``."""
    import torch.nn.functional as F

    if size[0] % multiple or size[1] % multiple:
        raise ValueError(f"working size {tuple(size)} is not a multiple of {multiple}")
    x = pixels.to(device, torch.float32)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    return (x * 2 - 1).to(dtype)


def edit_images(image, prompts: Sequence[str], seeds: Sequence[int], probe_active: bool) -> list:
    """The checks every ``edit()`` makes (one seed per prompt, one image or one per prompt, no probe
    installed) -> the images as a list."""
    if len(prompts) != len(seeds):
        raise ValueError("edit() takes one seed per prompt")
    if probe_active:
        raise RuntimeError("edit() runs the stock processors; call it outside a probe context")
    images = [image] if isinstance(image, Image.Image) else list(image)
    if len(images) not in (1, len(prompts)):
        raise ValueError("edit() takes one image, or one image per prompt")
    return images


def enable_vae_memory_savers(vae, tiling: bool = False, slicing: bool = False) -> None:
    """VAE tiling (large images decode tile by tile) and slicing (a batch decodes one image at a time)."""
    if tiling:
        vae.enable_tiling()
    if slicing:
        vae.enable_slicing()


def level_working_size(
    height: int, width: int, resolution: str | int, multiple: int, default_level: int, rule
) -> tuple[int, int]:
    """Working size of editors whose official code resizes by a size level: ``native`` = the image's
    size snapped down to ``multiple``; ``auto`` = ``rule`` at ``default_level``; N = ``rule`` at level N.
    ``rule(height, width, level, multiple) -> (H, W)`` is the editor's official resize."""
    if resolution == "native":
        return snap(height, multiple), snap(width, multiple)
    level = default_level if resolution == "auto" else int(resolution)
    if level < multiple:
        raise ValueError(f"resolution {level} is below the model's minimum of {multiple} px")
    return rule(height, width, level, multiple)


def snap(value: float, multiple: int) -> int:
    """Round down to a multiple (at least one multiple)."""
    return max(multiple, int(math.floor(value / multiple)) * multiple)


def draw_noise(shape, generators, device, dtype) -> torch.Tensor:
    """Standard normal noise of ``shape``, drawn on the CPU in float32 (so runs are reproducible across
    devices and dtypes), row by row from per-image ``generators`` (each row as its image's own run alone
    would draw it) or whole from a single one, then moved to ``device`` and ``dtype``."""
    if len(generators) == 1:
        noise = torch.randn(tuple(shape), generator=generators[0], dtype=torch.float32)
    elif len(generators) == shape[0]:
        noise = torch.cat([torch.randn((1, *shape[1:]), generator=g, dtype=torch.float32) for g in generators])
    else:
        raise ValueError(f"{len(generators)} generators for noise of {shape[0]} rows")
    return noise.to(device, dtype)
