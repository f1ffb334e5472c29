"""The protector's named architectures (issue 41, item 3): the folded one (``fold4``: pixel_unshuffle 4 x 4 ->
UNet2DModel -> pixel_shuffle) keeps the budget on odd sizes and aspect ratios, saves and loads to the same
outputs, passes the gradient to its weights and is chosen by name in the trainer's CLI and its recipe; the
shipped protectors still load as the unfolded network they were trained as."""

import json

import pytest
import torch

from decontext.methods.protector import (
    ARCHITECTURES,
    CONV_ARCHITECTURE,
    DEFAULT_ARCHITECTURE,
    FOLD4_ARCHITECTURE,
    Protector,
)
from decontext.methods.protector_files import read_config, shipped_protectors

CONFIG = {"editor": {"family": "flux_kontext", "model": "toy"}, "method": {"method": "decontext", "options": {}}}


def folded(eps=8.0, seed=0) -> Protector:
    torch.manual_seed(seed)
    return Protector(FOLD4_ARCHITECTURE, eps=eps)


@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (2, 3, 64, 64), (1, 3, 100, 30), (1, 3, 5, 7)])
def test_the_folded_protector_keeps_the_budget_at_any_size_and_aspect(shape):
    protector = folded(eps=4)
    with torch.no_grad():
        delta = protector(torch.rand(shape, generator=torch.Generator().manual_seed(1)))
    assert delta.shape == shape
    assert 0 < float(delta.abs().max()) <= 4 / 255
    assert protector.fold == 4 and protector.multiple == 32  # 4 x 4 cells, then 3 halvings


def test_the_folded_protector_is_small_and_has_no_attention():
    protector = folded()
    assert protector.parameters_count() * 4 <= 10_000_000  # the float32 file stays under 10 MB
    assert not [name for name, module in protector.named_modules() if type(module).__name__ == "Attention"]


def test_a_saved_folded_protector_loads_to_the_same_outputs(tmp_path):
    protector = folded(eps=8, seed=3)
    x = torch.rand(2, 3, 45, 61, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = protector(x)
    protector.save(tmp_path / "p", CONFIG)
    stored = json.loads((tmp_path / "p" / "protector.json").read_text())
    assert stored["architecture"] == json.loads(json.dumps(FOLD4_ARCHITECTURE)) and stored["architecture"]["fold"] == 4
    assert (tmp_path / "p" / "protector.safetensors").stat().st_size <= 10_000_000
    loaded = Protector.load(tmp_path / "p")
    assert loaded.fold == 4 and loaded.eps == 8.0
    with torch.no_grad():
        assert torch.equal(loaded(x), before)


def test_the_gradient_reaches_every_weight_of_the_folded_protector():
    protector = folded()
    x = torch.rand(1, 3, 40, 24, generator=torch.Generator().manual_seed(4), requires_grad=True)
    protector(x).square().sum().backward()
    grads = {name: p.grad for name, p in protector.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert all(float(grads[f"net.{layer}.weight"].abs().sum()) > 0 for layer in ("conv_in", "conv_out"))
    assert float(x.grad.abs().sum()) > 0


def test_a_fold_needs_matching_channels():
    with pytest.raises(ValueError, match="48 channels"):
        Protector({**FOLD4_ARCHITECTURE, "in_channels": 3})


@pytest.mark.parametrize("name", shipped_protectors())
def test_the_shipped_protectors_load_as_the_network_they_were_trained_as(name):
    from diffusers import UNet2DModel

    protector = Protector.load(name)
    stored = read_config(name)["architecture"]
    assert protector.architecture == stored and protector.fold == stored.get("fold", 1)
    if "noise" in stored:
        return  # (none shipped) a noised one is checked by the tests of its own architecture
    fold = stored.get("fold", 1)
    assert protector.multiple == fold * 2 ** (len(stored["block_out_channels"]) - 1)
    # the network as it ran before folding existed (toy-decoy-edit: folded 4 x 4, unfolded here by hand)
    bare = UNet2DModel(sample_size=None, **{k: v for k, v in protector.architecture.items() if k != "fold"})
    bare.load_state_dict(protector.net.state_dict())
    # a folded one gets a size of its multiple (no padding to restate); (un)shuffling by 1 leaves a tensor as it is
    size = (2 * protector.multiple, protector.multiple) if fold > 1 else (36, 52)
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = bare(torch.nn.functional.pixel_unshuffle(x * 2 - 1, fold), timestep=0).sample
        expected = protector.eps / 255 * torch.tanh(torch.nn.functional.pixel_shuffle(out, fold))
        assert torch.equal(protector(x), expected)


def test_the_architectures_are_named_in_the_cli_and_the_recipe():
    from decontext.amortize import TrainConfig, recipe_flags
    from decontext.cli.amortize import parser
    from decontext.editors import family

    named = {"small": DEFAULT_ARCHITECTURE, "conv": CONV_ARCHITECTURE, "fold4": FOLD4_ARCHITECTURE}
    assert {name: ARCHITECTURES[name] for name in named} == named  # (more may be added beside them)
    (action,) = [a for a in parser(family("flux_kontext"))._actions if a.dest == "architecture"]
    assert set(action.choices) == set(ARCHITECTURES)
    assert recipe_flags(TrainConfig(architecture=dict(FOLD4_ARCHITECTURE)))[-2:] == ["--architecture", "fold4"]
    assert recipe_flags(TrainConfig(architecture=dict(CONV_ARCHITECTURE)))[-2:] == ["--architecture", "conv"]
