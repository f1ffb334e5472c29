"""The amortized protector: budget by construction and on saved files, gradients through the editor,
exact resume, refusals before any model loads, the attack CLI's two uses, and training on every tiny
DiT editor."""

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from decontext.amortize import RunOptions, TrainConfig, objective, train
from decontext.editors import load_editor
from decontext.methods import build_method
from decontext.methods.amortized import Protector, load_protector, protected_start

ROOT = Path(__file__).resolve().parents[1]
QUICK = RunOptions(
    checkpoint_every=2, validate_every=2, val_count=2, val_draws=1, device="cpu", dtype="float32", progress=False
)


def _tiny_config(**changes) -> TrainConfig:
    base = dict(
        model="tiny",
        family="flux_kontext",
        method="decontext",
        eps=16.0,
        images="toy-train",
        size=32,
        batch_size=2,
        steps=4,
        lr=1e-3,
        seed=3,
    )
    return TrainConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("protector")
    train(_tiny_config(), out, QUICK, log=lambda *a: None)
    return out


def test_protector_output_is_inside_the_budget_at_any_size():
    protector = Protector(eps=8)
    for shape in ((1, 3, 37, 53), (2, 3, 64, 20), (1, 3, 5, 9)):
        delta = protector(torch.rand(shape))
        assert delta.shape == shape and float(delta.detach().abs().max()) <= 8 / 255
    assert protector.parameters_count() < 10_000_000


def test_training_writes_a_protector_that_says_what_it_is(trained):
    config = json.loads((trained / "protector.json").read_text())
    assert config["editor"] == {"family": "flux_kontext", "model": "tiny"} and config["method"]["method"] == "decontext"
    assert config["eps"] == 16.0 and config["working_size"] == [32, 32] and config["steps"] == 4
    assert (
        config["recipe"]["digest"]
        and len(config["data_digest"]) == 64
        and config["command"].startswith("python -m decontext amortize")
    )
    assert [v["step"] for v in config["validation"]] == [0, 2, 4]
    assert (trained / "protector.safetensors").stat().st_size < 5 * 2**20


def test_the_training_gradient_reaches_the_protector_through_the_editor():
    """d objective / d (one protector parameter) by autograd equals a central finite difference."""
    editor = load_editor("tiny", "flux_kontext", "cpu", "float32")
    method = build_method("decontext", prompts=["make it red", "add a hat"])
    torch.manual_seed(0)
    protector = Protector(eps=16)
    x0 = 0.2 + 0.6 * torch.rand(
        2, 3, 32, 32, generator=torch.Generator().manual_seed(1)
    )  # far from 0 and 1: no clamping
    bias = protector.net.conv_out.bias

    def value():
        generators = [torch.Generator().manual_seed(s) for s in (7, 8)]
        return objective(method, editor, (x0 + protector(x0)).clamp(0, 1), (32, 32), 0, generators)

    with method.session(editor):
        (grad,) = torch.autograd.grad(value(), bias)
        h = 1e-2
        with torch.no_grad():
            bias[1] += h
            up = float(value())
            bias[1] -= 2 * h
            down = float(value())
            bias[1] += h
    numeric = (up - down) / (2 * h)
    assert abs(float(grad[1])) > 1e-6
    assert float(grad[1]) == pytest.approx(numeric, rel=0.05, abs=1e-6)


