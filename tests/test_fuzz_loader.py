"""Fuzzing the image loaders with hostile files.

A few hundred files are made here (seeded, so the corpus is the same on every run) by mutating real
PNG/JPEG/WebP/GIF/BMP/TIFF bytes written by Pillow: truncations, bit flips, overwritten/inserted/deleted
spans, swapped magic numbers, plus hand-made headers that declare huge sizes (a PNG IHDR of
100000x100000 with a correct CRC, a GIF with a 65535x65535 screen, a JPEG SOF of 65500x65500...).

Every file goes through ``decontext.images.load_image`` and through the evaluation's loader
(``decontext.metrics.run.RunData.image``). Each must either load or raise the project's own
``ImageLoadError`` naming the file; any other exception type escaping is a failure. The loaders run
in a child process with a per-file watchdog, so the test fails only on a real hang (a file that
takes more than ``HANG_SECONDS``), never on a slow machine; the child's address space is capped so
that a huge declared size that got as far as allocating shows up as an escaped MemoryError.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
HANG_SECONDS = 60  # per file, only to catch a hang; no timing is asserted
SEED = 1234
MUTANTS_PER_BASE = 14

MAGICS = {
    "png": b"\x89PNG\r\n\x1a\n",
    "jpeg": b"\xff\xd8\xff\xe0",
    "gif": b"GIF89a",
    "webp": b"RIFF\x10\x00\x00\x00WEBPVP8 ",
    "bmp": b"BM",
    "tiff": b"II*\x00",
    "zip": b"PK\x03\x04",
    "pdf": b"%PDF-1.4\n",
}


# -- base images -----------------------------------------------------------------------------------


def _pixels(h: int = 17, w: int = 23, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    grad = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], axis=-1)
    return np.clip(grad + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _features() -> set[str]:
    from PIL import features

    return {name for name in ("webp", "jpg", "zlib", "libtiff") if features.check(name)}


def base_images() -> dict[str, bytes]:
    """Small valid files of every format the loaders accept (name -> bytes, the suffix in the name)."""
    rgb = Image.fromarray(_pixels())
    rgba = Image.fromarray(np.dstack([_pixels(), _pixels(seed=1)[..., 0]]), "RGBA")
    frames = [Image.fromarray(_pixels(seed=s)).convert("P") for s in range(3)]
    exif = rgb.getexif()
    exif[0x0112] = 6
    grey16 = Image.fromarray((_pixels()[..., 0].astype(np.uint16) * 257))
    out = {
        "rgb.png": _encode(rgb, "PNG"),
        "rgba.png": _encode(rgba, "PNG"),
        "palette.png": _encode(rgb.convert("P"), "PNG"),
        "grey16.png": _encode(grey16, "PNG"),
        "base.jpg": _encode(rgb, "JPEG", quality=90),
        "progressive.jpg": _encode(rgb, "JPEG", quality=90, progressive=True),
        "exif.jpg": _encode(rgb, "JPEG", exif=exif),
        "cmyk.jpg": _encode(rgb.convert("CMYK"), "JPEG"),
        "one.gif": _encode(frames[0], "GIF"),
        "anim.gif": _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0),
        "rgb.bmp": _encode(rgb, "BMP"),
        "rgb.tif": _encode(rgb, "TIFF"),
    }
    if "webp" in _features():
        out["lossy.webp"] = _encode(rgb, "WEBP", quality=80)
        out["lossless.webp"] = _encode(rgba, "WEBP", lossless=True)
        out["anim.webp"] = _encode(
            rgb, "WEBP", save_all=True, append_images=[Image.fromarray(_pixels(seed=5))], duration=40
        )
    return out


# -- hand-made hostile headers ---------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(
    width: int,
    height: int,
    depth: int = 8,
    colour: int = 2,
    interlace: int = 0,
    idat: bytes | None = None,
    extra: list[bytes] = (),
) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` (CRCs correct), with a small (or given) IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    if idat is None:
        idat = zlib.compress(b"\x00" + b"\x80" * 3 * 4)  # one filtered 4-pixel row: far too little data
    return (
        MAGICS["png"]
        + _png_chunk(b"IHDR", ihdr)
        + b"".join(extra)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def gif(screen: tuple[int, int], frame: tuple[int, int], frames: int = 1) -> bytes:
    """A GIF with the given logical screen and image-descriptor sizes, ``frames`` frames of 1 pixel data."""
    head = b"GIF89a" + struct.pack("<HHBBB", screen[0], screen[1], 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    body = b""
    for _ in range(frames):
        body += b"\x21\xf9\x04\x00\x01\x00\x00\x00"  # graphic control extension
        body += b"\x2c" + struct.pack("<HHHHB", 0, 0, frame[0], frame[1], 0)
        body += b"\x02\x02\x44\x01\x00"  # LZW min code size 2, one tiny sub-block
    return head + body + b"\x3b"


def jpeg_with_size(base_jpeg: bytes, width: int, height: int) -> bytes:
    """A real JPEG whose SOF marker is rewritten to declare ``width`` x ``height``."""
    data = bytearray(base_jpeg)
    i = 2
    while i < len(data) - 9:
        if data[i] != 0xFF:
            break
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5 : i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        i += 2 + length
    raise AssertionError("no SOF marker found")


def webp_vp8x(width: int, height: int) -> bytes:
    """An extended WebP whose VP8X canvas declares ``width`` x ``height`` (each up to 2**24)."""
    vp8x = bytes([0x10, 0, 0, 0]) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    chunk = b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    alph = b"ALPH" + struct.pack("<I", 2) + b"\x00\x00"
    body = b"WEBP" + chunk + alph
    return b"RIFF" + struct.pack("<I", len(body)) + body


def bmp(width: int, height: int, bits: int = 24) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, 0, 0, 2835, 2835, 0, 0)
    pixels = b"\x00" * 64
    head = b"BM" + struct.pack("<IHHI", 14 + len(info) + len(pixels), 0, 0, 14 + len(info))
    return head + info + pixels


def tiff(width: int, height: int) -> bytes:
    """A little-endian TIFF whose IFD declares ``width`` x ``height``, 8-bit RGB, one short strip."""
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 2),
        (273, 4, 1, 8 + 2 + 12 * 10 + 4),
        (277, 3, 1, 3),
        (278, 4, 1, height),
        (279, 4, 1, 16),
        (284, 3, 1, 1),
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack("<HHI", tag, kind, count) + (
            struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        )
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x7f" * 16


def crafted(bases: dict[str, bytes]) -> dict[str, bytes]:
    """Hand-made hostile files (name -> bytes)."""
    ztxt_bomb = _png_chunk(b"zTXt", b"bomb\x00\x00" + zlib.compress(b"A" * (80 * 1024 * 1024), 9))
    idat_bomb = zlib.compress(b"\x00" * (50 * 1024 * 1024), 9)  # 50 MB of zeros for a 4x4 image
    many_text = b"".join(_png_chunk(b"tEXt", b"k%d\x00v" % i) for i in range(20000))
    out = {
        "empty.png": b"",
        "one_byte.jpg": b"\xff",
        "magic_only.png": MAGICS["png"],
        "magic_only.gif": b"GIF89a",
        "magic_only.webp": b"RIFF\x00\x00\x00\x00WEBP",
        "text.png": b"not an image at all\n" * 10,
        "html.jpg": b"<!doctype html><html><body>404</body></html>",
        "svg.png": b'<svg xmlns="http://www.w3.org/2000/svg" width="100000" height="100000"/>',
        "zip.png": MAGICS["zip"] + bytes(200),
        "pdf.jpg": MAGICS["pdf"] + b"1 0 obj<<>>endobj\n%%EOF",
        "huge_100000x100000.png": png(100000, 100000),
        # over MAX_IMAGE_PIXELS but under 2x: Pillow only warns and would decode 300 MB; refused here
        "warnzone_10000x10000.png": png(10000, 10000),
        "huge_2p31.png": png(2**31 - 1, 2**31 - 1),
        "huge_1x2p31.png": png(1, 2**31 - 1),
        "huge_65535x65535_16bit_rgba.png": png(65535, 65535, depth=16, colour=6),
        "zero_width.png": png(0, 10),
        "zero_both.png": png(0, 0),
        "bad_depth.png": png(4, 4, depth=3),
        "bad_colour.png": png(4, 4, colour=9),
        "bad_interlace.png": png(4, 4, interlace=7),
        "short_idat.png": png(64, 64),
        "idat_zlib_bomb.png": png(4, 4, idat=idat_bomb),
        "idat_not_zlib.png": png(4, 4, idat=b"\x12\x34" * 20),
        "ztxt_bomb.png": png(4, 4, idat=zlib.compress(b"\x00" + b"\x80" * 12) * 1, extra=[ztxt_bomb]),
        "many_text_chunks.png": png(4, 4, extra=[many_text]),
        "bad_crc.png": png(8, 8)[:29] + b"\x00\x00\x00\x00" + png(8, 8)[33:],
        "huge_screen.gif": gif((65535, 65535), (1, 1)),
        "huge_frame.gif": gif((1, 1), (65535, 65535)),
        "huge_both.gif": gif((65535, 65535), (65535, 65535)),
        "zero_screen.gif": gif((0, 0), (1, 1)),
        "many_frames.gif": gif((2, 2), (1, 1), frames=3000),
        "huge_sof.jpg": jpeg_with_size(bases["base.jpg"], 65500, 65500),
        "zero_sof.jpg": jpeg_with_size(bases["base.jpg"], 0, 0),
        "wide_sof.jpg": jpeg_with_size(bases["base.jpg"], 65500, 1),
        "huge.bmp": bmp(100000, 100000),
        "huge_negative.bmp": bmp(100000, -100000),
        "zero_bits.bmp": bmp(4, 4, bits=0),
        "odd_bits.bmp": bmp(4, 4, bits=13),
        "huge.tif": tiff(100000, 100000),
        "zero.tif": tiff(0, 0),
        "small.tif": tiff(4, 4),
        "huge_vp8x.webp": webp_vp8x(16000, 16000),
        "max_vp8x.webp": webp_vp8x(2**24, 2**24),
    }
    # a JPEG whose EXIF is damaged (orientation out of range; an IFD offset beyond the end)
    rgb = Image.open(io.BytesIO(bases["base.jpg"]))
    exif = rgb.getexif()
    exif[0x0112] = 9
    out["exif_bad_orientation.jpg"] = _encode(rgb, "JPEG", exif=exif)
    raw = bytearray(bases["exif.jpg"])
    at = raw.find(b"Exif\x00\x00")
    if at > 0:
        broken = raw.copy()
        broken[at + 10 : at + 14] = b"\xff\xff\xff\x7f"  # first IFD offset far beyond the segment
        out["exif_bad_ifd.jpg"] = bytes(broken)
        broken = raw.copy()
        broken[at + 6 : at + 8] = b"XX"  # neither II nor MM
        out["exif_bad_byteorder.jpg"] = bytes(broken)
    # wrong magic on a real body, and a real file under the wrong suffix
    for name, data in list(bases.items()):
        stem, suffix = name.rsplit(".", 1)
        for kind, magic in MAGICS.items():
            if not data.startswith(magic[:2]):
                out[f"{stem}_magic_{kind}.{suffix}"] = magic + data[len(magic) :]
    # an APNG whose acTL claims 2**31 - 1 frames, and one claiming 2**32 - 1 (only the first frame is read)
    for name, frames in (("apng_frames.png", 2**31 - 1), ("apng_frames_overflow.png", 2**32 - 1)):
        actl = _png_chunk(b"acTL", struct.pack(">II", frames, 0))
        out[name] = bases["rgb.png"][:33] + actl + bases["rgb.png"][33:]
    out["png_named.jpg"] = bases["rgb.png"]
    out["jpeg_named.gif"] = bases["base.jpg"]
    return out


# -- random mutations ------------------------------------------------------------------------------


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    buf = bytearray(data)
    n = len(buf)
    kind = rng.choice(
        ["truncate", "bitflip", "overwrite", "insert", "delete", "duplicate", "zero_span", "keep_head_flip"]
    )
    if kind == "truncate":
        cut = int(rng.integers(0, n))
        return f"truncate{cut}", bytes(buf[:cut])
    if kind in ("bitflip", "keep_head_flip"):
        flips = int(rng.integers(1, 17))
        low = min(16, n - 1) if kind == "keep_head_flip" else 0  # keep the magic so the decoder is reached
        for _ in range(flips):
            i = int(rng.integers(low, n))
            buf[i] ^= 1 << int(rng.integers(0, 8))
        return f"{kind}{flips}", bytes(buf)
    start = int(rng.integers(0, n))
    span = int(rng.integers(1, max(2, min(64, n - start) + 1)))
    if kind == "overwrite":
        buf[start : start + span] = rng.integers(0, 256, span, dtype=np.uint8).tobytes()
    elif kind == "insert":
        buf[start:start] = rng.integers(0, 256, span, dtype=np.uint8).tobytes()
    elif kind == "delete":
        del buf[start : start + span]
    elif kind == "duplicate":
        buf[start:start] = buf[start : start + span]
    else:
        buf[start : start + span] = bytes(span)
    return f"{kind}{start}_{span}", bytes(buf)


def build_corpus(folder: Path, seed: int = SEED) -> list[Path]:
    """Write the corpus into ``folder``; returns the files, sorted. Same bytes for the same seed."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    bases = base_images()
    files: dict[str, bytes] = {}
    for name, data in bases.items():
        files[f"ok_{name}"] = data
        stem, suffix = name.rsplit(".", 1)
        for i in range(MUTANTS_PER_BASE):
            label, mutated = mutate(data, rng)
            files[f"mut_{stem}_{i:02d}_{label}.{suffix}"] = mutated
    for name, data in crafted(bases).items():
        files[f"bad_{name}"] = data
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return sorted(folder / n for n in files)


