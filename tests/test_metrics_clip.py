"""CLIP-I / CLIP-S: stand-in encoders for the metric logic, and a tiny randomly initialised CLIP
saved to a local folder to exercise the real transformers loading path (real CLIP weights are not
obtainable here)."""

import json
from dataclasses import replace

import numpy as np
import pytest

from decontext.metrics.base import EvalOptions
from decontext.metrics.clip import CLIPBackend, HFCLIPEncoder
from decontext.metrics.run import load_run
from tests.demo_run import make_demo_run


class ColourEncoder:
    """Image -> mean RGB (centred); text -> a direction in RGB by colour words."""

    words = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}

    def embed_images(self, images):
        return np.stack([np.asarray(im, np.float64).reshape(-1, 3).mean(0) / 255 - 0.5 + 1e-3 for im in images])

    def embed_texts(self, texts):
        out = []
        for t in texts:
            v = np.full(3, 0.1)
            for w, d in self.words.items():
                if w in t.lower():
                    v = v + np.array(d)
            out.append(v)
        return np.stack(out)


@pytest.fixture()
def run(tmp_path):
    return load_run(make_demo_run(tmp_path / "run"))


def test_clip_i_of_image_with_itself_is_one_and_clip_s_follows_prompt(run, tmp_path):
    b = CLIPBackend(encoder=ColourEncoder())
    b.load()
    assert b.available
    e = next(e for e in run.edits if e.stem == "a" and e.condition == "clean")
    assert b.score_edit(replace(e, output=run.source_path("a")), run)["clip_i"] == pytest.approx(1.0)
    from PIL import Image

    src = np.asarray(Image.open(run.source_path("a"))).astype(np.int16)
    redder = src.copy()
    redder[..., 0] += 60
    greener = src.copy()
    greener[..., 1] += 60
    paths = {}
    for name, arr in (("red", redder), ("green", greener)):
        paths[name] = tmp_path / f"{name}.png"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(paths[name])
    red_prompt = replace(e, prompt="Give this person red hair.")
    follows = b.score_edit(replace(red_prompt, output=paths["red"]), run)["clip_s"]
    ignores = b.score_edit(replace(red_prompt, output=paths["green"]), run)["clip_s"]
    assert follows > 0.5 > ignores


def test_missing_clip_is_unavailable_with_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    b = CLIPBackend(EvalOptions(weights_dir=tmp_path / "w", clip_model=str(tmp_path / "nowhere")))
    b.load()
    assert not b.available
    assert "CLIP" in b.unavailable_reason and "nowhere" in b.unavailable_reason


def _tiny_clip_dir(path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    # a byte-level alphabet (printable bytes as themselves, the rest shifted past 255), no merges
    keep = set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256))
    chars, shift = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + shift))
            shift += 1
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = 512, 513
    path.mkdir()
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt")).save_pretrained(path)
    text = dict(
        vocab_size=514,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
    )
    vision = dict(
        hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4, image_size=32, patch_size=8
    )
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def test_real_loading_path_with_tiny_local_model(run, tmp_path):
    d = _tiny_clip_dir(tmp_path / "clip-tiny")
    b = CLIPBackend(EvalOptions(clip_model=str(d)))
    b.load()
    assert b.available, b.unavailable_reason
    assert isinstance(b.encoder, HFCLIPEncoder)
    e = next(e for e in run.edits if e.stem == "b")
    same = b.score_edit(replace(e, output=run.source_path("b")), run)
    assert same["clip_i"] == pytest.approx(1.0, abs=1e-6)
    values = b.score_edit(e, run)
    assert -1 <= values["clip_i"] <= 1 and -1 <= values["clip_s"] <= 1
    # --weights-dir/<name of --clip-model> is found too
    b2 = CLIPBackend(EvalOptions(weights_dir=tmp_path, clip_model="someorg/clip-tiny"))
    b2.load()
    assert b2.available, b2.unavailable_reason
