import io
import os
import stat
import struct
import sys
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from decontext.images import (
    ImageLoadError,
    atomic_write,
    budget_levels,
    list_images,
    load_image,
    quantize,
    save_protected,
)


def _rgb(h=20, w=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_exif_orientation_applied_and_size_kept(tmp_path):
    array = _rgb(20, 30)
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rot.jpg"
    image.save(path, exif=exif, quality=100)
    loaded = load_image(path)
    assert loaded.pixels.shape == (1, 3, 30, 20)  # transposed: the displayed orientation
    assert loaded.size == (20, 30)


def test_rgba_alpha_is_kept_untouched(tmp_path):
    array = _rgb(16, 24)
    alpha = np.random.default_rng(1).integers(0, 256, (16, 24), dtype=np.uint8)
    path = tmp_path / "a.png"
    Image.fromarray(np.dstack([array, alpha]), "RGBA").save(path)
    loaded = load_image(path)
    assert loaded.alpha is not None and np.array_equal(loaded.alpha, alpha)
    assert np.array_equal(loaded.rgb8, array)
    out = tmp_path / "out.png"
    save_protected(loaded.pixels + 0.01, loaded, 8, out)
    saved = np.asarray(Image.open(out))
    assert saved.shape == (16, 24, 4)
    assert np.array_equal(saved[..., 3], alpha)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK"])
def test_modes_convert_to_rgb(tmp_path, mode):
    array = _rgb(12, 18)
    image = Image.fromarray(array).convert(mode)
    path = tmp_path / f"m.{'jpg' if mode == 'CMYK' else 'png'}"
    image.save(path)
    loaded = load_image(path)
    assert loaded.pixels.shape == (1, 3, 12, 18)
    assert loaded.rgb8.dtype == np.uint8
    expected = np.asarray(Image.open(path).convert("RGB"))
    assert np.abs(loaded.rgb8.astype(int) - expected.astype(int)).max() <= 1


def test_sixteen_bit_greyscale_scaled_to_eight_bit(tmp_path):
    values = np.array([[0, 65535, 32896]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    image = Image.new("I;16", (3, 1))
    image.putdata(values.ravel().tolist())
    image.save(path)
    assert Image.open(path).mode.startswith("I")
    loaded = load_image(path)
    assert loaded.rgb8[0, :, 0].tolist() == [0, 255, 128]
    assert np.array_equal(loaded.rgb8[..., 0], loaded.rgb8[..., 2])


def test_quantize_rounds_then_clips_to_budget():
    source = np.full((1, 4, 3), 100, dtype=np.uint8)
    # +12.6 levels rounds to 113 but must be clipped to 100 + floor(12.75) = 112;
    # +3.4 must round to 103 (truncation would give 103 too, +3.6 distinguishes: 104 vs 103).
    deltas = torch.tensor([12.6, 3.6, -3.6, -20.0]).view(1, 4, 1).expand(1, 4, 3)
    pixels = (torch.from_numpy(source).float() + deltas).permute(2, 0, 1) / 255
    out = quantize(pixels, source, 12.75)
    assert out[0, :, 0].tolist() == [112, 104, 96, 88]


def test_saved_file_never_exceeds_budget(tmp_path):
    array = _rgb(32, 32, seed=3)
    path = tmp_path / "src.png"
    Image.fromarray(array).save(path)
    loaded = load_image(path)
    noisy = (loaded.pixels + torch.empty_like(loaded.pixels).uniform_(-0.2, 0.2)).clamp(0, 1)
    out = tmp_path / "prot.png"
    save_protected(noisy, loaded, 12.75, out)
    saved = np.asarray(Image.open(out)).astype(int)
    assert np.abs(saved - array.astype(int)).max() == budget_levels(12.75) == 12
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".part")]


def test_bad_files_raise_naming_the_file(tmp_path):
    text = tmp_path / "x.png"
    text.write_text("not an image")
    with pytest.raises(ImageLoadError, match="x.png"):
        load_image(text)
    buffer = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(buffer, format="JPEG")
    truncated = tmp_path / "t.jpg"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    with pytest.raises(ImageLoadError, match="t.jpg"):
        load_image(truncated)
    with pytest.raises(ImageLoadError, match="missing.png"):
        load_image(tmp_path / "missing.png")


def test_list_images_filters_suffixes(tmp_path):
    for name in ("b.png", "a.JPG", "notes.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png"]


# -- hardening (issue 17): permissions and atomicity of writes, decompression bombs -----------------


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path, umask, expected):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "manifest.json", lambda f: f.write(b"{}"))
        loaded = load_image(_save(tmp_path / "src.png", _rgb(8, 8)))
        save_protected(loaded.pixels, loaded, 4, tmp_path / "out" / "prot.png")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "manifest.json") == expected
    assert _mode(tmp_path / "out" / "prot.png") == expected
    # replacing an existing private file gives it the normal permissions too
    os.chmod(tmp_path / "manifest.json", 0o600)
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "manifest.json", lambda f: f.write(b"[]"))
    finally:
        os.umask(old)
    assert _mode(tmp_path / "manifest.json") == expected and (tmp_path / "manifest.json").read_bytes() == b"[]"


def _save(path, array):
    Image.fromarray(array).save(path)
    return path


def test_a_writer_that_raises_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "index.json"
    target.write_bytes(b"old content")

    def half_then_fail(handle):
        handle.write(b"new cont")
        handle.flush()
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json"]

    # an interrupt (BaseException) is cleaned up the same way
    def interrupted(handle):
        handle.write(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert target.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json"]
    atomic_write(target, lambda f: f.write(b"new content"))
    assert target.read_bytes() == b"new content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json"]


