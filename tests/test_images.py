import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from decontext.images import (
    ImageLoadError,
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
