"""The toy world: deterministic renders, the fixed split, edits that change only what they should."""

import numpy as np
import pytest

from decontext.prompts import load_prompts
from decontext.toy import world
from decontext.toy.model import PROMPTS_FILE


def test_split_is_fixed_and_disjoint():
    held, train = world.eval_identities(), world.train_identities()
    assert len(held) == 100 and len(train) == 200
    assert {i.index for i in held}.isdisjoint({i.index for i in train})
    assert all(sum(i.as_tuple()) % 3 == 0 for i in held)
    for attr in world.ATTRIBUTES:  # every attribute value is seen in training
        assert {getattr(i, attr) for i in train} == set(range(world.N_VALUES[attr]))
    assert [world.Identity.from_index(i.index) for i in held] == held


def test_render_is_deterministic():
    ident = world.eval_identities()[7]
    a = world.render(world.sample_scene(ident, seed=3, extras=0.5))
    b = world.render(world.sample_scene(ident, seed=3, extras=0.5))
    c = world.render(world.sample_scene(ident, seed=4, extras=0.5))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_edits_change_only_their_region(seed):
    ident = world.Identity.from_index((seed * 71) % world.N_IDENTITIES)
    scene = world.sample_scene(ident, seed=seed)
    src = world.render(scene).astype(int)
    # pixels where the background shows: those that change when only the nuisance colour changes
    other_bg = world.render(world.Scene(**{**scene.__dict__, "bg": (0, 0, 0)})).astype(int)
    bg_visible = np.any(src != other_bg, axis=-1)
    for edit in world.EDITS:
        out = world.render(world.apply_edit(scene, edit)).astype(int)
        changed = np.any(out != src, axis=-1)
        assert changed.sum() > 20, edit  # the edit is visible
        box = world.edit_region(scene, edit)
        if box is None:
            assert not np.any(changed & ~bg_visible), edit
        else:
            x0, y0, x1, y1 = box
            inside = np.zeros_like(changed)
            inside[max(y0, 0) : y1, max(x0, 0) : x1] = True
            assert not np.any(changed & ~inside), edit


def test_prompt_pool_covers_every_edit():
    pool = load_prompts(PROMPTS_FILE)
    assert {p.category for p in pool} == set(world.EDITS)
