"""Breakers: what happens to a protected photo before anyone edits it, by accident (re-compression,
resizing, filters) or on purpose (purification).

Each breaker is a named, parameterised plain function ``PIL image -> PIL image`` of the same size,
deterministic given its seed; ``Breaker.differentiable()`` is its differentiable counterpart on
(B, 3, H, W) tensors in [0, 1], for expectation over transformation (EOT) inside the PGD loss.

    from decontext.purify import parse_breaker
    jpeg = parse_breaker("jpeg:quality=75")
    purified = jpeg(Image.open("protected.png"))

Specs: ``name`` or ``name:key=value,key=value``. Noise levels are in 1/255 units like every budget.

Each breaker, with its parameters and their defaults; "real" is what ``parse_breaker`` applies, "twin" what
``Breaker.differentiable()`` gives:

- ``jpeg`` (quality 75): real, Pillow's encoder and decoder; twin, kornia's differentiable JPEG (same
  quantisation tables and quality scaling).
- ``webp`` (quality 75): real, Pillow's (lossy); no twin (EOT refuses it).
- ``resize`` (factor 0.5, filter bicubic): real, down to factor x size and back up with Pillow; twin, the same in
  torch (antialiased downscale).
- ``blur`` (sigma 1.0): real, Pillow's Gaussian blur; twin, torchvision's Gaussian blur (kernel
  2 * ceil(3 sigma) + 1).
- ``noise`` (sigma 8): real, N(0, sigma) per pixel, clipped, rounded; twin, the same without rounding.
- ``noise_upscale`` (sigma 8, factor 0.5): real, down by factor, noise, back up (the "noisy upscaling"
  purification, with bicubic in place of a learned upscaler); twin, the same in torch.
- ``vae``: real, a round trip through an editor's own VAE (posterior mode), ``vae_roundtrip(image, editor)``;
  twin, the same, differentiable.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from .config import fraction
from .options import parse_params

FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}
TORCH_FILTERS = {
    "nearest": "nearest",
    "bilinear": "bilinear",
    "bicubic": "bicubic",
    "lanczos": "bicubic",
}  # torch has no Lanczos


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _codec(image: Image.Image, fmt: str, quality: int) -> Image.Image:
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"{fmt} quality must be in 1..100, got {quality}")
    buffer = io.BytesIO()
    _rgb(image).save(buffer, format=fmt, quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def jpeg(image: Image.Image, quality: int = 75, seed: int = 0) -> Image.Image:
    """Encode and decode as JPEG (Pillow; 4:2:0 chroma subsampling, its default)."""
    return _codec(image, "JPEG", quality)


def webp(image: Image.Image, quality: int = 75, seed: int = 0) -> Image.Image:
    """Encode and decode as lossy WebP."""
    return _codec(image, "WEBP", quality)


def _scaled(size: tuple[int, int], factor: float) -> tuple[int, int]:
    if not 0 < factor <= 1:
        raise ValueError(f"resize factor must be in (0, 1], got {factor}")
    return max(1, round(size[0] * factor)), max(1, round(size[1] * factor))


def _filter(name: str):
    if name not in FILTERS:
        raise ValueError(f"unknown filter {name!r} (choose from {', '.join(FILTERS)})")
    return FILTERS[name]


def resize(image: Image.Image, factor: float = 0.5, filter: str = "bicubic", seed: int = 0) -> Image.Image:
    """Down to ``factor`` of the size and back up, with one resampling filter."""
    image = _rgb(image)
    return image.resize(_scaled(image.size, factor), _filter(filter)).resize(image.size, _filter(filter))


def blur(image: Image.Image, sigma: float = 1.0, seed: int = 0) -> Image.Image:
    """Gaussian blur of standard deviation ``sigma`` pixels."""
    if sigma <= 0:
        raise ValueError(f"blur sigma must be > 0, got {sigma}")
    return _rgb(image).filter(ImageFilter.GaussianBlur(radius=sigma))


def _noisy(array: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    if sigma < 0:
        raise ValueError(f"noise sigma must be >= 0, got {sigma}")
    rng = np.random.default_rng(seed)
    return np.clip(np.round(array.astype(np.float64) + rng.normal(0.0, sigma, array.shape)), 0, 255).astype(np.uint8)


def noise(image: Image.Image, sigma: float = 8.0, seed: int = 0) -> Image.Image:
    """Gaussian noise of standard deviation ``sigma`` / 255, clipped and rounded to 8 bits."""
    return Image.fromarray(_noisy(np.asarray(_rgb(image)), sigma, seed))


def noise_upscale(image: Image.Image, sigma: float = 8.0, factor: float = 0.5, seed: int = 0) -> Image.Image:
    """Down by ``factor`` (bicubic), Gaussian noise, back up (bicubic)."""
    image = _rgb(image)
    small = image.resize(_scaled(image.size, factor), Image.BICUBIC)
    return Image.fromarray(_noisy(np.asarray(small), sigma, seed)).resize(image.size, Image.BICUBIC)


# ---------------------------------------------------------------------------------------------- differentiable
def _jpeg_t(x: torch.Tensor, generator: torch.Generator, quality: int = 75) -> torch.Tensor:
    from kornia.enhance import jpeg_codec_differentiable

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a torch.meshgrid deprecation note inside kornia
        quality = torch.full((x.shape[0],), float(quality), device=x.device, dtype=x.dtype)
        return jpeg_codec_differentiable(x.clamp(0, 1), quality).clamp(0, 1)


def _resize_t(
    x: torch.Tensor, generator: torch.Generator, factor: float = 0.5, filter: str = "bicubic"
) -> torch.Tensor:
    _filter(filter)
    height, width = x.shape[-2:]
    small_w, small_h = _scaled((width, height), factor)
    mode = TORCH_FILTERS[filter]
    smooth = mode != "nearest"
    small = F.interpolate(
        x, size=(small_h, small_w), mode=mode, antialias=smooth, **({"align_corners": False} if smooth else {})
    )
    return F.interpolate(small, size=(height, width), mode=mode, **({"align_corners": False} if smooth else {})).clamp(
        0, 1
    )


def _blur_t(x: torch.Tensor, generator: torch.Generator, sigma: float = 1.0) -> torch.Tensor:
    from kornia.filters import gaussian_blur2d

    if sigma <= 0:
        raise ValueError(f"blur sigma must be > 0, got {sigma}")
    size = 2 * math.ceil(3 * sigma) + 1
    return gaussian_blur2d(x, (size, size), (float(sigma), float(sigma)), border_type="reflect")


def _noise_t(x: torch.Tensor, generator: torch.Generator, sigma: float = 8.0) -> torch.Tensor:
    draw = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
    return (x + draw * fraction(sigma)).clamp(0, 1)


def _noise_upscale_t(
    x: torch.Tensor, generator: torch.Generator, sigma: float = 8.0, factor: float = 0.5
) -> torch.Tensor:
    height, width = x.shape[-2:]
    small_w, small_h = _scaled((width, height), factor)
    small = F.interpolate(x, size=(small_h, small_w), mode="bicubic", antialias=True, align_corners=False)
    return F.interpolate(
        _noise_t(small, generator, sigma), size=(height, width), mode="bicubic", align_corners=False
    ).clamp(0, 1)


# ---------------------------------------------------------------------------------------------- the VAE round trip
def vae_roundtrip_tensor(x: torch.Tensor, editor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> encoded (posterior mode) and decoded by the editor's VAE, at the size
    snapped to the VAE's multiple and resized back (differentiable)."""
    from .editors.base import snap, to_vae_input, vae_pixels

    vae = editor.vae
    multiple = 2 ** (len(vae.config.block_out_channels) - 1)  # the VAE's own downsampling (no 2x2 packing here)
    height, width = x.shape[-2:]
    work = (snap(height, multiple), snap(width, multiple))
    out = vae_pixels(vae, vae.encode(to_vae_input(x, work, multiple, vae.device, vae.dtype)).latent_dist.mode())
    if work != (height, width):
        out = F.interpolate(out, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)
    return out.to(x.device, x.dtype)


