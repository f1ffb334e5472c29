"""An upload from its first byte to a decoded image, refusing what a service must not decode: a body over the
byte limit (counted while it streams, whatever Content-Length claims), a type that is not an image, an
image that declares more pixels than the limit (read from its header, before any pixel memory exists), and
bytes that are not an image at all. Each refusal is an ``UploadProblem`` with its HTTP status and a reason
that names the problem; nothing is written to disk (the multipart parts are held in memory, within the
byte limit)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

# what a raw body may be sent as (multipart parts too); HEIC/HEIF when pillow-heif is installed (``HEIF_TYPES``)
IMAGE_TYPES = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/pjpeg": "JPEG",
    "image/webp": "WEBP",
    "image/tiff": "TIFF",
    "image/bmp": "BMP",
    "image/gif": "GIF",
}
HEIF_TYPES = {"image/heic": "HEIF", "image/heif": "HEIF"}
FILE_FIELDS = ("image", "file")  # the multipart field that holds the photo


class UploadProblem(Exception):
    """An upload refused; ``status`` is the HTTP status, ``reason`` a short label for the metrics."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status, self.reason = status, reason


def media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()


def check_declared_length(header: str | None, limit: int) -> None:
    """Refuse at once a body whose Content-Length is over the limit (before reading any of it)."""
    if header is None:
        return
    try:
        length = int(header)
    except ValueError:
        raise UploadProblem(400, "bad_length", f"Content-Length {header!r} is not a number") from None
    if length > limit:
        raise UploadProblem(413, "too_large", f"the body is {length} bytes, over this server's limit of {limit} bytes")


async def read_limited(chunks, limit: int) -> bytes:
    """The body from an async iterator of chunks, refused as soon as it passes ``limit`` bytes."""
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise UploadProblem(413, "too_large", f"the body is over this server's limit of {limit} bytes")
    return bytes(body)


def multipart_parts(content_type: str, body: bytes) -> tuple[dict[str, str], tuple[str, bytes] | None]:
    """(text fields, (content type, bytes) of the photo's part or None) of a multipart/form-data body."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise UploadProblem(400, "bad_multipart", "multipart/form-data without a boundary")
    parts: list[dict] = []
    header: dict = {"name": b"", "value": b""}

    def begin():
        parts.append({"headers": {}, "data": bytearray()})

    def header_field(data, start, end):
        header["name"] += data[start:end]

    def header_value(data, start, end):
        header["value"] += data[start:end]

    def header_end():
        parts[-1]["headers"][header["name"].decode("latin-1").lower()] = header["value"].decode("latin-1")
        header["name"], header["value"] = b"", b""

    def part_data(data, start, end):
        parts[-1]["data"] += data[start:end]

    callbacks = {
        "on_part_begin": begin,
        "on_header_field": header_field,
        "on_header_value": header_value,
        "on_header_end": header_end,
        "on_part_data": part_data,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except Exception as exc:  # python-multipart's own errors for a damaged body
        raise UploadProblem(400, "bad_multipart", f"unreadable multipart body ({exc})") from None
    fields: dict[str, str] = {}
    photo = None
    for part in parts:
        _, disposition = parse_options_header(part["headers"].get("content-disposition", ""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in disposition or name in FILE_FIELDS:
            if name in FILE_FIELDS and photo is None:
                photo = (part["headers"].get("content-type", ""), bytes(part["data"]))
            continue
        if len(part["data"]) > 256:
            raise UploadProblem(400, "bad_multipart", f"form field {name!r} is over 256 bytes")
        fields[name] = part["data"].decode("utf-8", "replace")
    return fields, photo


def image_types() -> dict[str, str]:
    """The image content types this server reads: ``IMAGE_TYPES``, and HEIC/HEIF where pillow-heif is installed."""
    from ..images import heif_reader

    return {**IMAGE_TYPES, **HEIF_TYPES} if heif_reader() else IMAGE_TYPES


def check_image_type(content_type: str) -> None:
    kind = media_type(content_type)
    types = image_types()
    if kind in HEIF_TYPES and kind not in types:
        raise UploadProblem(415, "wrong_type", f"{kind} needs pillow-heif on this server (the serve extra has it)")
    if kind not in types and kind != "application/octet-stream":
        raise UploadProblem(
            415,
            "wrong_type",
            f"content type {kind or '(none)'!r} is not an image this server reads "
            f"({', '.join(sorted(set(types)))}, or multipart/form-data with a field named image)",
        )


def decode(data: bytes, request_id: str):
    """A ``LoadedImage`` of the upload (the library's loader: EXIF orientation applied, any mode to RGB, alpha
    kept aside, the pixel limit checked from the header before decoding), or an ``UploadProblem``."""
    from ..images import ImageLoadError, load_image

    if not data:
        raise UploadProblem(400, "empty", "the body is empty: send the photo's bytes")
    try:
        return load_image(Path(f"upload-{request_id}"), data=data)
    except ImageLoadError as exc:
        if exc.reason.startswith("refused"):
            raise UploadProblem(413, "too_many_pixels", exc.reason) from None
        raise UploadProblem(400, "not_an_image", exc.reason) from None


def encode(rgb8, alpha, fmt: str, quality: int = 95) -> bytes:
    """The protected pixels as PNG (lossless: the budget holds exactly), JPEG or WebP (lossy; alpha dropped
    for JPEG, kept by WebP)."""
    import numpy as np

    image = Image.fromarray(np.dstack([rgb8, alpha]), "RGBA") if alpha is not None else Image.fromarray(rgb8, "RGB")
    out = io.BytesIO()
    if fmt == "png":
        image.save(out, format="PNG")
    elif fmt == "jpeg":
        image.convert("RGB").save(out, format="JPEG", quality=quality)
    else:
        image.save(out, format="WEBP", quality=quality)
    return out.getvalue()
