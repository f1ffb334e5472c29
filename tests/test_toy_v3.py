"""Toy world v3 (identity is shape): its own reader reads clean renders, identity survives every edit,
and every consumer picks the reader and world of the editor it measures."""

import json

import numpy as np
import pytest

from decontext.toy import world, world3
from decontext.toy.names import toy_reader_dir, toy_world_name
from decontext.toy.reader import ToyReader, score_edit
from decontext.toy.worlds import reader_heads


@pytest.fixture(scope="module")
def reader():
    return ToyReader.for_editor("toy-v3")


def _scenes(count, seed, extras=0.5):
    rng = np.random.default_rng(seed)
    return [
        world3.sample_scene(world3.Identity.from_index(int(i)), seed=seed * 1000 + k, extras=extras)
        for k, i in enumerate(rng.integers(world3.N_IDENTITIES, size=count))
    ]


def test_the_v3_editor_names_its_world_and_reader(reader):
    assert toy_world_name("toy-v3") == "v3" and toy_world_name("toy-v1") == "v1"
    assert toy_reader_dir("toy-v3").name == "toy_reader_v3"
    assert reader.world is world3 and reader.attributes == ("face", "hair", "eyes", "nose")
    assert set(reader.net.heads) == set(reader_heads(world3))
    assert ToyReader.for_editor("toy-v1").world is world


def test_v3_reader_reads_fresh_renders(reader):
    """Fresh renders (seeds the reader never saw; every identity, edits on at random) are read right."""
    scenes = _scenes(240, seed=7)
    reads = reader.read(np.stack([world3.render(s) for s in scenes]))
    for head in reader_heads(world3):
        truth = np.array([world3.labels(s)[head] for s in scenes])
        assert np.mean(reads[head] == truth) >= 0.97, head


def test_v3_identity_survives_every_edit_and_another_person_does_not(reader):
    for k, identity in enumerate(world3.eval_identities()[::8]):
        scene = world3.sample_scene(identity, seed=300 + k)
        source = world3.render(scene)
        for edit in world3.EDITS:
            scores = score_edit(source, world3.render(world3.apply_edit(scene, edit)), edit, reader)
            assert scores == {"toy_identity": 1.0, "edit_success": 1}, (identity, edit)
    # another person with the same colours and nuisance differs in at least two shapes
    a = world3.Identity(0, 0, 0, 0)
    scene = world3.sample_scene(a, seed=5)
    other = world3.Scene(**{**scene.__dict__, "identity": world3.Identity(2, 3, 1, 0)})
    assert score_edit(world3.render(scene), world3.render(other), "hat", reader)["toy_identity"] <= 0.5


def test_a_reader_of_another_world_is_refused(tmp_path):
    from decontext.toy.reader import ReaderNet

    with pytest.raises(ValueError, match="not world v3"):
        ToyReader(ReaderNet(), "v3")  # v1's heads
    settings = tmp_path / "editor"
    settings.mkdir()
    (settings / "decontext_toy.json").write_text(json.dumps({"world": "v3", "reader": "data/toy_reader"}))
    with pytest.raises(ValueError, match="reads world v1, the editor was trained on v3"):
        ToyReader.for_editor(settings)


def test_toy_faces_writes_the_asked_world(tmp_path):
    from decontext.cli.toy import faces

    assert faces(["--out", str(tmp_path / "v3"), "--count", "3", "--world", "v3"]) == 0
    names = sorted(p.name for p in (tmp_path / "v3").iterdir())
    held = world3.eval_identities()[:3]
    assert names == [f"id{i.index:03d}.png" for i in held]
    from PIL import Image

    first = np.asarray(Image.open(tmp_path / "v3" / names[0]))
    assert np.array_equal(first, world3.render(world3.sample_scene(held[0], seed=42)))
    assert faces(["--out", str(tmp_path / "big"), "--count", "49", "--world", "v3"]) == 2  # v3 holds out 48


def test_protector_training_draws_the_asked_world():
    from decontext.amortize import ImageSource

    v1, v3 = ImageSource("toy-train", 64, 0), ImageSource("toy-train:v3", 64, 0)
    assert v1.world is world and v3.world is world3
    assert v3.identities == world3.train_identities() and v1.digest() != v3.digest()
    batch = v3.batch(0, 2)
    assert batch.shape == (2, 3, 64, 64) and torch_equal(batch, ImageSource("toy-train:v3", 64, 0).batch(0, 2))
    with pytest.raises(ValueError, match="unknown toy world"):
        ImageSource("toy-train:v9", 64, 0)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))
