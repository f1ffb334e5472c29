"""LPIPS: real lpips package code paths; the backbone is a random stand-in (ImageNet weights are
not obtainable here), which is only ever done in tests."""

import numpy as np
import pytest
import torch
import torchvision
from skimage import data

from decontext.metrics.base import EvalOptions
from decontext.metrics.lpips import BACKBONE_FILES, LPIPSBackend


@pytest.fixture(scope="module")
def img():
    return data.astronaut()[:96, :96].copy()


def test_missing_backbone_is_unavailable_with_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    b = LPIPSBackend(EvalOptions(weights_dir=tmp_path))
    b.load()
    assert not b.available
    assert BACKBONE_FILES["alex"] in b.unavailable_reason and str(tmp_path) in b.unavailable_reason


def test_backbone_from_weights_dir_loads_and_self_distance_is_zero(tmp_path, img):
    torch.manual_seed(0)
    state = torchvision.models.alexnet(weights=None).state_dict()  # stand-in for the ImageNet checkpoint
    torch.save(state, tmp_path / BACKBONE_FILES["alex"])
    b = LPIPSBackend(EvalOptions(weights_dir=tmp_path))
    b.load()
    assert b.available, b.unavailable_reason
    # the file's tensors really went into lpips' slices
    loaded = b._distance.net.slice1[0].weight
    assert torch.equal(loaded, state["features.0.weight"])
    assert b.distance(img, img) == pytest.approx(0.0, abs=1e-7)
    noisy = np.clip(img + np.random.default_rng(0).normal(0, 30, img.shape), 0, 255).astype(np.uint8)
    assert b.distance(img, noisy) > 0


def test_wrong_checkpoint_is_reported_not_used(tmp_path):
    torch.save({"foo": torch.zeros(1)}, tmp_path / BACKBONE_FILES["alex"])
    b = LPIPSBackend(EvalOptions(weights_dir=tmp_path))
    b.load()
    assert not b.available and "could not load" in b.unavailable_reason


@pytest.mark.filterwarnings("ignore::UserWarning")  # lpips passes torchvision the deprecated `pretrained=`
def test_injected_distance(img):
    import lpips

    b = LPIPSBackend(distance=lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False))
    b.load()
    assert b.available and b.distance(img, img) == pytest.approx(0.0, abs=1e-7)