# -- the child process -----------------------------------------------------------------------------


def _child(corpus: Path, report: Path, limit_bytes: int) -> None:
    """Load every file of ``corpus`` with both loaders; write one JSON line per (loader, file)."""
    import faulthandler
    import resource
    import warnings

    import PIL.Image

    from decontext.images import ImageLoadError, load_image
    from decontext.metrics.run import ImageLoadError as RunImageLoadError
    from decontext.metrics.run import RunData, RunInfo

    run = RunData(RunInfo(None, {}), corpus, {}, [], cache_size=0)
    loaders = {
        "load_image": (lambda p: load_image(p).rgb8, ImageLoadError),
        "RunData.image": (run.image, RunImageLoadError),
    }
    if limit_bytes:
        try:  # after the imports: torch's own mappings are already there
            soft, hard = resource.getrlimit(resource.RLIMIT_AS)
            used = _vm_size()
            want = used + limit_bytes
            if hard == resource.RLIM_INFINITY or want < hard:
                resource.setrlimit(resource.RLIMIT_AS, (want, hard))
        except (ValueError, OSError):
            pass
    with open(report, "w") as out:
        out.write(json.dumps({"max_image_pixels": PIL.Image.MAX_IMAGE_PIXELS}) + "\n")
        # twice: with Python's default warning filters, and with every warning an error (pytest -W error,
        # PYTHONWARNINGS=error), where Pillow's DecompressionBombWarning or "Corrupt EXIF data" are raised
        for warning_mode in ("default", "error"):
            with warnings.catch_warnings():
                warnings.simplefilter(warning_mode)
                for path in sorted(corpus.iterdir()):
                    for loader, (load, expected) in loaders.items():
                        out.write(json.dumps({"start": path.name, "loader": loader, "warnings": warning_mode}) + "\n")
                        out.flush()
                        faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)  # a hang ends the child here
                        try:
                            array = load(path)
                            result = {"outcome": "loaded", "shape": list(array.shape)}
                        except expected as exc:
                            result = {"outcome": "error", "message": str(exc)}
                        except BaseException as exc:  # noqa: BLE001 - what the test is looking for
                            result = {
                                "outcome": "escaped",
                                "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                                "message": str(exc)[:300],
                            }
                        finally:
                            faulthandler.cancel_dump_traceback_later()
                        result.update(file=path.name, loader=loader, warnings=warning_mode)
                        out.write(json.dumps(result) + "\n")
                        out.flush()


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmSize")


