"""InstructPix2Pix on the editor seam: the tiny model built offline, the stock pipeline's edits, the
cross-attention maps, the noise-prediction training pair, and the methods that do (not) apply."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.data import astronaut

from decontext.editors import load_editor
from decontext.editors.instruct_pix2pix import EDIT_DEFAULTS, InstructPix2PixEditor, official_size
from decontext.methods import build_method
from decontext.methods.base import draw_prompts_and_sigmas


@pytest.fixture(scope="module")
def editor():
    return load_editor("tiny", "instruct_pix2pix", "cpu", "float32")


@pytest.fixture(scope="module")
def face():
    return Image.fromarray(astronaut()).resize((96, 64))


def cli_size(height, width, resolution, multiple):
    """The official edit CLI's arithmetic, written out step by step (a reference for official_size)."""
    factor = resolution / max(width, height)
    factor = math.ceil(min(width, height) * factor / multiple) * multiple / min(width, height)
    return int((height * factor) // multiple) * multiple, int((width * factor) // multiple) * multiple


@pytest.mark.parametrize("hw", [(512, 512), (768, 512), (480, 640), (1000, 333), (123, 457)])
def test_working_size_is_the_official_cli_rule(hw):
    assert official_size(*hw, 512, 64) == cli_size(*hw, 512, 64)
    h, w = official_size(*hw, 512, 64)
    assert h % 64 == 0 and w % 64 == 0 and min(h, w) >= min(hw) * 512 / max(hw)  # the short side is rounded up


def test_tiny_loads_offline_with_the_sd_layout(editor):
    assert isinstance(editor, InstructPix2PixEditor)
    assert editor.unet.config.in_channels == 2 * editor.vae.config.latent_channels  # source concatenated on channels
    assert editor.depths == {"down": 2, "mid": 1, "up": 4}
    assert editor.resolve_blocks("down,mid.0") == ["down.0", "down.1", "mid.0"]
    assert editor.resolve_blocks("up:0-1") == ["up.0", "up.1"]
    with pytest.raises(ValueError, match="unknown block stream"):
        editor.resolve_blocks("single:0-25/38")
    assert editor.recommended == EDIT_DEFAULTS


def test_edit_is_the_stock_pipeline_and_deterministic(editor, face):
    a = editor.edit(face, ["make it blue", "add a hat"], [1, 2], steps=4, guidance=7.5, resolution="native")
    b = editor.edit(face, ["make it blue", "add a hat"], [1, 2], steps=4, guidance=7.5, resolution="native")
    assert [im.size for im in a] == [face.size] * 2
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=False))
    c = editor.edit(face, ["make it blue"], [3], steps=4, guidance=7.5, resolution="native")
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))  # the seed matters
    # the same call straight through diffusers, with its own prompt encoding: the same pixels
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline(
        **{k: getattr(editor.pipe, k) for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")},
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        "make it blue",
        image=face,
        num_inference_steps=4,
        guidance_scale=7.5,
        image_guidance_scale=1.5,
        generator=torch.Generator().manual_seed(1),
        output_type="np",
    ).images[0]
    assert np.abs(np.round(np.clip(ref, 0, 1) * 255).astype(int) - np.asarray(a[0]).astype(int)).max() <= 1


def test_cross_attention_text_maps_equal_brute_force_and_leave_the_output_alone(editor):
    """text_maps = per image query, the softmax mass on the prompt's own tokens (no BOS/EOS/padding),
    mean over heads; checked against a float64 softmax of the layer's own q and k."""
    x = torch.rand(2, 3, 64, 96)
    condition = editor.condition(x, ["make it blue"], (64, 96))
    mask = condition.extra["text_mask"][0]
    ids = editor.pipe.tokenizer("make it blue", padding="max_length", max_length=77).input_ids
    special = {editor.pipe.tokenizer.bos_token_id, editor.pipe.tokenizer.eos_token_id}
    words = [i for i, t in enumerate(ids) if t not in special]
    assert mask.nonzero().flatten().tolist() == words and len(words) >= 3
    noise = editor.noise_like(condition, [torch.Generator().manual_seed(0)])
    x_t, _ = editor.flow_pair(condition, noise, 0.7)
    stock = editor.velocity(x_t, 0.7, condition)
    with editor.text_attention(editor.block_names):
        probed = editor.probed_velocity(x_t, 0.7, condition)
        probed, maps = probed.velocity, probed.text_maps
    torch.testing.assert_close(probed, stock, rtol=1e-4, atol=1e-5)
    assert set(maps) == set(editor.block_names)
    lat = condition.latents.shape[-2] * condition.latents.shape[-1]
    assert maps["down.0"].shape == (2, lat) and maps["down.1"].shape == (2, lat // 4)
    for m in maps.values():
        assert (m > 0).all() and (m < 1).all()
    # brute force for one layer: softmax(q k^T / sqrt(d)) from the layer's own projections
    layer = editor.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    seen = {}
    hook = layer.register_forward_hook(
        lambda m, args, kwargs, out: seen.update(h=args[0], ctx=kwargs["encoder_hidden_states"]), with_kwargs=True
    )
    try:
        with editor.text_attention(["down.0"]):
            got = editor.probed_velocity(x_t, 0.7, condition).text_maps["down.0"]
    finally:
        hook.remove()
    q = layer.to_q(seen["h"]).unflatten(-1, (layer.heads, -1)).transpose(1, 2)
    k = layer.to_k(seen["ctx"]).unflatten(-1, (layer.heads, -1)).transpose(1, 2)
    probs = torch.softmax((q.double() @ k.double().transpose(-1, -2)) / math.sqrt(q.shape[-1]), -1)
    want = probs[..., words].sum(-1).mean(1)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


def test_stop_after_ends_the_pass_and_probes_restore(editor):
    x = torch.rand(1, 3, 64, 96)
    condition = editor.condition(x, ["add a hat"], (64, 96))
    noise = editor.noise_like(condition, [torch.Generator().manual_seed(0)])
    stock = dict(editor.unet.attn_processors)
    with editor.text_attention(["down.0", "down.1", "up.3"]):
        probed = editor.probed_velocity(noise, 1.0, condition, stop_after="down.1")
        assert probed.velocity is None
        assert set(probed.text_maps) == {"down.0", "down.1"}  # up.3 never ran
    assert dict(editor.unet.attn_processors) == stock
    with pytest.raises(ValueError, match="probed"):
        editor.velocity(noise, 1.0, condition, stop_after="down.0")


def test_training_pair_is_the_ddpm_objective(editor):
    x = torch.rand(1, 3, 64, 96)
    condition = editor.condition(x, ["add a hat"], (64, 96))
    noise = editor.noise_like(condition, [torch.Generator().manual_seed(0)])
    alphas = editor.pipe.scheduler.alphas_cumprod
    for sigma, t in ((0.0, 0), (0.5, 500), (1.0, 999)):  # round(0.5 * 999) = 499.5 -> 500
        x_t, target = editor.flow_pair(condition, noise, sigma)
        a = float(alphas[t])
        x0 = condition.latents * editor.vae.config.scaling_factor
        torch.testing.assert_close(x_t, math.sqrt(a) * x0 + math.sqrt(1 - a) * noise, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(target, noise)
        assert int(editor.timesteps(sigma)) == t
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        editor.timesteps(1.5)
    # the UNet input is what the pipeline feeds it: scheduler-scaled x_t (Euler: x / sqrt(s^2 + 1)) = x_t here
    s = math.sqrt((1 - float(alphas[700])) / float(alphas[700]))
    x0 = condition.latents * editor.vae.config.scaling_factor
    euler_x = x0 + s * noise  # the Euler (k-diffusion) variable at that timestep
    torch.testing.assert_close(
        euler_x / math.sqrt(s * s + 1), editor.flow_pair(condition, noise, 700 / 999)[0], rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("method", ["encoder", "flow_loss"])
def test_applicable_methods_have_pixel_gradients(editor, method):
    m = build_method(method, **({"prompts": ["add a hat", "make it blue"]} if method == "flow_loss" else {}))
    m.check_applies(editor)
    m.prepare(editor) if method == "flow_loss" else None
    x = torch.rand(1, 3, 64, 96, requires_grad=True)
    with m.session(editor):
        loss, logs = m.loss(editor, x, (64, 96), 0, [torch.Generator().manual_seed(0)])
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and logs


def test_decontext_says_it_does_not_apply(editor):
    with pytest.raises(ValueError, match="does not apply to the instruct_pix2pix editor.*context"):
        build_method("decontext").check_applies(editor)
    with pytest.raises(ValueError, match="input channels"):
        with editor.probe(["down.0"]):
            pass


def test_sigma_draws_map_to_every_timestep_range(editor):
    _, sigmas = draw_prompts_and_sigmas(torch.Generator().manual_seed(0), 3, (0.85, 1.0), count=64)
    t = editor.timesteps(sigmas)
    assert int(t.min()) >= 849 and int(t.max()) <= 999


def test_inference_cli_records_and_uses_the_image_guidance(tmp_path, face):
    import json

    from decontext.cli.edit import main as inference_main

    face.save(tmp_path / "face.png")
    out = tmp_path / "edits"
    argv = [
        "--model",
        "tiny",
        "--images",
        str(tmp_path / "face.png"),
        "--output",
        str(out),
        "--prompt",
        "add a hat",
        "--steps",
        "3",
        "--resolution",
        "native",
        "--image-guidance",
        "2.0",
        "--no-progress",
    ]
    assert inference_main(family="instruct_pix2pix", argv=argv) == 0
    index = json.loads((out / "index.json").read_text())
    assert index["settings"]["image_guidance"] == 2.0 and index["settings"]["editor"] == "instruct_pix2pix"
    saved = np.asarray(Image.open(out / "face" / "0" / "seed42.png"))
    editor = load_editor("tiny", "instruct_pix2pix", "cpu", "float32")
    editor.image_guidance = 2.0
    want = np.asarray(editor.edit(face, ["add a hat"], [42], steps=3, guidance=7.5, resolution="native")[0])
    assert np.array_equal(saved, want)


@pytest.mark.slow
def test_run_experiment_and_toy_metrics_work_on_an_ip2p_run(tmp_path):
    """EDITOR=ip2p through the one-folder driver on the trained toy: encoder protection by default,
    edits of clean and protected, then the toy metrics backend (run.json names toy-ip2p)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from decontext.toy import world

    root = Path(__file__).resolve().parents[1]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for k, identity in enumerate(world.eval_identities()[:2]):
        Image.fromarray(world.render(world.sample_scene(identity, seed=k))).save(inputs / f"face{k}.png")
    env = {
        **os.environ,
        "EDITOR": "ip2p",
        "NAME": "ip",
        "RUNS": str(tmp_path / "runs"),
        "INPUT": str(inputs),
        "MODEL": "toy-ip2p",
        "PROMPTS": "data/prompts/toy_prompts.txt",
        "PROMPT_INDICES": "0 4",
        "ATTACK_STEPS": "3",
        "ATTACK_RESOLUTION": "native",
        "EDIT_RESOLUTION": "64",
    }
    result = subprocess.run(
        ["bash", str(root / "scripts" / "run_experiment.sh")], env=env, capture_output=True, text=True, cwd=root
    )
    assert result.returncode == 0, result.stderr[-2000:]
    run = tmp_path / "runs" / "ip"
    assert json.loads((run / "run.json").read_text())["editor"] == "instruct_pix2pix"
    manifest = json.loads((run / "protected" / "manifest.json").read_text())
    assert manifest["method"]["method"] == "encoder" and manifest["args"]["eps"] == 16.0
    assert all(entry["max_abs_diff_levels"] <= 16 for entry in manifest["images"].values())
    index = json.loads((run / "edits" / "protected" / "index.json").read_text())
    assert index["settings"]["image_guidance"] == 3.0 and index["settings"]["steps"] == 20  # the toy folder's settings
    scored = subprocess.run(
        [sys.executable, str(root / "eval" / "compute_metrics.py"), "--run", str(run), "--no-progress", "--no-report"],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert scored.returncode == 0, scored.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert "toy_identity" in json.dumps(summary)
