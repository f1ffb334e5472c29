"""The attackers (decontext.attackers): every kind parses, keeps the shape, is deterministic from its
seed on tiny and toy images; the remover and the denoiser never see a held-out identity."""

from __future__ import annotations

import types

import numpy as np
import pytest

from decontext.attackers import (
    KINDS,
    AttackContext,
    parse_attacker,
    train_denoiser,
    train_remover,
    training_scenes,
)
from decontext.toy import world


def toy_images(count: int = 3) -> np.ndarray:
    from decontext.toy.worlds import heldout_scenes

    return np.stack([world.render(s) for s in heldout_scenes(world, count, seed=5)])


def tiny_images(count: int = 2, size: int = 16) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def denoiser():
    return train_denoiser(world, images=8, steps=2, seed=3)


def stamp(images: np.ndarray, seed: int) -> np.ndarray:
    """A stand-in protection: a fixed +-8 pattern (seeded), as the attacker would run the real one."""
    pattern = np.random.default_rng(seed % 1000).choice([-8, 8], size=images.shape[1:])
    return np.clip(images.astype(int) + pattern, 0, 255).astype(np.uint8)


def test_every_attacker_parses_with_its_defaults_and_refuses_bad_specs():
    for name in KINDS:
        attacker = parse_attacker(name)
        assert attacker.kind == name and attacker.params == KINDS[name].defaults
    assert parse_attacker("regen:t=0.5,steps=2").params["t"] == 0.5
    assert parse_attacker("jpeg:quality=50").spec == "jpeg:quality=50"
    for bad, words in [
        ("regenerate", "unknown attacker"),
        ("regen:t=1.5", "t must be in (0, 1)"),
        ("regen:temperature=1", "KEY one of t, steps, denoiser"),
        ("remover:pairs=x", "takes a int"),
        ("remover:draw=-1", "draw >= 0"),
        ("resize:filter=box", "unknown filter"),
    ]:
        with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
            parse_attacker(bad)


@pytest.mark.parametrize(
    "spec", ["none", "jpeg", "webp", "resize", "blur", "noise", "noise_upscale", "regen:t=0.3,steps=2"]
)
@pytest.mark.parametrize("images", ["tiny", "toy"])
def test_attacker_keeps_the_shape_and_is_deterministic_from_its_seed(spec, images, denoiser):
    batch = tiny_images() if images == "tiny" else toy_images()
    attacker = parse_attacker(spec)
    state = denoiser if attacker.kind == "regen" else attacker.fit(AttackContext(world=world))
    first = attacker.apply(batch, seed=11, state=state)
    assert first.shape == batch.shape and first.dtype == np.uint8
    assert np.array_equal(first, attacker.apply(batch, seed=11, state=state))
    if attacker.kind in ("noise", "noise_upscale", "regen"):  # the only ones that draw
        assert not np.array_equal(first, attacker.apply(batch, seed=12, state=state))
    if attacker.kind == "none":
        assert np.array_equal(first, batch)


def test_regen_uses_the_shipped_denoiser_of_the_world_when_present():
    from decontext.assets import data_path

    if not data_path("data/attackers/toy_denoiser_v1.safetensors").exists():
        pytest.skip("the shipped denoiser is not trained yet (python -m bench.train_denoiser)")
    attacker = parse_attacker("regen:t=0.3")
    state = attacker.fit(AttackContext(world=world))
    assert state.info["world"] == "v1" and "train_denoiser" in state.info["command"]
    batch = toy_images(2)
    out = attacker.apply(batch, seed=0, state=state)
    assert out.shape == batch.shape
    # a trained denoiser brings the noised face back near the photo (t = 0.3 noise alone is ~20 dB off)
    assert np.abs(out.astype(int) - batch).mean() < 20


def test_the_remover_trains_only_on_training_identities_and_is_deterministic():
    seen = []

    def protect(images, seed):
        seen.append(images.copy())
        return stamp(images, seed)

    state = train_remover(world, protect, pairs=6, steps=3, seed=2)
    assert state.info["identities"] and not any(
        world.is_held_out(world.Identity.from_index(i)) for i in state.info["identities"]
    )
    heldout = {im.tobytes() for im in toy_images(100)}  # every held-out identity's render with seed 5 ...
    assert all(im.tobytes() not in heldout for im in seen[0])
    held_out_indices = {i.index for i in world.eval_identities()}
    assert held_out_indices.isdisjoint(state.info["identities"])
    again = train_remover(world, protect, pairs=6, steps=3, seed=2)
    batch = stamp(toy_images(2), 0)
    attacker = parse_attacker("remover:pairs=6,steps=3")
    assert np.array_equal(attacker.apply(batch, 0, state), attacker.apply(batch, 0, again))
    assert attacker.apply(batch, 0, state).shape == batch.shape


def test_training_scenes_refuse_a_held_out_identity():
    leaky = types.SimpleNamespace(**{k: getattr(world, k) for k in ("is_held_out", "sample_scene", "NAME")})
    leaky.train_identities = lambda: world.train_identities()[:3] + world.eval_identities()[:1]
    with pytest.raises(ValueError, match="held-out identities must never train an attacker"):
        training_scenes(leaky, 4, seed=0)
    with pytest.raises(ValueError, match="held-out"):
        train_remover(leaky, stamp, pairs=4, steps=1)