# -- the tests -------------------------------------------------------------------------------------


def test_corpus_is_reproducible(tmp_path):
    a = build_corpus(tmp_path / "a")
    b = build_corpus(tmp_path / "b")
    assert [p.name for p in a] == [p.name for p in b]
    assert all(p.read_bytes() == q.read_bytes() for p, q in zip(a, b, strict=False))
    assert len(a) >= 300


@pytest.mark.skipif(sys.platform != "linux", reason="the watchdog and memory cap use Linux facilities")
def test_hostile_files_load_or_raise_image_load_error(tmp_path):
    corpus = tmp_path / "corpus"
    files = build_corpus(corpus)
    report = tmp_path / "report.jsonl"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    code = (
        "import sys; from pathlib import Path; import test_fuzz_loader as t; "
        "t._child(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(corpus), str(report), str(3 * 1024**3)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=HANG_SECONDS * 10 + 60 * 10,
    )  # a backstop far above any real run
    lines = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    started = [r for r in lines if "start" in r]
    results = [r for r in lines if "outcome" in r]
    if proc.returncode != 0:
        last = started[-1] if started else None
        pytest.fail(
            f"loader child died (rc {proc.returncode}) while on {last}: a hang or a crash\n{proc.stderr[-3000:]}"
        )
    assert lines and lines[0]["max_image_pixels"] is not None, "Pillow's decompression-bomb limit was disabled"
    assert len(results) == 2 * 2 * len(files)

    escaped = [r for r in results if r["outcome"] == "escaped"]
    assert not escaped, "exceptions other than ImageLoadError escaped:\n" + "\n".join(
        f"  {r['loader']} (warnings {r['warnings']}) {r['file']}: {r['type']}: {r['message']}" for r in escaped
    )
    unnamed = [r for r in results if r["outcome"] == "error" and r["file"] not in r["message"]]
    assert not unnamed, f"errors that do not name the file: {unnamed[:5]}"

    by = {(r["loader"], r["file"]): r for r in results if r["warnings"] == "default"}
    for loader in ("load_image", "RunData.image"):
        # the untouched bases load; every declared-huge file is refused, not allocated
        assert all(by[(loader, p.name)]["outcome"] == "loaded" for p in files if p.name.startswith("ok_"))
        for name in (
            "bad_huge_100000x100000.png",
            "bad_warnzone_10000x10000.png",
            "bad_huge_2p31.png",
            "bad_huge_65535x65535_16bit_rgba.png",
            "bad_huge_both.gif",
            "bad_huge_sof.jpg",
            "bad_huge.bmp",
            "bad_huge.tif",
        ):
            r = by[(loader, name)]
            assert r["outcome"] == "error" and "pixels" in r["message"], (loader, name, r)
        # a tiny image with an absurd number of frames is fine: only the first frame is decoded
        for name in ("bad_many_frames.gif", "bad_apng_frames.png", "bad_apng_frames_overflow.png"):
            assert by[(loader, name)]["outcome"] == "loaded", (loader, name, by[(loader, name)])