def test_a_killed_training_resumes_to_the_same_weights(tmp_path):
    command = [
        sys.executable,
        "-m",
        "decontext",
        "amortize",
        "--model",
        "tiny",
        "--size",
        "32",
        "--batch-size",
        "2",
        "--steps",
        "6",
        "--lr",
        "0.001",
        "--checkpoint-every",
        "1",
        "--validate-every",
        "3",
        "--val-count",
        "2",
        "--device",
        "cpu",
        "--no-progress",
        "--prompts",
        str(ROOT / "data" / "prompts" / "toy_prompts.txt"),
    ]
    straight = subprocess.run([*command, "--out", str(tmp_path / "straight")], capture_output=True, text=True, cwd=ROOT)
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = subprocess.Popen(
        [*command, "--out", str(tmp_path / "killed")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT
    )
    state = tmp_path / "killed" / "checkpoint" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and killed.poll() is None:
        if state.is_file() and json.loads(state.read_text())["step"] >= 2:
            break
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "protector.json").exists()  # it really was stopped before the end
    resumed = subprocess.run([*command, "--out", str(tmp_path / "killed")], capture_output=True, text=True, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout + resumed.stderr
    assert (tmp_path / "killed" / "protector.safetensors").read_bytes() == (
        tmp_path / "straight" / "protector.safetensors"
    ).read_bytes()


@pytest.mark.parametrize("where", ["after_the_swap", "between_the_renames", "after_the_first_rename"])
def test_a_kill_inside_the_checkpoint_swap_resumes_to_the_same_weights(trained, tmp_path, where):
    """The checkpoint is swapped in three steps (new folder complete as checkpoint.part; checkpoint -> .old;
    .part -> checkpoint; .old removed). A kill after any of them resumes at the last complete checkpoint and ends
    with the uninterrupted run's weights: a leftover .old no longer breaks the next swap (it did: "Directory not
    empty"), and with checkpoint/ gone the newer .part, else the .old, is taken."""
    import shutil

    out = tmp_path / "run"
    train(_tiny_config(), out, RunOptions(**{**QUICK.__dict__, "stop_after": 2}), log=lambda *a: None)
    checkpoint, part, old = out / "checkpoint", out / "checkpoint.part", out / "checkpoint.old"
    if where == "after_the_swap":  # killed while removing .old: it stays beside the new checkpoint
        shutil.copytree(checkpoint, old)
    elif where == "between_the_renames":  # checkpoint already .old, .part (the newer, complete) not yet renamed
        shutil.copytree(checkpoint, part)
        checkpoint.rename(old)
    else:  # the first checkpoint, or .part already removed by hand: only .old is left
        checkpoint.rename(old)
    lines = []
    train(_tiny_config(), out, QUICK, log=lines.append)
    assert any("resuming" in str(line) and "step 2" in str(line) for line in lines), lines
    assert not part.exists() and not old.exists()
    assert (out / "protector.safetensors").read_bytes() == (trained / "protector.safetensors").read_bytes()


def test_a_checkpoint_of_another_recipe_is_refused(trained, tmp_path):
    out = tmp_path / "other"
    train(_tiny_config(steps=4), out, RunOptions(**{**QUICK.__dict__, "stop_after": 2}), log=lambda *a: None)
    with pytest.raises(ValueError, match="another training recipe"):
        train(_tiny_config(steps=4, lr=5e-3), out, QUICK, log=lambda *a: None)


@pytest.mark.parametrize("family", ["flux_kontext", "step1x_edit", "flux2", "qwen_image_edit"])
def test_training_lowers_the_objective_on_every_tiny_dit_editor(family, tmp_path):
    """Three steps raise the method's loss (lower the share) on the first batch, same draws, against the
    untrained protector of the same seed. (Held-out validation of random-weight tiny editors after three
    steps is noise; the toy's validation is the evidence that it generalises, docs/EVIDENCE.md.)"""
    from decontext.amortize import ImageSource, _generators
    from decontext.methods import build_from_options

    config = _tiny_config(family=family, steps=3, lr=1e-3, batch_size=2)
    train(config, tmp_path / family, QUICK, log=lambda *a: None)
    editor = load_editor("tiny", family, "cpu", "float32")
    method = build_from_options("decontext", {})
    torch.manual_seed(config.seed)
    untrained, trained_ = Protector(config.architecture, config.eps), load_protector(tmp_path / family)
    x0, size = ImageSource(config.images, config.size, config.seed).batch(0, 2), (config.size, config.size)
    values = []
    with method.session(editor), torch.no_grad():
        for protector in (untrained, trained_):
            method.start(editor, x0, size)
            values.append(
                float(
                    objective(method, editor, (x0 + protector(x0)).clamp(0, 1), size, 0, _generators(config.seed, 0, 2))
                )
            )
    assert values[1] > values[0], values


def test_init_and_k_steps_equal_pgd_started_from_that_point(trained):
    from decontext.config import PGDConfig, ProtectConfig
    from decontext.pgd import PGD
    from decontext.protect import protect

    editor = load_editor("tiny", "flux_kontext", "cpu", "float32")
    method = build_method("decontext", prompts=["make it red", "add a hat"])
    x0 = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(4))
    pgd = PGDConfig.for_method(method, eps=16, steps=3)
    via_protect = protect(
        editor, method, x0, ProtectConfig(pgd=pgd, resolution="native", measure_draws=0, init=str(trained)), seed=9
    )
    start = protected_start(load_protector(trained), editor, x0, "native", 16)
    size = editor.working_size(40, 56, "native")
    with method.session(editor):
        method.start(editor, x0, size)
        by_hand = PGD(config=pgd, seed=9, progress=False).run(
            x0, lambda x, s, g: method.loss(editor, x, size, s, g), start_pixels=start
        )
    assert torch.equal(via_protect.pixels, by_hand.pixels)
    assert not torch.equal(start, x0) and float((start - x0).abs().max()) <= 16 / 255 + 1e-6


def _attack(*args):
    return subprocess.run(
        [sys.executable, "-m", "decontext", "attack", *args], capture_output=True, text=True, cwd=ROOT
    )