def test_the_remover_through_fit_needs_the_protection_and_the_world():
    with pytest.raises(ValueError, match="protection under test"):
        parse_attacker("remover").fit(AttackContext(world=world))
    state = parse_attacker("remover:pairs=3,steps=1").fit(AttackContext(world=world, protect=stamp), seed=1)
    assert state.info["pairs"] == 3


def test_another_draw_of_the_remover_is_another_remover_of_the_same_recipe():
    """draw k trains with the run's seed + k: draw 0 is the remover the benchmark always trained (same name,
    same weights), draw 1 is the recipe trained from seed + 1 (its training identities in other scenes, other
    weights), reproducibly."""
    import torch

    context = AttackContext(world=world, protect=stamp)
    first, second = parse_attacker("remover:pairs=3,steps=2"), parse_attacker("remover:pairs=3,steps=2,draw=1")
    assert first.label == "remover_pairs3_steps2_width16_lr0.002" and second.label.endswith("_draw1")
    assert second.spec == "remover:pairs=3,steps=2,draw=1"

    def weights(state):
        return torch.cat([p.detach().flatten() for p in state.net.parameters()])

    drawn = [first.fit(context, seed=4), second.fit(context, seed=4)]
    direct = [train_remover(world, stamp, pairs=3, steps=2, seed=s) for s in (4, 5)]
    for state, by_hand in zip(drawn, direct, strict=True):
        assert torch.equal(weights(state), weights(by_hand)) and state.info == by_hand.info
    assert drawn[1].info["seed"] == 5 and not torch.equal(weights(drawn[0]), weights(drawn[1]))


def test_editor_clean_asks_the_editor_for_the_photo_back():
    from PIL import Image

    asked = []

    class Editor:
        def edit(self, images, prompts, seeds, **settings):
            asked.append((prompts[0], seeds[0], settings["resolution"]))
            return [Image.fromarray(np.asarray(images[0])[::-1].copy())]

    batch = toy_images(2)
    attacker = parse_attacker("editor_clean")
    out = attacker.apply(batch, seed=4, context=AttackContext(editor=Editor()))
    assert out.shape == batch.shape and np.array_equal(out[0], batch[0][::-1])
    assert [a[1] for a in asked] == [4, 5] and "unchanged" in asked[0][0]
    with pytest.raises(ValueError, match="needs the editor"):
        attacker.apply(batch)


def test_worst_is_computed_not_applied():
    with pytest.raises(ValueError, match="computed, not applied"):
        parse_attacker("worst").apply(toy_images(1))
    assert parse_attacker("worst").derived


def test_regeneration_and_the_remover_have_differentiable_twins_for_eot(denoiser):
    import torch

    x = torch.from_numpy(toy_images(2)).permute(0, 3, 1, 2).float().div(255).requires_grad_(True)
    remover = train_remover(world, stamp, pairs=3, steps=1, seed=0)
    for spec, state in (("regen:t=0.3,steps=2", denoiser), ("remover", remover), ("jpeg", None)):
        twin = parse_attacker(spec).differentiable(state)
        out = twin(x, torch.Generator().manual_seed(0))
        assert out.shape == x.shape
        (grad,) = torch.autograd.grad(out.sum(), x)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, spec


def test_an_attacker_goes_where_a_breaker_goes(tmp_path):
    from PIL import Image

    from decontext.purify import purify_run

    (tmp_path / "protected").mkdir()
    for i, image in enumerate(toy_images(2)):
        Image.fromarray(image).save(tmp_path / "protected" / f"id{i}.png")
    attackers = [parse_attacker("regen:t=0.2,steps=2,denoiser=v1"), parse_attacker("jpeg")]
    report = purify_run(tmp_path, attackers, progress=False)
    assert report["written"] == 2 * len(attackers) and not report["failed"]
    out = Image.open(tmp_path / "purified" / attackers[0].label / "protected" / "id0.png")
    assert out.size == (64, 64)
    with pytest.raises(ValueError, match="protection under test"):
        parse_attacker("remover")(Image.fromarray(toy_images(1)[0]))


def test_the_denoiser_is_reproducible_from_its_seed(denoiser):
    import torch

    again = train_denoiser(world, images=8, steps=2, seed=3)
    for (name, a), (_, b) in zip(denoiser.net.state_dict().items(), again.net.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert denoiser.info["max_t"] == 0.5 and "training" in denoiser.info["identities"]


def test_eot_optimises_through_a_fitted_attacker(denoiser):
    import torch

    from decontext.purify import EOT, parse_breaker

    eot = EOT([parse_attacker("regen:t=0.2,steps=1").bound(denoiser), parse_breaker("jpeg")])
    x = torch.from_numpy(toy_images(1)).permute(0, 3, 1, 2).float().div(255).requires_grad_(True)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        out = eot(x, generator)
        assert out.shape == x.shape
        (grad,) = torch.autograd.grad(out.sum(), x)
        assert torch.isfinite(grad).all()
    assert set(eot.drawn) <= {"regen_t0.2_steps1_denoiserauto", "jpeg_quality75"}