@pytest.mark.skipif(sys.platform != "linux", reason="FIFOs and odd file names")
def test_run_listing_survives_odd_entries(tmp_path):
    """The run-folder listing (``load_run``) on odd entries: a FIFO named like an image (opening it would
    block forever), a folder named like an image, non-ASCII digits as a prompt folder, a symlink loop, a
    damaged file in every layout slot. Nothing hangs or escapes; every image read is an ImageLoadError."""
    from decontext.metrics.run import ImageLoadError, load_run
    from tests.demo_run import make_demo_run

    run = make_demo_run(tmp_path / "run", size=32)
    os.mkfifo(run / "source" / "fifo.png")
    os.mkfifo(run / "protected" / "a.jpg")  # shadowed by a.png, but listed
    (run / "source" / "folder.png").mkdir()
    (run / "edits" / "clean" / "index.json").unlink()  # the tree is scanned
    odd = run / "edits" / "clean" / "a"
    (odd / "\u00b2").mkdir()  # isdigit() is True for "²" but int() refuses it
    (odd / "\u00b2" / "seed1.png").write_bytes(b"")
    (odd / "0" / "seed\u0663.png").write_bytes(b"")  # an Arabic-Indic digit
    (odd / "0" / "loop.png").symlink_to("loop.png")
    os.mkfifo(odd / "10" / "seed5.png")
    (run / "edits" / "protected" / "b" / "0" / "seed42.png").write_bytes(b"GIF89a\xff\xff\xff\xff")
    data = load_run(run)
    assert {e.seed for e in data.edits if e.condition == "clean" and e.stem == "a"} == {42, 5}
    for path in [
        data.source_path("fifo"),
        run / "source" / "folder.png",
        odd / "10" / "seed5.png",
        odd / "0" / "loop.png",
        run / "edits" / "protected" / "b" / "0" / "seed42.png",
    ]:
        with pytest.raises(ImageLoadError, match=re.escape(path.name)):
            data.image(path)
