"""The shipped toy reader reads ground-truth renders correctly, and the scoring API behaves."""

import numpy as np
import pytest

from decontext.toy import world
from decontext.toy.reader import HEADS, ToyReader, edit_name, score_edit


@pytest.fixture(scope="module")
def reader():
    return ToyReader.load()


def test_reader_reads_ground_truth_renders(reader):
    rng = np.random.default_rng(5)
    scenes = [
        world.sample_scene(world.Identity.from_index(int(i)), seed=500 + k, extras=0.5)
        for k, i in enumerate(rng.integers(world.N_IDENTITIES, size=120))
    ]
    reads = reader.read(np.stack([world.render(s) for s in scenes]))
    for head in HEADS:
        truth = np.array([world.labels(s)[head] for s in scenes])
        assert np.mean(reads[head] == truth) >= 0.97, head


def test_score_edit_on_ground_truth(reader):
    scene = world.sample_scene(world.eval_identities()[3], seed=1)
    src = world.render_pil(scene)
    for edit in world.EDITS:
        out = world.render_pil(world.apply_edit(scene, edit))
        assert score_edit(src, out, edit, reader) == {"toy_identity": 1.0, "edit_success": 1}
    # a different person without the edit
    other = world.render_pil(
        world.sample_scene(
            world.Identity(4, 3, 4, 2) if scene.identity.skin != 4 else world.Identity(0, 0, 0, 0), seed=1
        )
    )
    s = score_edit(src, other, "Put a hat on this person.", reader)
    assert s["edit_success"] == 0 and s["toy_identity"] <= 0.5


def test_edit_name():
    assert edit_name("Make the background blue.") == "background_blue"
    assert edit_name("smile") == "smile"
    assert edit_name("please put a big hat on them") == "hat"
    with pytest.raises(ValueError):
        edit_name("turn them into a cat")
