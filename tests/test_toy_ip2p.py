"""The toy InstructPix2Pix (``--model toy-ip2p``): its training recipe, and the shipped folder as a real
editor of the faces world through the stock pipeline and the editor seam."""

import json

import numpy as np
import pytest
import torch

from decontext.toy import world
from decontext.toy.names import TOY_DEFAULTS, is_toy_model, toy_editor_dir, toy_family, toy_versions
from experiments.toy_train_ip2p import DROP, TEXT_TOKENS, drop_masks

FOLDER = toy_editor_dir("toy-ip2p", "instruct_pix2pix")
MAX_MB = 15  # issue 12's budget for the shipped folder


def test_names_keep_the_families_apart():
    assert toy_family("toy-ip2p") == "instruct_pix2pix" and toy_family("toy-v2") == "flux_kontext"
    assert toy_versions("instruct_pix2pix") == ["toy-ip2p"] and "toy-ip2p" not in toy_versions("flux_kontext")
    assert is_toy_model("toy-ip2p", "instruct_pix2pix") and not is_toy_model("toy-ip2p", "flux_kontext")
    assert toy_editor_dir("toy", "instruct_pix2pix") == FOLDER and TOY_DEFAULTS["flux_kontext"] == "toy-v1"


def test_conditioning_dropout_is_instructpix2pixs():
    no_text, no_image = drop_masks(200_000, np.random.default_rng(0))
    shares = {
        "text only": float((no_text & ~no_image).float().mean()),
        "image only": float((~no_text & no_image).float().mean()),
        "both": float((no_text & no_image).float().mean()),
    }
    assert all(abs(v - DROP) < 0.003 for v in shares.values()), shares


def test_smoke_training_writes_a_stock_pipeline_folder(tmp_path):
    from experiments.toy_train_ip2p import main

    info = main(["--smoke", "--threads", "1", "--out", str(tmp_path / "editor"), "--work", str(tmp_path / "work")])
    index = json.loads((tmp_path / "editor" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionInstructPix2PixPipeline"
    vae = json.loads((tmp_path / "editor" / "vae" / "config.json").read_text())
    assert vae["shift_factor"] is None and vae["scaling_factor"] > 0  # SD-style latents: scale only
    assert (
        json.loads((tmp_path / "editor" / "tokenizer" / "tokenizer_config.json").read_text())["model_max_length"]
        == TEXT_TOKENS
    )
    assert set(info["seconds"]) == {"vae", "unet"}


@pytest.fixture(scope="module")
def editor():
    from decontext.editors import load_editor

    if not (FOLDER / "model_index.json").is_file():
        pytest.fail(f"{FOLDER} is missing: train it with `python -m experiments.toy_train_ip2p` (docs/TOY.md)")
    return load_editor("toy-ip2p", "instruct_pix2pix", "cpu", "float32")


def test_shipped_folder_is_small_and_loads_by_name(editor):
    size = sum(p.stat().st_size for p in FOLDER.rglob("*") if p.is_file())
    assert size <= MAX_MB * 2**20, f"{FOLDER}: {size / 2**20:.1f} MB > {MAX_MB} MB"
    assert editor.name == "toy-ip2p" and editor.recommended["resolution"] == 64
    settings = json.loads((FOLDER / "decontext_toy.json").read_text())
    assert editor.image_guidance == settings["image_guidance_scale"]


def test_edits_a_held_out_face_keeping_who_it_is(editor):
    from PIL import Image

    from decontext.toy.reader import ToyReader, score_reads

    reader = ToyReader.load()
    scenes = [world.sample_scene(i, seed=10_000 + i.index) for i in world.eval_identities()[:6]]
    scores = []
    for scene in scenes:
        source = world.render(scene)
        out = editor.edit(
            Image.fromarray(source),
            ["give them a hat"],
            [0],
            steps=editor.recommended["num_inference_steps"],
            guidance=editor.recommended["guidance_scale"],
            resolution=64,
        )
        again = editor.edit(
            Image.fromarray(source),
            ["give them a hat"],
            [0],
            steps=editor.recommended["num_inference_steps"],
            guidance=editor.recommended["guidance_scale"],
            resolution=64,
        )
        assert np.array_equal(np.asarray(out[0]), np.asarray(again[0]))
        reads_src, reads_out = reader.read(source[None]), reader.read(np.asarray(out[0])[None])
        scores.append(
            score_reads({k: v[0] for k, v in reads_src.items()}, {k: v[0] for k, v in reads_out.items()}, "hat")
        )
    assert np.mean([s["toy_identity"] for s in scores]) >= 0.75
    assert np.mean([s["edit_success"] for s in scores]) >= 0.5


def test_methods_that_apply_run_within_budget_on_it(editor):
    from decontext.methods import build_method
    from decontext.pgd import PGD

    x = (
        torch.from_numpy(world.render(world.sample_scene(world.eval_identities()[0], seed=1)))
        .permute(2, 0, 1)[None]
        .float()
        / 255
    )
    for name in ("encoder", "flow_loss"):
        method = build_method(name, **({"prompts": "data/prompts/toy_prompts.txt"} if name == "flow_loss" else {}))
        method.prepare(editor)
        with method.session(editor):
            adv = (
                PGD(eps=8, alpha=2, steps=3, seed=0, progress=False)
                .run(x, lambda p, step, gen, method=method: method.loss(editor, p, (64, 64), step, gen))
                .pixels
            )
        assert (adv - x).abs().max() <= 8 / 255 + 1e-6 and (adv - x).abs().max() > 0
