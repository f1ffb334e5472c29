"""The toy worlds (v1: identity is colour; v3: identity is shape): deterministic renders, the fixed
split, edits that change only what they should."""

import numpy as np
import pytest

from decontext.prompts import load_prompts
from decontext.toy import world, world3
from decontext.toy.model import PROMPTS_FILE
from decontext.toy.worlds import get_world

WORLDS = pytest.mark.parametrize("w", [world, world3], ids=["v1", "v3"])


@WORLDS
def test_split_is_fixed_and_disjoint(w):
    held, train = w.eval_identities(), w.train_identities()
    assert len(held) + len(train) == w.N_IDENTITIES and len(held) == sum(
        sum(i.as_tuple()) % 3 == 0 for i in map(w.Identity.from_index, range(w.N_IDENTITIES))
    )
    assert {i.index for i in held}.isdisjoint({i.index for i in train})
    assert all(sum(i.as_tuple()) % 3 == 0 for i in held)
    for attr in w.ATTRIBUTES:  # every attribute value is seen in training and in evaluation
        assert {getattr(i, attr) for i in train} == set(range(w.N_VALUES[attr]))
        assert {getattr(i, attr) for i in held} == set(range(w.N_VALUES[attr]))
    assert [w.Identity.from_index(i.index) for i in held] == held
    assert [w.Identity.from_index(k).index for k in range(w.N_IDENTITIES)] == list(range(w.N_IDENTITIES))


def test_split_sizes_and_registry():
    assert (len(world.eval_identities()), len(world.train_identities())) == (100, 200)
    assert (len(world3.eval_identities()), len(world3.train_identities())) == (48, 96)
    assert get_world() is world and get_world("v3") is world3
    with pytest.raises(ValueError, match="unknown toy world"):
        get_world("v2")


@WORLDS
def test_render_is_deterministic(w):
    ident = w.eval_identities()[7]
    a = w.render(w.sample_scene(ident, seed=3, extras=0.5))
    b = w.render(w.sample_scene(ident, seed=3, extras=0.5))
    c = w.render(w.sample_scene(ident, seed=4, extras=0.5))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@WORLDS
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_edits_change_only_their_region(w, seed):
    ident = w.Identity.from_index((seed * 71) % w.N_IDENTITIES)
    scene = w.sample_scene(ident, seed=seed)
    src = w.render(scene).astype(int)
    # pixels where the background shows: those that change when only the nuisance colour changes
    other_bg = w.render(w.Scene(**{**scene.__dict__, "bg": (0, 0, 0)})).astype(int)
    bg_visible = np.any(src != other_bg, axis=-1)
    for edit in w.EDITS:
        out = w.render(w.apply_edit(scene, edit)).astype(int)
        changed = np.any(out != src, axis=-1)
        assert changed.sum() > 20, edit  # the edit is visible
        box = w.edit_region(scene, edit)
        if box is None:
            assert not np.any(changed & ~bg_visible), edit
        else:
            x0, y0, x1, y1 = box
            inside = np.zeros_like(changed)
            inside[max(y0, 0) : y1, max(x0, 0) : x1] = True
            assert not np.any(changed & ~inside), edit


def test_v3_identity_is_shape_not_colour():
    """v3 colours vary with the seed and never decide identity: one person keeps the same skin and hair
    regions under other colours, and each identity attribute changes the shape of what is drawn."""
    ident = world3.eval_identities()[5]
    scenes = [world3.sample_scene(ident, seed=s) for s in range(40)]
    assert len({(s.skin, s.hair_colour, s.eye_colour) for s in scenes}) > 10  # colours vary with the seed
    assert all(np.linalg.norm(np.subtract(s.hair_colour, s.skin)) >= world3.MIN_HAIR_CONTRAST for s in scenes)
    assert len({s.light for s in scenes}) > 10

    def regions(identity, skin, hair):  # (skin mask, hair mask): pixels of exactly those colours (no lighting)
        img = world3.render(world3.Scene(identity, bg=(0, 0, 0), skin=skin, hair_colour=hair))
        return np.all(img == skin, axis=-1), np.all(img == hair, axis=-1)

    colours_a, colours_b = (world3.SKIN[0], world3.HAIR_COLOURS[0]), (world3.SKIN[3], world3.HAIR_COLOURS[2])
    skin_a, hair_a = regions(ident, *colours_a)
    skin_b, hair_b = regions(ident, *colours_b)
    assert skin_a.sum() > 300 and hair_a.sum() > 100
    assert np.mean(skin_a != skin_b) < 0.005 and np.mean(hair_a != hair_b) < 0.005  # same person, other colours
    for attr, (index, floor) in {"face": (0, 0.03), "hair": (1, 0.03), "eyes": (0, 0.005), "nose": (0, 0.003)}.items():
        other = world3.Identity(**{**ident.__dict__, attr: (getattr(ident, attr) + 1) % world3.N_VALUES[attr]})
        assert np.mean(regions(other, *colours_a)[index] != (skin_a, hair_a)[index]) > floor, attr


@WORLDS
def test_prompt_pool_covers_every_edit(w):
    pool = load_prompts(PROMPTS_FILE)
    assert {p.category for p in pool} == set(w.EDITS)