def vae_roundtrip(image: Image.Image, editor, seed: int = 0) -> Image.Image:
    """The VAE round trip of a PIL image through ``editor``'s autoencoder."""
    from .images import uint8_to_tensor

    with torch.no_grad():
        out = vae_roundtrip_tensor(uint8_to_tensor(np.array(_rgb(image))), editor)
    return Image.fromarray(np.round(out[0].permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8))


# ---------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class _Kind:
    real: Callable
    differentiable: Callable | None
    defaults: dict
    needs_editor: bool = False


KINDS: dict[str, _Kind] = {
    "jpeg": _Kind(jpeg, _jpeg_t, {"quality": 75}),
    "webp": _Kind(webp, None, {"quality": 75}),
    "resize": _Kind(resize, _resize_t, {"factor": 0.5, "filter": "bicubic"}),
    "blur": _Kind(blur, _blur_t, {"sigma": 1.0}),
    "noise": _Kind(noise, _noise_t, {"sigma": 8.0}),
    "noise_upscale": _Kind(noise_upscale, _noise_upscale_t, {"sigma": 8.0, "factor": 0.5}),
    "vae": _Kind(vae_roundtrip, None, {}, needs_editor=True),
}


@dataclass(frozen=True)
class Breaker:
    """One named breaker with its parameters. ``breaker(image, seed)`` runs the real one."""

    kind: str
    params: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """A folder-safe name: ``jpeg_quality75``, ``resize_factor0.5_filterbicubic``."""
        extra = "_".join(f"{k}{v}" for k, v in self.params.items())
        return f"{self.kind}_{extra}" if extra else self.kind

    def __call__(self, image: Image.Image, seed: int = 0, editor=None) -> Image.Image:
        kind = KINDS[self.kind]
        if kind.needs_editor:
            if editor is None:
                raise ValueError(f"breaker {self.kind!r} needs an editor (its own autoencoder)")
            return kind.real(image, editor, seed=seed)
        return kind.real(image, seed=seed, **self.params)

    def differentiable(self, editor=None) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
        """``t(x, generator) -> x'`` on (B, 3, H, W) in [0, 1], differentiable in x."""
        kind = KINDS[self.kind]
        if self.kind == "vae":
            if editor is None:
                raise ValueError("the 'vae' breaker needs an editor for its differentiable version")
            return lambda x, generator: vae_roundtrip_tensor(x, editor)
        if kind.differentiable is None:
            raise ValueError(
                f"breaker {self.kind!r} has no differentiable version "
                "(use jpeg, resize, blur, noise, noise_upscale or vae for EOT)"
            )
        return lambda x, generator: kind.differentiable(x, generator, **self.params)


