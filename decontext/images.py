"""Loading photos into tensors and saving protected images within an exact 8-bit budget.

Inside the library an image is a float tensor in [0, 1] of shape (1, 3, H, W) at its ORIGINAL size.
``load_image`` applies EXIF orientation and converts any mode (L, P, CMYK, 16-bit, RGBA...) to RGB,
keeping an alpha channel aside untouched so that ``save_protected`` can put it back.
"""

from __future__ import annotations

import io
import json
import math
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (
    ".png",
    ".jpg",
    ".jpeg",
    ".webp",
    ".bmp",
    ".tif",
    ".tiff",
    ".gif",
    ".heic",
    ".heif",
)  # in the order a stem's file is looked for
HEIF_SUFFIXES = (".heic", ".heif")  # phones' photos: read when pillow-heif is installed (``heif_reader``)
HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")  # ISO BMFF "ftyp" brands
_heif: bool | None = None


def heif_reader() -> bool:
    """Whether HEIC/HEIF photos can be read: pillow-heif (in the ``serve`` extra) registers its Pillow plugin,
    once per process; without it they are refused by name (``load_image``)."""
    global _heif
    if _heif is None:
        try:
            import pillow_heif
        except ImportError:
            _heif = False
        else:
            pillow_heif.register_heif_opener()
            _heif = True
    return _heif


def looks_like_heif(path: Path, head: bytes) -> bool:
    """A HEIC/HEIF file by its suffix or by its first bytes (an ISO BMFF ``ftyp`` box with a HEIF brand)."""
    return path.suffix.lower() in HEIF_SUFFIXES or (head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS)


