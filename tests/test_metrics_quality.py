"""BRISQUE from the brisque package's shipped model (works offline, numpy 2)."""

import math

import numpy as np
import pytest
from skimage import data

from decontext.metrics.quality import BrisqueBackend, BrisqueScorer


@pytest.fixture(scope="module")
def scorer():
    return BrisqueScorer()


def test_clean_photo_scores_better_than_distorted(scorer):
    img = data.astronaut()[::2, ::2].copy()
    rng = np.random.default_rng(0)
    noisy = np.clip(img + rng.normal(0, 40, img.shape), 0, 255).astype(np.uint8)
    clean = scorer(img)
    assert 0 <= clean < 40
    assert scorer(noisy) > clean + 15


def test_flat_image_does_not_crash(scorer):
    v = scorer(np.full((64, 64, 3), 128, np.uint8))
    assert math.isnan(v) or isinstance(v, float)


def test_backend_loads_offline():
    b = BrisqueBackend()
    b.load()
    assert b.available, b.unavailable_reason
