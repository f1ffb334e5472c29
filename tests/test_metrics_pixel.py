"""PSNR / SSIM properties."""

import math

import numpy as np
import pytest
from skimage import data

from decontext.metrics.pixel import psnr, ssim


@pytest.fixture(scope="module")
def img():
    return data.astronaut()[:128, :128].copy()


def test_identical_images(img):
    assert psnr(img, img) == 100.0  # capped, documented
    assert psnr(img, img, cap_db=60.0) == 60.0
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-6)


def test_known_psnr(img):
    base = np.full((64, 64, 3), 100, np.uint8)
    shifted = base + 5  # MSE = (5/255)^2
    expected = 10 * math.log10(1.0 / (5 / 255) ** 2)
    assert psnr(base, shifted) == pytest.approx(expected, abs=1e-3)


def test_more_noise_lower_scores(img):
    rng = np.random.default_rng(0)
    small = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    large = np.clip(img + rng.normal(0, 25, img.shape), 0, 255).astype(np.uint8)
    assert psnr(img, small) > psnr(img, large)
    assert 1.0 > ssim(img, small) > ssim(img, large)