def test_atomic_write_handles_long_names_and_never_follows_a_planted_temp_name(tmp_path, monkeypatch):
    name = "x" * 250 + ".png"  # a temporary name built by appending to it would pass NAME_MAX (255)
    atomic_write(tmp_path / name, lambda f: f.write(b"data"))
    assert (tmp_path / name).read_bytes() == b"data"
    assert [p.name for p in tmp_path.iterdir()] == [name]

    # someone planted a symlink under the next temporary name: it is neither followed nor removed
    import decontext.images as images

    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    planted = tmp_path / ".out.json.aaaaaaaaaaaa.part"
    planted.symlink_to(victim)
    tokens = iter(["aaaaaaaaaaaa", "bbbbbbbbbbbb"])
    monkeypatch.setattr(images.secrets, "token_hex", lambda n: next(tokens))
    atomic_write(tmp_path / "out.json", lambda f: f.write(b"{}"))
    assert victim.read_bytes() == b"precious" and planted.is_symlink()
    assert (tmp_path / "out.json").read_bytes() == b"{}"
    assert not (tmp_path / ".out.json.bbbbbbbbbbbb.part").exists()


def _png_declaring(width: int, height: int) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 13)) + chunk(b"IEND", b"")
    )


def test_decompression_bomb_limit_stays_in_force_and_bombs_are_refused(tmp_path, monkeypatch):
    import decontext  # noqa: F401 - importing the project must not disable Pillow's guard
    import decontext.metrics.run  # noqa: F401

    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS <= 2**28
    assert not __import__("PIL.ImageFile").ImageFile.LOAD_TRUNCATED_IMAGES
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_declaring(100000, 100000))  # 10 gigapixels in 60 bytes
    with pytest.raises(ImageLoadError, match=r"bomb\.png.*refused.*pixels"):
        load_image(bomb)

    # between the limit and twice the limit Pillow only warns (and would decode): refused from the header
    from PIL import ImageFile

    warn_zone = _save(tmp_path / "warn.png", _rgb(10, 15))  # 150 pixels
    over = _save(tmp_path / "over.png", _rgb(15, 15))  # 225 > 2 x 100: Pillow's own DecompressionBombError
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or real_load(self))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(ImageLoadError, match=r"warn\.png.*150 pixels"):
            load_image(warn_zone)
    assert not decoded  # refused from the header, before any decoding
    with warnings.catch_warnings():  # a warning turned into an error is still an ImageLoadError
        warnings.simplefilter("error")
        with pytest.raises(ImageLoadError, match=r"warn\.png"):
            load_image(warn_zone)
    with pytest.raises(ImageLoadError, match=r"over\.png.*refused"):
        load_image(over)
    assert not decoded


def test_unexpected_decoder_errors_become_image_load_errors(tmp_path, monkeypatch):
    path = _save(tmp_path / "fine.png", _rgb(6, 6))

    def broken(image, *args, **kwargs):
        raise struct.error("unpack requires a buffer of 4 bytes")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    with pytest.raises(ImageLoadError, match=r"fine\.png.*error.*unpack"):
        load_image(path)


def test_float_image_with_nan_loads_without_garbage(tmp_path):
    values = np.array([[0.0, 0.5, np.nan, np.inf]], dtype=np.float32)
    path = tmp_path / "f.tif"
    Image.fromarray(values, "F").save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "invalid value encountered in cast"
        loaded = load_image(path)
    assert loaded.rgb8[0, :, 0].tolist() == [0, 128, 0, 255]


def test_a_heic_photo_is_read_with_pillow_heif_and_refused_by_name_without_it(tmp_path):
    import subprocess

    pillow_heif = pytest.importorskip("pillow_heif")
    from decontext.images import IMAGE_SUFFIXES, load_image

    rgb = _rgb(48, 64, seed=3)
    heif = pillow_heif.from_bytes(mode="RGB", size=(64, 48), data=rgb.tobytes())
    path = tmp_path / "phone.heic"
    heif.save(str(path), quality=-1, chroma=444, matrix_coefficients=0)  # lossless x265, RGB kept as is
    assert path.read_bytes()[4:11] == b"ftyphei" and ".heic" in IMAGE_SUFFIXES  # brand heic or heix
    expected = np.asarray(pillow_heif.open_heif(str(path)).to_pillow().convert("RGB"))
    loaded = load_image(path)
    assert loaded.rgb8.shape == (48, 64, 3) and np.array_equal(loaded.rgb8, expected)
    assert np.array_equal(loaded.rgb8, rgb)
    assert np.array_equal(load_image(tmp_path / "upload", data=path.read_bytes()).rgb8, expected)  # by its bytes
    code = (
        "import sys; sys.modules['pillow_heif'] = None\n"  # as on a machine without the package
        "from decontext.images import ImageLoadError, load_image\n"
        "for target in (sys.argv[1], sys.argv[2]):\n"
        "    try:\n        load_image(target)\n    except ImageLoadError as exc:\n        print(exc)\n"
    )
    renamed = tmp_path / "no_suffix"
    renamed.write_bytes(path.read_bytes())
    out = subprocess.run([sys.executable, "-c", code, str(path), str(renamed)], capture_output=True, text=True)
    lines = out.stdout.splitlines()
    assert out.returncode == 0 and len(lines) == 2, out.stderr[-2000:]
    assert (
        lines[0]
        == f"{path}: a HEIC/HEIF photo: reading it needs pillow-heif (pip install pillow-heif, or the serve extra)"
    )
    assert lines[1].startswith(f"{renamed}: a HEIC/HEIF photo")  # known by its first bytes, whatever its name
