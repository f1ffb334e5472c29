"""Every shipped toy editor version (decontext.toy.names.TOY_EDITORS) loads with the stock
FluxKontextPipeline and really edits: on held-out identities it keeps identity and performs the
requested edit; ``--model toy`` and the version names resolve through the editor seam."""

import json
from pathlib import Path

import pytest
import torch

from decontext.toy.model import EDITOR_DIR, SETTINGS_FILE
from decontext.toy.names import TOY_DEFAULT, is_toy_model, toy_editor_dir, toy_versions, toy_world_name
from decontext.toy.worlds import get_world

VERSIONS = sorted(toy_versions("flux_kontext"))
MAX_BYTES = 20 * 2**20  # issue 11: shipped weights <= 20 MB per editor
# (clean identity, edit success) each version must keep on 8 held-out identities x 6 edits: a margin
# under what docs/TOY.md measured on 30. toy-v2-early is weak by construction (0.61 / 0.91 measured):
# its bar only says it still carries identity well above chance (~0.25) and still edits.
FLOORS = {
    "toy-v2-early": (0.45, 0.8),
    # toy-v3 (world v3, candidate c1 of issue 34) keeps identity (0.949 on 48) but misses edits: glasses
    # 0.31, smile 0.73, edit success 0.837 on all 48 held-out identities
    "toy-v3": (0.85, 0.65),
}


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.mark.parametrize("version", VERSIONS)
def test_editor_files(version):
    folder = toy_editor_dir(version)
    assert (folder / "model_index.json").exists()
    assert _size(folder) <= MAX_BYTES
    settings = json.loads((folder / SETTINGS_FILE).read_text())
    for key in ("num_inference_steps", "guidance_scale", "resolution", "max_sequence_length"):
        assert key in settings


def test_names():
    assert toy_editor_dir("toy") == toy_editor_dir(TOY_DEFAULT) == EDITOR_DIR
    assert is_toy_model("toy") and all(is_toy_model(v) for v in VERSIONS) and not is_toy_model("tiny")
    with pytest.raises(ValueError, match="unknown toy editor 'toy-v0'"):
        toy_editor_dir("toy-v0")


@pytest.mark.parametrize("version", VERSIONS)
def test_single_stock_call_and_seam(version):
    from diffusers import FluxKontextPipeline

    from decontext.editors import load_editor
    from decontext.editors.models import load_pipeline

    folder = toy_editor_dir(version)
    pipe = load_pipeline(
        FluxKontextPipeline, folder
    )  # the stock pipeline class; components stored once are read where they live
    assert type(pipe) is FluxKontextPipeline
    pipe.set_progress_bar_config(disable=True)
    settings = json.loads((folder / SETTINGS_FILE).read_text())
    w = get_world(toy_world_name(version))  # a face of the world the version was trained on
    image = w.render_pil(w.sample_scene(w.eval_identities()[0], seed=0))
    kwargs = dict(
        prompt="Put a hat on this person.",
        height=64,
        width=64,
        max_area=64 * 64,
        _auto_resize=False,
        num_inference_steps=settings["num_inference_steps"],
        guidance_scale=settings["guidance_scale"],
        max_sequence_length=settings["max_sequence_length"],
    )
    out = pipe(image=image, generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).images[0]
    assert out.shape == (64, 64, 3)
    editor = load_editor(version, "flux_kontext", "cpu", "float32")
    assert editor.name == version and editor.recommended["num_inference_steps"] == settings["num_inference_steps"]
    assert torch.equal(editor.pipe.transformer.x_embedder.weight, pipe.transformer.x_embedder.weight)


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_heldout_edits_keep_identity(version):
    from decontext.toy.evaluate import evaluate

    res = evaluate(n_identities=8, seed=0, editor_dir=toy_editor_dir(version))
    assert res["n_edits"] == 48
    identity_floor, success_floor = FLOORS.get(version, (0.85, 0.85))
    assert res["clean_edit"]["toy_identity"] >= identity_floor, res["clean_edit"]
    assert res["clean_edit"]["edit_success"] >= success_floor, res["clean_edit"]
    # with another person as context the output is that person: it scores what the pair shares in truth
    # (v1's pairs ~0.25; v3's pairs share 0.5 by construction)
    assert res["other_person"]["toy_identity"] <= max(
        min(0.4, identity_floor - 0.05), res["other_person_truth"] + 0.1
    ), res["other_person"]


def test_components_stored_once_load_as_the_copies_did(tmp_path):
    """toy-v2 keeps no copy of toy-v1's text encoders, tokenizers, VAE and scheduler: its settings name them,
    and the loader reads them from toy-v1's folder, tensor for tensor the same as a full copy would give."""
    import shutil

    from diffusers import FluxKontextPipeline

    from decontext.editors.models import component_dir, load_pipeline

    v1, v2 = toy_editor_dir("toy-v1"), toy_editor_dir("toy-v2")
    shared = json.loads((v2 / SETTINGS_FILE).read_text())["shared_components"]
    assert set(shared) == {"scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae"}
    assert all(not (v2 / name).exists() and component_dir(v2, name) == v1 / name for name in shared)
    full = tmp_path / "toy_editor_v2_full"  # what the folder held before: every component in it
    shutil.copytree(v2, full)
    for name in shared:
        shutil.copytree(v1 / name, full / name)
    settings = json.loads((full / SETTINGS_FILE).read_text())
    del settings["shared_components"]
    (full / SETTINGS_FILE).write_text(json.dumps(settings))
    ours, copy = load_pipeline(FluxKontextPipeline, v2), FluxKontextPipeline.from_pretrained(str(full))
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(ours, name).state_dict(), getattr(copy, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert ours.tokenizer_2("a hat").input_ids == copy.tokenizer_2("a hat").input_ids
    assert ours.scheduler.config == copy.scheduler.config
