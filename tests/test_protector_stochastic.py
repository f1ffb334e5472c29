"""The stochastic protector (issue 41, "a stochastic protector ... against removers"): one more input channel of
noise, seeded by a hash of each photo's 8-bit pixels. The same photo gets the same perturbation (equal uploads,
equal bytes), another photo another noise draw; the budget holds at any size; the noise is what the seed says;
a saved one loads to the same outputs; the gradient reaches its weights."""

import hashlib

import pytest
import torch

from decontext.methods.protector import ARCHITECTURES, STOCHASTIC_ARCHITECTURE, Protector, content_noise

CONFIG = {"editor": {"family": "flux_kontext", "model": "toy"}, "method": {"method": "decontext", "options": {}}}


def stochastic(eps=16.0, seed=0) -> Protector:
    torch.manual_seed(seed)
    return Protector(STOCHASTIC_ARCHITECTURE, eps=eps)


def photos(shape, seed=1):
    return (torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed)) / 255).float()


@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (2, 3, 64, 64), (1, 3, 5, 7)])
def test_the_stochastic_protector_keeps_the_budget_at_any_size(shape):
    with torch.no_grad():
        delta = stochastic(eps=4)(photos(shape))
    assert delta.shape == shape and 0 < float(delta.abs().max()) <= 4 / 255


def test_the_noise_is_the_normal_draw_of_a_hash_of_the_photos_own_pixels():
    x = photos((2, 3, 9, 11))
    noise = content_noise(x, 1)
    for image, drawn in zip(x, noise, strict=True):
        data = (image * 255).round().to(torch.uint8).numpy().tobytes()
        seed = int.from_bytes(hashlib.sha256(data).digest()[:8], "little") & (2**63 - 1)
        assert torch.equal(drawn, torch.randn((1, 9, 11), generator=torch.Generator().manual_seed(seed)))
    assert not torch.equal(noise[0], noise[1])


def test_the_same_photo_gets_the_same_perturbation_and_another_photo_another_one():
    protector = stochastic()
    x = photos((2, 3, 32, 32))
    with torch.no_grad():
        first, again = protector(x), protector(x.clone())
        alone = protector(x[1:])  # its batch does not matter: the seed is the photo's own
        changed = x.clone()
        changed[0, 0, 0, 0] = 1.0 - changed[0, 0, 0, 0]  # one pixel of the first photo
        moved = protector(changed)
    assert torch.equal(first, again)
    assert torch.allclose(alone[0], first[1], atol=1e-6)
    assert torch.equal(moved[1], first[1])
    # one pixel changes the noise of the whole photo: far more than that pixel moves
    assert float((moved[0] - first[0]).abs().mean()) > 1e-3


def test_a_saved_stochastic_protector_loads_to_the_same_outputs(tmp_path):
    protector = stochastic(eps=8, seed=3)
    x = photos((2, 3, 24, 40), seed=2)
    with torch.no_grad():
        before = protector(x)
    protector.save(tmp_path / "p", CONFIG)
    loaded = Protector.load(tmp_path / "p")
    assert loaded.noise == 1 and loaded.architecture == ARCHITECTURES["stochastic"]
    with torch.no_grad():
        assert torch.equal(loaded(x), before)


def test_the_gradient_reaches_the_stochastic_protectors_weights():
    protector = stochastic()
    protector(photos((1, 3, 16, 16))).square().sum().backward()
    first = protector.net.conv_in.weight.grad
    assert first is not None and float(first[:, 3].abs().sum()) > 0  # the noise channel's weights learn too


def test_a_wrong_channel_count_is_refused():
    with pytest.raises(ValueError, match="noise channels needs 4 channels in"):
        Protector({**STOCHASTIC_ARCHITECTURE, "in_channels": 3})