class ImageLoadError(ValueError):
    """A file that is not a readable image (for the attack, the editors and the evaluation alike);
    ``str()`` is ``"<path>: <reason>"``, and both parts are kept as attributes."""

    def __init__(self, path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclass
class LoadedImage:
    path: Path | None
    pixels: torch.Tensor  # (1, 3, H, W) float32 in [0, 1]
    rgb8: np.ndarray  # (H, W, 3) uint8: the 8-bit values the budget is measured against
    alpha: np.ndarray | None = None  # (H, W) uint8, untouched
    mode: str = "RGB"  # the file's original PIL mode
    info: dict = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), PIL order."""
        return self.rgb8.shape[1], self.rgb8.shape[0]


def _to_rgb8(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    mode = image.mode
    alpha = None
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (or 32-bit integer) greyscale: scale the full range of the type to 8 bits.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        grey = np.clip(np.round(array / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2), None
    if mode == "F":
        array = np.asarray(image, dtype=np.float64)
        finite = array[np.isfinite(array)]
        top = 1.0 if finite.size == 0 or finite.max() <= 1.0 else 255.0
        array = np.nan_to_num(array, nan=0.0, posinf=top, neginf=0.0)  # a NaN must not reach the uint8 cast
        grey = np.clip(np.round(array / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2), None
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        if mode in ("RGBa", "La"):
            image = image.convert("RGBA")
        rgba = np.asarray(image.convert("RGBA"))
        alpha = rgba[..., 3].copy()
        return np.ascontiguousarray(rgba[..., :3]), alpha
    return np.asarray(image.convert("RGB")).copy(), None


def pixel_limit() -> int | None:
    """Largest number of pixels an input may declare: Pillow's decompression-bomb limit.

    ``PIL.Image.MAX_IMAGE_PIXELS`` (about 89 megapixels unless changed; ``None`` disables it). Pillow
    itself only warns between 1x and 2x the limit and would then decode; here an image over the
    limit is refused before any pixel memory is allocated, because a few hundred bytes can declare
    it and the library then holds it as a float tensor (12 bytes per pixel).
    """
    return Image.MAX_IMAGE_PIXELS


def set_pixel_limit(megapixels: float) -> None:
    """Raise (or lower) the limit for this process, e.g. for genuine photos over ~89 MP (``--max-megapixels``)."""
    if not megapixels > 0:
        raise ValueError(f"--max-megapixels must be > 0, got {megapixels}")
    Image.MAX_IMAGE_PIXELS = int(megapixels * 1_000_000)


def check_declared_size(path: Path, size: tuple[int, int]) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageLoadError(path, f"empty image (declared size {width}x{height})")
    limit = pixel_limit()
    if limit is not None and width * height > limit:
        raise ImageLoadError(
            path,
            f"refused: declares {width}x{height} = {width * height} pixels, over the limit of {limit} pixels "
            "(PIL.Image.MAX_IMAGE_PIXELS, a guard against decompression bombs; --max-megapixels raises it); "
            "not decoded",
        )


def load_image(path: str | os.PathLike, data: bytes | None = None) -> LoadedImage:
    """Read an image file at its original size (EXIF orientation applied); with ``data``, decode those bytes
    (read elsewhere, e.g. from object storage) and name the image ``path``.

    Raises ``ImageLoadError`` naming the file when it is missing, truncated, damaged, not an image, or
    declares more pixels than ``pixel_limit()`` (checked from the header, before decoding). No other
    exception type comes out for a bad file: a decoder's own errors (OSError, SyntaxError, struct.error,
    EOFError, IndexError, DecompressionBombError, MemoryError, a warning turned into an error...) are
    turned into ``ImageLoadError`` with the file's name and the problem.
    """
    path = Path(path)
    if data is None and not path.is_file():  # a FIFO or a device named like an image is never opened (it could block)
        raise ImageLoadError(path, "not a regular file" if path.exists() else "no such file")
    heif_reader()
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as image:
            check_declared_size(path, image.size)  # before any pixel memory is allocated
            image.load()
            mode = image.mode
            image = ImageOps.exif_transpose(image)
            if image.mode == "CMYK":
                image = image.convert("RGB")
            rgb8, alpha = _to_rgb8(image)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        if not heif_reader() and looks_like_heif(path, data[:12] if data is not None else _head(path)):
            raise ImageLoadError(
                path, "a HEIC/HEIF photo: reading it needs pillow-heif (pip install pillow-heif, or the serve extra)"
            ) from None
        raise ImageLoadError(path, "not an image file (format not recognised)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own check in Image.open (a warning only when warnings are turned into errors)
        raise ImageLoadError(path, f"refused: {exc} (PIL.Image.MAX_IMAGE_PIXELS); not decoded") from None
    except MemoryError:
        raise ImageLoadError(path, "not enough memory to decode this image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageLoadError(path, f"unreadable image ({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # decoders of damaged files raise many other types (struct.error, IndexError...)
        raise ImageLoadError(path, f"unreadable image ({type(exc).__name__}: {exc})") from exc
    if rgb8.shape[0] < 1 or rgb8.shape[1] < 1:
        raise ImageLoadError(path, "empty image")
    return LoadedImage(path, uint8_to_tensor(rgb8), rgb8, alpha, mode)


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(12)
    except OSError:
        return b""


def from_array(rgb8: np.ndarray) -> LoadedImage:
    """Wrap an (H, W, 3) uint8 array (e.g. ``skimage.data.astronaut()``)."""
    rgb8 = np.ascontiguousarray(rgb8[..., :3], dtype=np.uint8)
    return LoadedImage(None, uint8_to_tensor(rgb8), rgb8)


def uint8_to_tensor(rgb8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb8)).permute(2, 0, 1)[None].float().div(255.0)


def budget_levels(eps: float) -> int:
    """Largest whole number of 8-bit levels a saved pixel may move for a budget of eps/255."""
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return int(math.floor(eps + 1e-9))


def quantize(pixels: torch.Tensor, source_rgb8: np.ndarray, eps: float) -> np.ndarray:
    """Round a [0,1] image to uint8 and clip it to within floor(eps) levels of ``source_rgb8``.

    Rounding (not truncation) keeps the perturbation centred; the final clip guarantees the budget on
    the saved file even where rounding pushed a value half a level past it.
    """
    if pixels.dim() == 4:
        if pixels.shape[0] != 1:
            raise ValueError("quantize expects a single image")
        pixels = pixels[0]
    array = pixels.detach().float().clamp(0, 1).mul(255.0).round().to(torch.int16).permute(1, 2, 0).cpu().numpy()
    if array.shape != source_rgb8.shape:
        raise ValueError(f"image shape {array.shape} differs from the source's {source_rgb8.shape}")
    levels = budget_levels(eps)
    source = source_rgb8.astype(np.int16)
    array = np.clip(array, source - levels, source + levels)
    return np.clip(array, 0, 255).astype(np.uint8)


def _create_temp(folder: Path, name: str) -> tuple[int, Path]:
    """Create a new, empty ``.<name>.<random>.part`` file in ``folder``; returns (fd, path).

    Opened with O_CREAT | O_EXCL (never an existing file or a planted symlink) and mode 0o666, which
    the kernel reduces by the process umask as it creates the file: the result has the permissions any
    other new file of the user would get (0644 under umask 022, 0640 under 027), with no need to read
    the umask (``os.umask`` can only be read by setting it, a process-wide change that would race with
    other threads creating files).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    prefix = f".{name[:200]}."  # keep the temporary name within NAME_MAX for long file names
    for _ in range(100):
        tmp = folder / f"{prefix}{secrets.token_hex(6)}.part"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: could not create a temporary file for {name}")


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(handle)`` on a temporary file next to ``path``, then rename it into place.

    An interrupted process or a ``write`` that raises never leaves a half-written file under the final
    name: the old file (if any) keeps its bytes and the temporary file is removed. The data is flushed
    to disk (fsync) before the rename, and the rename itself after, so a crash or power cut leaves
    either the old or the new file. The new file gets the user's normal permissions (``0o666 & ~umask``,
    see ``_create_temp``), not the 0600 of a private temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_folder(path.parent)


def write_json_atomic(data, path: str | os.PathLike) -> None:
    """JSON (indented, UTF-8; non-JSON values as str) written atomically (see ``atomic_write``)."""
    text = json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_save(image: Image.Image, path: str | os.PathLike, **save_kwargs) -> None:
    """Save an image atomically (see ``atomic_write``); the format follows the suffix unless given."""
    fmt = save_kwargs.pop("format", None) or (Path(path).suffix.lstrip(".").upper() or "PNG")
    if fmt == "JPG":
        fmt = "JPEG"
    atomic_write(path, lambda handle: image.save(handle, format=fmt, **save_kwargs))


def save_protected(pixels: torch.Tensor, source: LoadedImage, eps: float, path: str | os.PathLike) -> np.ndarray:
    """Save a protected image as PNG within the budget of ``source``; alpha (if any) is put back.

    Returns the saved uint8 RGB array.
    """
    rgb8 = quantize(pixels, source.rgb8, eps)
    if source.alpha is not None:
        image = Image.fromarray(np.dstack([rgb8, source.alpha]), "RGBA")
    else:
        image = Image.fromarray(rgb8, "RGB")
    atomic_save(image, path, format="PNG")
    return rgb8


def max_level_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def list_images(path: str | os.PathLike) -> list[Path]:
    """A file, or the image-looking files of a folder (sorted). Unknown suffixes are left out."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    return sorted(
        p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
