"""Step1X-Edit on the editor seam: the exact probe, gradients, VLM refresh, the official sampler's
pieces, the loader's errors, and the CLIs on a tiny checkpoint written in the official layout."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.data import astronaut
from test_attention import BruteForceProcessor

from decontext.config import ProtectConfig
from decontext.editors.base import Layout
from decontext.editors.blocks import swapped_processors
from decontext.editors.step1x_edit import Step1XEditor, guided_velocity, official_size, shifted_schedule
from decontext.images import from_array
from decontext.methods.decontext import DeContext
from decontext.pgd import PGDConfig
from decontext.protect import protect
from decontext.runs import image_seed

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from decontext.editors.tiny import write_tiny_step1x_folder

    return write_tiny_step1x_folder(tmp_path_factory.mktemp("step1x") / "tiny", seed=1)


@pytest.fixture(scope="module")
def editor(folder):
    return Step1XEditor.from_pretrained(folder, device="cpu", dtype=torch.float32)


def test_loads_the_official_layout_with_the_tiny_sizes(editor, folder):
    assert editor.version == "v1.1" and editor.depths == {"double": 1, "single": 2}
    assert not editor.transformer.config.guidance_embeds
    assert editor.multiple_of == 16
    assert (folder / "step1x-edit-tiny.safetensors").is_file()


def test_tiny_leaves_no_scratch_folder_and_loads_the_same_weights(editor, tmp_path, monkeypatch):
    """``Step1XEditor.tiny()`` writes its checkpoint to a scratch folder and removes it once loaded (it left
    2 MB in the temp folder per call); what it loaded is what a kept folder with the same seed gives."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    built = Step1XEditor.tiny(seed=1)
    assert list(tmp_path.iterdir()) == []
    kept = Step1XEditor.tiny(seed=1, folder=tmp_path / "kept")
    assert (tmp_path / "kept" / "step1x-edit-tiny.safetensors").is_file()  # a folder the caller named stays
    for a, b in ((built.transformer, editor.transformer), (kept.transformer, editor.transformer)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert built.prefix == editor.prefix


def test_probe_matches_brute_force_non_square_and_keeps_outputs(editor):
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(1, 3, 48, 80, generator=g)
    condition = editor.condition(pixels, ["add a hat", "make the person smile"], (48, 80))
    noise = editor.noise_like(condition, [g])
    sigma = torch.tensor([0.99, 0.97])
    names = editor.block_names
    with torch.no_grad():
        stock = editor.velocity(noise, sigma, condition)
        with editor.probe(names):
            probed = editor.probed_velocity(noise, sigma, condition)
            probed, shares = probed.velocity, probed.shares
        store = {"layout": condition.layout}
        reference = {editor.blocks[n].processor_key: BruteForceProcessor(n, store) for n in names}
        with swapped_processors(editor.transformer, reference):
            brute = editor.velocity(noise, sigma, condition)
    assert condition.layout == Layout(text=editor.max_length, target=15, context=15)
    for name in names:
        assert torch.allclose(shares[name], store[name], atol=1e-5), name
    assert torch.allclose(probed, stock, atol=1e-6)
    assert torch.allclose(brute, stock, atol=1e-4)


def test_reference_ids_follow_the_version(folder, tmp_path):
    from decontext.editors.tiny import write_tiny_step1x_folder

    v11 = Step1XEditor.from_pretrained(folder, device="cpu", dtype=torch.float32)
    v10 = Step1XEditor.from_pretrained(
        write_tiny_step1x_folder(tmp_path / "v10", version="v1.0", seed=1), device="cpu", dtype=torch.float32
    )
    assert v10.version == "v1.0" and v10.connector.has_scale_factor
    x = torch.rand(1, 3, 32, 48)
    c11, c10 = v11.condition(x, ["add a hat"], (32, 48)), v10.condition(x, ["add a hat"], (32, 48))
    target = c11.extra["target_ids"]
    assert (target[:, 0] == 0).all() and torch.equal(c10.extra["target_ids"], target)
    assert torch.equal(c10.extra["context_ids"], target)  # v1.0: the reference shares the target's ids
    expected = target.clone()
    expected[:, 0] = 1
    expected[:, 1:] += 1
    assert torch.equal(c11.extra["context_ids"], expected)  # v1.1: (1, i+1, j+1)


def test_pixel_gradient_matches_float64_finite_differences(folder):
    editor = Step1XEditor.from_pretrained(folder, device="cpu", dtype=torch.float64, vlm_refresh=0)
    pixels = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    blocks = ["double.0", "single.0"]
    editor.prepare(["add glasses"])
    editor.condition(pixels, ["add glasses"], (32, 48), step=0)  # Qwen reads the clean image once

    def share(x):
        condition = editor.condition(x, ["add glasses"], (32, 48), step=1)
        noise = editor.noise_like(condition, [torch.Generator().manual_seed(9)])
        with editor.probe(blocks):
            sigma = torch.tensor([0.99], dtype=torch.float64)
            return editor.probed_velocity(noise, sigma, condition, stop_after="single.0").mean_share(blocks).sum()

    x = pixels.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(share(x), x)
    direction = torch.randn(pixels.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    # measured: the central difference converges to the analytic value as h shrinks to 1e-4 (RoPE runs in fp32)
    h = 1e-4
    with torch.no_grad():
        numeric = (share(pixels + h * direction) - share(pixels - h * direction)) / (2 * h)
    analytic = (grad * direction).sum()
    assert grad.abs().sum() > 0
    assert torch.allclose(analytic, numeric, rtol=1e-4, atol=1e-9), (analytic.item(), numeric.item())


@pytest.mark.parametrize("refresh,expected_calls", [(1, 6), (3, 2), (0, 1)])
def test_vlm_refresh_rereads_the_image_every_k_steps(folder, refresh, expected_calls):
    editor = Step1XEditor.from_pretrained(folder, device="cpu", dtype=torch.float32, vlm_refresh=refresh)
    editor.prepare(["add a hat", "add glasses"])
    seen = []
    encode = editor._encode
    editor._encode = lambda images, prompts: (
        seen.append((np.asarray(images[0]).copy(), list(prompts))),
        encode(images, prompts),
    )[1]
    pixels = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    for step in range(6):
        editor.condition(
            (pixels + 0.05 * step).clamp(0, 1), ["add a hat" if step % 2 else "add glasses"], (32, 48), step=step
        )
    if refresh == 1:  # every step, the current image
        assert len(seen) == 6 and not np.array_equal(seen[0][0], seen[1][0])
    elif refresh == 3:  # steps 0 and 3 re-read; a new prompt in between is encoded from the same snapshot
        snapshots = {arr.tobytes() for arr, _ in seen}
        assert len(snapshots) == 2 and len(seen) == 4
    else:  # the clean image once, every prompt of the pool in one visit
        assert len(seen) == expected_calls and seen[0][1] == ["add a hat", "add glasses"]


def test_share_falls_on_a_non_square_input(editor):
    image = from_array(np.array(Image.fromarray(astronaut()).resize((96, 64))))
    method = DeContext(prompts=["add a hat", "make the person smile"], t_one_every=10)
    settings = ProtectConfig(pgd=PGDConfig(eps=25.5, alpha=2.55, steps=8), resolution="native", measure_draws=2)
    outcome = protect(editor, method, image.pixels, settings, image_seed(0, "wide"))
    assert outcome.working_size == (64, 96)
    assert outcome.after["share"] < outcome.before["share"], (outcome.before, outcome.after)
    assert (outcome.pixels - image.pixels).abs().max() <= 25.5 / 255 + 1e-6
    assert editor._active_probe is None


def test_official_resize_schedule_and_guidance():
    assert official_size(512, 512, 512) == (512, 512)
    h, w = official_size(600, 1000, 512)
    assert (h, w) == (
        math.floor(math.ceil(math.ceil(math.sqrt(512 * 512 * 1000 / 600)) / (1000 / 600)) / 16) * 16,
        math.floor(math.ceil(math.sqrt(512 * 512 * 1000 / 600)) / 16) * 16,
    )
    assert h % 16 == 0 and w % 16 == 0 and abs(h * w / 512**2 - 1) < 0.1
    times = shifted_schedule(28, 1024)
    mu = 0.5 + (1024 - 256) * 0.65 / 3840
    assert len(times) == 29 and times[0] == 1.0 and times[-1] == 0.0
    t = 1 - 5 / 28
    assert (
        abs(times[5] - math.exp(mu) / (math.exp(mu) + 1 / t - 1)) < 1e-6
    )  # linspace runs in float32, as the official torch.linspace
    cond, uncond = torch.zeros(1, 2, 3), torch.zeros(1, 2, 3)
    cond[0, 0] = torch.tensor([4.0, 0, 0])  # norm 4 > 1: rescaled above the threshold
    cond[0, 1] = torch.tensor([0.5, 0, 0])  # norm 0.5: never rescaled
    plain = guided_velocity(cond, uncond, 6.0, 0.5, 0.93)
    rescaled = guided_velocity(cond, uncond, 6.0, 0.95, 0.93)
    assert torch.allclose(plain, 6 * cond)
    assert torch.allclose(rescaled[0, 0], 6 * cond[0, 0] / 4**0.4) and torch.allclose(rescaled[0, 1], 6 * cond[0, 1])
    assert torch.equal(guided_velocity(cond, uncond, 6.0, 0.95, 1.0), plain)  # v1.0 never rescales


def test_edit_returns_the_input_size_and_follows_the_seed(editor):
    image = Image.fromarray(astronaut()).resize((70, 40))
    a, b = editor.edit(image, ["add a hat", "add a hat"], [0, 0], steps=2, resolution=64)
    c = editor.edit(image, ["add a hat"], [1], steps=2, resolution=64)[0]
    assert a.size == image.size
    assert np.array_equal(np.asarray(a), np.asarray(b)) and not np.array_equal(np.asarray(a), np.asarray(c))


def test_real_checkpoint_without_prefix_names_the_flag(folder, tmp_path):
    bare = tmp_path / "real"
    bare.mkdir()
    for name in ("step1x-edit-tiny.safetensors", "step1x.json"):
        (bare / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(ValueError, match="--prefix-file"):
        Step1XEditor.from_pretrained(bare, device="cpu", dtype=torch.float32)
    with pytest.raises(FileNotFoundError, match="--prefix-file"):
        Step1XEditor.from_pretrained(bare, device="cpu", dtype=torch.float32, prefix_file=tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="expected exactly one"):
        Step1XEditor.from_pretrained(tmp_path, device="cpu", dtype=torch.float32)


@pytest.mark.slow
def test_run_experiment_and_metrics_work_on_a_step1x_run(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(astronaut()).resize((64, 48)).save(inputs / "astro.png")
    env = {
        **os.environ,
        "EDITOR": "step1x",
        "NAME": "s1x",
        "RUNS": str(tmp_path / "runs"),
        "INPUT": str(inputs),
        "MODEL": "tiny",
        "PROMPT_INDICES": "0",
        "ATTACK_STEPS": "2",
        "EDIT_STEPS": "2",
        "EDIT_RESOLUTION": "64",
    }
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "run_experiment.sh")], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-2000:]
    run = tmp_path / "runs" / "s1x"
    assert json.loads((run / "run.json").read_text())["editor"] == "step1x_edit"
    manifest = json.loads((run / "protected" / "manifest.json").read_text())
    assert (
        manifest["editor"] == {"family": "step1x_edit", "model": "tiny"}
        and manifest["images"]["astro.png"]["status"] == "done"
    )
    index = json.loads((run / "edits" / "protected" / "index.json").read_text())
    assert index["settings"]["editor"] == "step1x_edit" and Image.open(run / index["edits"][0]["output"]).size == (
        64,
        48,
    )
    scored = subprocess.run(
        [
            sys.executable,
            str(ROOT / "eval" / "compute_metrics.py"),
            "--run",
            str(run),
            "--metrics",
            "pixel",
            "--no-progress",
            "--no-report",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert (run / "summary.md").is_file()


@pytest.mark.slow
def test_attack_script_default_gives_a_protected_image_and_manifest(tmp_path):
    """`bash scripts/attack_step1x.sh` as a newcomer runs it (tiny model, the sample portrait), fewer steps."""
    env = {**os.environ, "OUTPUT": str(tmp_path / "out"), "STEPS": "2"}
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "attack_step1x.sh"), "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    entry = manifest["images"]["astronaut.png"]
    assert entry["status"] == "done" and entry["max_abs_diff_levels"] <= 25
    assert (
        manifest["args"]["eps"] == 25.5
        and manifest["args"]["alpha"] == 1.275
        and manifest["method"]["t_one_every"] == 10
    )
    assert Image.open(tmp_path / "out" / "astronaut.png").size == (512, 512)


def test_qwen_processor_gets_the_folder_pixel_bounds(editor):
    """A local Qwen folder still gets the bounds Step1X uses (the official 256..324 x 28^2 unless the folder
    says otherwise)."""
    bounds = json.loads((Path(editor.name) / "step1x.json").read_text()) if Path(editor.name).is_dir() else None
    processor = editor.processor.image_processor
    assert bounds is not None
    assert (processor.size["shortest_edge"], processor.size["longest_edge"]) == (
        bounds["min_pixels"],
        bounds["max_pixels"],
    )  # transformers 5 keeps them in size