def test_attack_with_a_protector_keeps_the_budget_on_saved_files_and_records_it(trained, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for name, shape in (("odd", (37, 53)), ("wide", (20, 64)), ("tall", (100, 30))):
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(inputs / f"{name}.png")
    result = _attack(
        "--model",
        "tiny",
        "--method",
        "amortized",
        "--protector",
        str(trained),
        "--input",
        str(inputs),
        "--output",
        str(tmp_path / "out"),
        "--resolution",
        "native",
        "--measure-draws",
        "1",
        "--no-progress",
        "--batch-size",
        "2",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["method"]["method"] == "amortized" and len(manifest["method"]["sha256"]) == 64
    assert (
        manifest["method"]["objective"]["method"] == "decontext"
        and manifest["pgd"]["steps"] == 0
        and manifest["pgd"]["eps"] == 16.0
    )
    for name in ("odd", "wide", "tall"):
        source = np.asarray(Image.open(inputs / f"{name}.png")).astype(int)
        saved = np.asarray(Image.open(tmp_path / "out" / f"{name}.png")).astype(int)
        entry = manifest["images"][f"{name}.png"]
        assert saved.shape == source.shape and 0 < np.abs(saved - source).max() <= 16 == int(manifest["pgd"]["eps"])
        assert (
            entry["max_abs_diff_levels"] == np.abs(saved - source).max()
            and "share" in entry["before"]
            and "share" in entry["after"]
        )
    init = _attack(
        "--model",
        "tiny",
        "--init",
        str(trained),
        "--eps",
        "16",
        "--steps",
        "2",
        "--input",
        str(inputs / "odd.png"),
        "--output",
        str(tmp_path / "init"),
        "--resolution",
        "native",
        "--measure-draws",
        "0",
        "--no-progress",
    )
    assert init.returncode == 0, init.stderr[-2000:]
    recorded = json.loads((tmp_path / "init" / "manifest.json").read_text())
    assert (
        recorded["init"] == str(trained)
        and recorded["images"]["odd.png"]["settings"]["init"]["sha256"] == manifest["method"]["sha256"]
    )


def _refused_before_loading(monkeypatch, capsys, *args) -> subprocess.CompletedProcess:
    """``decontext attack *args`` in this process, where loading an editor fails the test: exit code and stderr."""
    import decontext.cli.attack as attack_cli
    from decontext.cli import main

    def loaded(*a, **k):
        raise AssertionError("the editor was loaded before the protector was refused")

    monkeypatch.setattr(attack_cli, "load_editor_for", loaded)
    capsys.readouterr()
    try:
        code = main(["attack", *args])
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def test_a_protector_for_another_family_method_or_budget_is_refused_before_loading(
    trained, tmp_path, monkeypatch, capsys
):
    common = ["--input", str(tmp_path), "--output", str(tmp_path / "o"), "--no-progress"]
    _refused = functools.partial(_refused_before_loading, monkeypatch, capsys)
    other_family = _refused(
        "--family", "step1x_edit", "--model", "tiny", "--method", "amortized", "--protector", str(trained), *common
    )
    assert (
        other_family.returncode == 2
        and "trained against the flux_kontext editor, not step1x_edit" in other_family.stderr
    )
    # an objective the editor cannot compute (DeContext needs context attention; InstructPix2Pix has none) is refused
    # even where a transfer is allowed
    no_context = _refused(
        "--family",
        "instruct_pix2pix",
        "--model",
        "tiny",
        "--method",
        "amortized",
        "--protector",
        str(trained),
        "--allow-transfer",
        *common,
    )
    assert no_context.returncode == 2 and "does not apply to the instruct_pix2pix editor" in no_context.stderr
    other_method = _refused("--model", "tiny", "--method", "encoder", "--init", str(trained), "--eps", "16", *common)
    assert other_method.returncode == 2 and "trained with the decontext method, not encoder" in other_method.stderr
    smaller = _refused("--model", "tiny", "--method", "amortized", "--protector", str(trained), "--eps", "8", *common)
    assert (
        smaller.returncode == 2
        and "larger than this run's 8/255" in smaller.stderr
        and "--allow-transfer" in smaller.stderr
    )
    missing = _refused("--model", "tiny", "--method", "amortized", *common)
    assert missing.returncode == 2 and "needs --protector" in missing.stderr
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8) + 100).save(tmp_path / "grey.png")
    allowed = _attack(
        "--model",
        "tiny",
        "--method",
        "amortized",
        "--protector",
        str(trained),
        "--eps",
        "8",
        "--allow-transfer",
        "--input",
        str(tmp_path / "grey.png"),
        "--output",
        str(tmp_path / "allowed"),
        "--measure-draws",
        "0",
        "--no-progress",
    )
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    saved = np.asarray(Image.open(tmp_path / "allowed" / "grey.png")).astype(int)
    assert np.abs(saved - 100).max() <= 8  # clamped to this run's budget


def test_the_conv_architecture_has_no_attention_and_is_in_the_recipe():
    from decontext.amortize import recipe_flags
    from decontext.methods.amortized import CONV_ARCHITECTURE

    def attention_layers(protector):
        return [name for name, module in protector.named_modules() if type(module).__name__ == "Attention"]

    assert attention_layers(Protector()) and not attention_layers(Protector(CONV_ARCHITECTURE))
    assert recipe_flags(_tiny_config(architecture=dict(CONV_ARCHITECTURE)))[-2:] == ["--architecture", "conv"]
    assert "--architecture" not in recipe_flags(_tiny_config())
    x = torch.rand(1, 3, 40, 56)
    assert Protector(CONV_ARCHITECTURE, eps=4)(x).detach().abs().max() <= 4 / 255