def parse_breaker(spec: str) -> Breaker:
    """``jpeg``, ``jpeg:quality=50``, ``resize:factor=0.25,filter=bilinear`` ... (see the module table)."""
    name, params = parse_params("breaker", spec, KINDS)
    breaker = Breaker(name, params)
    if name == "resize":
        _filter(params["filter"])
    return breaker


def parse_breakers(specs: str | list[str]) -> list[Breaker]:
    """Several breakers: a list of specs or one string; within an item, ``;`` separates breakers and
    ``,`` separates either a breaker's parameters (``jpeg:quality=50,...``) or plain names (``jpeg,resize,blur``)."""
    items = [specs] if isinstance(specs, str) else list(specs)
    breakers = []
    for item in items:
        for part in item.split(";"):
            part = part.strip()
            if not part:
                continue
            names = [part] if ":" in part else [n for n in part.split(",") if n.strip()]
            breakers.extend(parse_breaker(n) for n in names)
    if not breakers:
        raise ValueError("no breaker given")
    return breakers


class EOT:
    """Expectation over transformation: each call applies one breaker, drawn uniformly from ``breakers``
    with the PGD engine's generator, through its differentiable version; ``identity_share`` of the
    draws leave the image as it is (the unbroken photo is also a case to win)."""

    def __init__(self, breakers: list[Breaker], editor=None, identity_share: float = 0.0):
        if not 0 <= identity_share < 1:
            raise ValueError(f"identity_share must be in [0, 1), got {identity_share}")
        self.breakers = list(breakers)
        self.transforms = [b.differentiable(editor) for b in self.breakers]
        self.identity_share = identity_share
        self.drawn: list[str] = []

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.identity_share and float(torch.rand((), generator=generator)) < self.identity_share:
            self.drawn.append("identity")
            return x
        index = int(torch.randint(len(self.transforms), (), generator=generator))
        self.drawn.append(self.breakers[index].label)
        return self.transforms[index](x, generator)


# ---------------------------------------------------------------------------------------------- the run-folder stage
def purify_run(
    run_dir: str | Path,
    breakers: list[Breaker],
    conditions=("protected",),
    seed: int = 0,
    editor=None,
    log=print,
    progress: bool = True,
) -> dict:
    """Purified copies of each condition's images: ``<run>/purified/<label>/<condition>/<stem>.png``.

    Existing copies are kept (a re-run resumes); unreadable images are reported and skipped; each
    image's breaker seed depends on the seed and its stem, not on the order. Returns
    ``{"written": n, "skipped": n, "failed": {file: message}}``."""
    from tqdm.auto import tqdm

    from .images import ImageLoadError, atomic_save, list_images, load_image
    from .runs import image_seed, purified_path

    run_dir = Path(run_dir)
    report = {"written": 0, "skipped": 0, "failed": {}}
    jobs = []
    for condition in conditions:
        folder = run_dir / condition
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no images of condition '{condition}' to purify")
        for path in list_images(folder):
            for breaker in breakers:
                jobs.append((condition, path, breaker))
    for condition, path, breaker in tqdm(jobs, desc="purify", disable=not progress, dynamic_ncols=True):
        out = purified_path(run_dir, breaker.label, condition, path.stem)
        if out.exists():
            report["skipped"] += 1
            continue
        try:
            image = Image.fromarray(load_image(path).rgb8, "RGB")
        except ImageLoadError as exc:
            report["failed"][str(path)] = str(exc)
            log(f"error: {exc}")
            continue
        atomic_save(breaker(image, seed=image_seed(seed, path.stem), editor=editor), out, format="PNG")
        report["written"] += 1
    return report
