"""The shipped toy editor (data/toy_editor) loads with the stock FluxKontextPipeline and really edits:
on held-out identities it keeps identity and performs the requested edit."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from decontext.toy import world
from decontext.toy.model import EDITOR_DIR, SETTINGS_FILE


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_editor_files():
    assert (EDITOR_DIR / "model_index.json").exists()
    assert _size(EDITOR_DIR) <= 15 * 2**20
    settings = json.loads((EDITOR_DIR / SETTINGS_FILE).read_text())
    for key in ("num_inference_steps", "guidance_scale", "resolution", "max_sequence_length"):
        assert key in settings


@pytest.fixture(scope="module")
def pipe():
    from diffusers import FluxKontextPipeline

    p = FluxKontextPipeline.from_pretrained("data/toy_editor" if Path("data/toy_editor").exists() else str(EDITOR_DIR))
    p.set_progress_bar_config(disable=True)
    return p


def test_single_stock_call(pipe):
    settings = json.loads((EDITOR_DIR / SETTINGS_FILE).read_text())
    image = world.render_pil(world.sample_scene(world.eval_identities()[0], seed=0))
    out = pipe(
        image=image,
        prompt="Put a hat on this person.",
        height=64,
        width=64,
        max_area=64 * 64,
        _auto_resize=False,
        num_inference_steps=settings["num_inference_steps"],
        guidance_scale=settings["guidance_scale"],
        max_sequence_length=settings["max_sequence_length"],
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert out.size == (64, 64)


def test_heldout_edits_keep_identity():
    from decontext.toy.evaluate import evaluate

    res = evaluate(n_identities=8, seed=0)
    assert res["n_edits"] == 48
    assert res["clean_edit"]["toy_identity"] >= 0.85, res["clean_edit"]
    assert res["clean_edit"]["edit_success"] >= 0.85, res["clean_edit"]
    assert res["other_person"]["toy_identity"] <= 0.6, res["other_person"]
