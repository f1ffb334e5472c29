"""Issue 17 on the attack and editing side: exact resume, arguments checked before any model loads,
images too small to change, file names that are not UTF-8, crash safety under SIGKILL, one writer per
output folder, non-finite losses and GPU out-of-memory handled per image."""

from __future__ import annotations

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

from decontext import protect as protect_module
from decontext.cli.attack import main as attack_main
from decontext.cli.edit import main as inference_main
from decontext.config import ProtectConfig
from decontext.editors.flux_kontext import FluxKontextEditor
from decontext.methods import build_method
from decontext.names import shown
from decontext.pgd import PGDConfig
from decontext.protect import protect_files
from decontext.runs import image_seed

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["add a hat", "make the person smile"]


@pytest.fixture(scope="module")
def editor():
    return FluxKontextEditor.tiny()


def photos(folder: Path, names=("a", "b"), size=(40, 48)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(30, 220, (*size, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    return folder


def settings(eps=8.0, steps=2, **pgd) -> ProtectConfig:
    return ProtectConfig(pgd=PGDConfig(eps=eps, alpha=1.0, steps=steps, **pgd), resolution="native", measure_draws=0)


def decontext():
    return build_method("decontext", prompts=PROMPTS)


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.glob("*.png")}


# ------------------------------------------------------------------------------------------ 1. resume
def test_resume_skips_only_the_same_settings_on_the_same_bytes(tmp_path, editor):
    inputs, out = photos(tmp_path / "in"), tmp_path / "out"
    log = []
    first = protect_files(editor, decontext(), inputs, out, settings(), progress=False, log=log.append)
    assert first.done == ["a.png", "b.png"]
    entry = manifest(out)["images"]["a.png"]
    assert entry["status"] == "done" and len(entry["input_sha256"]) == 64 and entry["settings"]["pgd"]["eps"] == 8.0
    saved = files(out)

    again = protect_files(editor, decontext(), inputs, out, settings(), progress=False, log=log.append)
    assert again.skipped == ["a.png", "b.png"] and not again.done and again.ok

    other = protect_files(editor, decontext(), inputs, out, settings(eps=4.0, steps=3), progress=False, log=log.append)
    assert not other.done and set(other.failed) == {"a.png", "b.png"}
    assert "pgd.eps: 8.0 -> 4.0" in other.failed["a.png"] and "pgd.steps: 2 -> 3" in other.failed["a.png"]
    assert "--overwrite" in other.failed["a.png"]
    assert files(out) == saved  # nothing the user had was touched
    assert manifest(out)["images"]["a.png"]["status"] == "done"  # and its record is kept

    other_method = protect_files(
        editor,
        build_method("decontext", prompts=["add glasses"]),
        inputs,
        out,
        settings(),
        progress=False,
        log=log.append,
    )
    assert "method.prompts_sha256" in other_method.failed["a.png"]

    Image.fromarray(np.full((40, 48, 3), 100, np.uint8)).save(inputs / "a.png")  # the input changed
    changed = protect_files(editor, decontext(), inputs, out, settings(), progress=False, log=log.append)
    assert "input file's bytes changed" in changed.failed["a.png"] and changed.skipped == ["b.png"]

    redo = protect_files(
        editor, decontext(), inputs, out, settings(eps=4.0, steps=6), progress=False, log=log.append, overwrite=True
    )
    assert redo.done == ["a.png", "b.png"]
    record = manifest(out)["images"]
    assert (
        "input file's bytes changed" in record["a.png"]["redone"] and "pgd.eps: 8.0 -> 4.0" in record["b.png"]["redone"]
    )
    assert record["b.png"]["settings"]["pgd"]["eps"] == 4.0
    assert files(out)["b.png"] != saved["b.png"]


def test_a_file_the_tool_did_not_make_is_never_overwritten(tmp_path, editor):
    inputs, out = photos(tmp_path / "in", names=("a",)), tmp_path / "out"
    out.mkdir()
    mine = np.full((40, 48, 3), 7, np.uint8)
    Image.fromarray(mine).save(out / "a.png")
    original = (out / "a.png").read_bytes()
    report = protect_files(editor, decontext(), inputs, out, settings(), progress=False, log=lambda m: None)
    assert "no manifest entry says how it was made" in report.failed["a.png"]
    assert (out / "a.png").read_bytes() == original


# ------------------------------------------------------------------------------------------ 2. arguments
def run_attack(*args, timeout=300):
    return subprocess.run(
        [sys.executable, str(ROOT / "attack" / "attack_kontext.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--eps", "-1"], "--eps must be > 0"),
        (["--eps", "0"], "--eps must be > 0"),
        (["--alpha", "0"], "--alpha must be > 0"),
        (["--steps", "-1"], "--steps must be >= 0"),
        (["--resolution", "7"], "--resolution 7: below the flux_kontext minimum of 16 px"),
        (["--resolution", "abc"], "resolution must be 'auto', 'native' or a number"),
        (["--method", "nope"], "--method"),
        (["--schedule", "nope"], "--schedule"),
        (["--eot", "nope"], "nope"),
        (["--prompts", "/nonexistent/prompts.txt"], "prompts.txt"),
    ],
)
def test_bad_attack_flags_exit_2_before_any_model_loads(tmp_path, flags, expected):
    inputs = photos(tmp_path / "in", names=("a",))
    # The model folder does not exist: had anything tried to load it, the error would name the model instead.
    result = run_attack(
        "--model", str(tmp_path / "no-model-here"), "--input", str(inputs), "--output", str(tmp_path / "o"), *flags
    )
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr and "no-model-here" not in result.stderr, result.stderr
    assert not (tmp_path / "o").exists()


def test_alpha_above_eps_warns_and_inputs_and_outputs_are_checked(tmp_path):
    inputs = photos(tmp_path / "in", names=("a",))
    warned = run_attack(
        "--model",
        str(tmp_path / "no-model"),
        "--input",
        str(inputs),
        "--output",
        str(tmp_path / "o"),
        "--alpha",
        "8",
        "--eps",
        "4",
    )
    assert "warning: --alpha 8 is larger than --eps 4" in warned.stderr
    missing = run_attack("--model", "tiny", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o"))
    assert missing.returncode == 2 and "--input" in missing.stderr and "nope" in missing.stderr
    (tmp_path / "file").write_text("x")
    clash = run_attack("--model", "tiny", "--input", str(inputs), "--output", str(tmp_path / "file"))
    assert clash.returncode == 2 and "--output" in clash.stderr and "not a folder" in clash.stderr


def test_bad_inference_flags_exit_2_before_any_model_loads(tmp_path, capsys):
    images = photos(tmp_path / "in", names=("a",))
    model = str(tmp_path / "no-model-here")
    for flags, expected in (
        (["--prompt-indices", "9999"], "prompt index 9999 is out of range"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--guidance", "nan"], "--guidance must be a finite number"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--resolution", "8"], "--resolution 8: below the flux_kontext minimum of 16 px"),
        (["--seeds", "-3"], "seed -3 is invalid"),
    ):
        code = inference_main(
            family="flux_kontext",
            argv=["--model", model, "--images", str(images), "--output", str(tmp_path / "o"), *flags],
        )
        err = capsys.readouterr().err
        assert code == 2 and expected in err and "no-model-here" not in err, (flags, err)
    code = inference_main(
        family="flux_kontext",
        argv=["--model", "tiny", "--images", str(tmp_path / "nope"), "--output", str(tmp_path / "o")],
    )
    assert code == 2 and "--images" in capsys.readouterr().err


def test_tiny_model_resolution_below_its_own_multiple_is_refused_after_loading(tmp_path, capsys):
    inputs = photos(tmp_path / "in", names=("a",))
    code = attack_main(
        family="flux_kontext",
        argv=[
            "--model",
            "tiny",
            "--input",
            str(inputs),
            "--output",
            str(tmp_path / "o"),
            "--resolution",
            "2",
            "--no-progress",
        ],
    )
    assert code == 2 and "--resolution 2" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ 3. tiny images
def test_tiny_images_are_protected_at_a_valid_working_size_or_refused_never_unchanged(tmp_path, editor):
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(1)
    for name, shape in (("one", (1, 1)), ("seven_by_five", (5, 7)), ("strip", (2, 90))):
        Image.fromarray(rng.integers(30, 220, (*shape, 3), dtype=np.uint8)).save(inputs / f"{name}.png")
    out = tmp_path / "out"
    report = protect_files(
        editor, decontext(), inputs, out, settings(eps=8.0, steps=3), progress=False, log=lambda m: None
    )
    images = manifest(out)["images"]
    for name in ("one", "seven_by_five", "strip"):
        entry = images[f"{name}.png"]
        if entry["status"] == "done":
            saved = np.asarray(Image.open(out / f"{name}.png")).astype(int)
            source = np.asarray(Image.open(inputs / f"{name}.png")).astype(int)
            assert saved.shape == source.shape and 0 < np.abs(saved - source).max() <= 8
            assert entry["max_abs_diff_levels"] > 0 and min(entry["working_size"]) >= editor.multiple_of
        else:
            assert "changed no pixel" in entry["error"] and not (out / f"{name}.png").exists()
    assert report.done  # at least these small images are really protected


def test_a_budget_too_small_to_change_any_8_bit_level_is_refused(tmp_path, editor):
    inputs = photos(tmp_path / "in", names=("a",))
    report = protect_files(
        editor, decontext(), inputs, tmp_path / "out", settings(eps=0.4), progress=False, log=lambda m: None
    )
    assert "changed no pixel" in report.failed["a.png"] and not (tmp_path / "out" / "a.png").exists()


# ------------------------------------------------------------------------------------------ 4. file names
HOSTILE = [os.fsdecode(b"caf\xe9"), "with space", "quote'\"", "-leading dash", "tab\there"]


def test_hostile_file_names_work_end_to_end(tmp_path, capsys):
    inputs = photos(tmp_path / "in", names=HOSTILE, size=(32, 32))
    run = tmp_path / "run"
    from decontext.cli.runs import main as runs_main

    assert (
        runs_main(["init", "--input", str(inputs), "--run", str(run), "--model", "tiny", "--editor", "flux_kontext"])
        == 0
    )
    code = attack_main(
        family="flux_kontext",
        argv=[
            "--model",
            "tiny",
            "--input",
            str(run / "source"),
            "--output",
            str(run / "protected"),
            "--resolution",
            "native",
            "--steps",
            "2",
            "--measure-draws",
            "0",
            "--no-progress",
        ],
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "caf\\xe9.png" in out.out  # shown escaped, not a crash
    record = manifest(run / "protected")["images"]
    assert {Path(k).stem for k in record} == set(HOSTILE) and all(e["status"] == "done" for e in record.values())
    for condition, folder in (("clean", run / "source"), ("protected", run / "protected")):
        code = inference_main(
            family="flux_kontext",
            argv=[
                "--model",
                "tiny",
                "--images",
                str(folder),
                "--output",
                str(run / "edits" / condition),
                "--prompt-indices",
                "0",
                "--steps",
                "2",
                "--resolution",
                "native",
                "--no-progress",
            ],
        )
        assert code == 0, capsys.readouterr().err
    from decontext.cli.evaluate import main as metrics_main

    assert metrics_main(["--run", str(run), "--metrics", "pixel", "--no-progress", "--no-report"]) == 0
    text = (run / "metrics.csv").read_text(encoding="utf-8")  # valid UTF-8, names escaped
    assert "caf\\xe9" in text
    import csv
    import io

    outputs = {row["output"] for row in csv.DictReader(io.StringIO(text))}
    assert outputs == {
        f"edits/{condition}/{shown(name)}/0/seed42.png" for condition in ("clean", "protected") for name in HOSTILE
    }
    summary = json.loads((run / "summary.json").read_text())
    assert summary["protected"]["psnr_vs_clean"]["n"] == len(HOSTILE) and not summary["_errors"]


# ------------------------------------------------------------------------------------------ 5. permissions
def test_outputs_follow_the_umask(tmp_path, editor):
    old = os.umask(0o022)
    try:
        out = tmp_path / "out"
        protect_files(
            editor,
            decontext(),
            photos(tmp_path / "in", names=("a",)),
            out,
            settings(),
            progress=False,
            log=lambda m: None,
        )
    finally:
        os.umask(old)
    assert (out / "a.png").stat().st_mode & 0o777 == 0o644
    assert (out / "manifest.json").stat().st_mode & 0o777 == 0o644


# ------------------------------------------------------------------------------------------ 6. crash safety
KILLER = r"""
import os, signal, sys
from decontext import images, pgd
where, n = sys.argv[1], int(sys.argv[2])
sys.argv = [sys.argv[0]] + sys.argv[3:]
calls = {"n": 0}

def hit():
    calls["n"] += 1
    return calls["n"] == n

def killed_writer(kind, real):
    def atomic_write(path, write):
        def partial(handle):
            if str(path).endswith(kind) and hit():
                handle.write(b"half of it")
                handle.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            write(handle)
        real(path, partial)
    return atomic_write

if where == "save":
    images.atomic_write = killed_writer(".png", images.atomic_write)
elif where == "manifest":
    images.atomic_write = killed_writer(".json", images.atomic_write)
elif where == "pgd":
    real = pgd.PGD._gradient
    def gradient(self, *args, **kwargs):
        if hit():
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, *args, **kwargs)
    pgd.PGD._gradient = gradient
from decontext.cli.attack import main as attack_main
sys.exit(attack_main(family="flux_kontext"))
"""


@pytest.mark.parametrize("where, n", [("pgd", 5), ("save", 2), ("manifest", 2), ("manifest", 4)])
def test_sigkill_anywhere_then_rerun_finishes_with_intact_outputs(tmp_path, where, n):
    inputs, out = photos(tmp_path / "in", names=("a", "b", "c")), tmp_path / "out"
    flags = [
        "--model",
        "tiny",
        "--input",
        str(inputs),
        "--output",
        str(out),
        "--resolution",
        "native",
        "--steps",
        "3",
        "--measure-draws",
        "0",
        "--no-progress",
        "--eps",
        "8",
        "--alpha",
        "1",
    ]
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    env = dict(os.environ)
    crashed = subprocess.run(
        [sys.executable, str(killer), where, str(n), *flags], capture_output=True, text=True, env=env, timeout=300
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    rerun = subprocess.run(
        [sys.executable, str(ROOT / "attack" / "attack_kontext.py"), *flags],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    record = manifest(out)["images"]  # valid JSON
    assert set(record) == {"a.png", "b.png", "c.png"} and all(e["status"] == "done" for e in record.values())
    for name in ("a", "b", "c"):
        saved = np.asarray(Image.open(out / f"{name}.png")).astype(int)  # every output complete
        source = np.asarray(Image.open(inputs / f"{name}.png")).astype(int)
        assert saved.shape == source.shape and 0 < np.abs(saved - source).max() <= 8
    assert not list(out.glob(".*.part"))  # no temporary file left behind
    third = subprocess.run(
        [sys.executable, str(ROOT / "attack" / "attack_kontext.py"), *flags],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert third.returncode == 0 and "skipped 3" in third.stdout


def test_a_second_process_on_the_same_output_is_refused(tmp_path):
    inputs, out = photos(tmp_path / "in", names=("a", "b")), tmp_path / "out"
    flags = [
        "--model",
        "tiny",
        "--input",
        str(inputs),
        "--output",
        str(out),
        "--resolution",
        "native",
        "--measure-draws",
        "0",
        "--no-progress",
    ]
    first = subprocess.Popen(
        [sys.executable, str(ROOT / "attack" / "attack_kontext.py"), *flags, "--steps", "400"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        lock = out / ".manifest.json.lock"
        deadline = time.time() + 240
        while time.time() < deadline and not (lock.is_file() and lock.read_text().startswith("process")):
            time.sleep(0.1)
        second = run_attack(*flags, "--steps", "400")
        assert second.returncode == 2 and f"process {first.pid}" in second.stderr, second.stderr
    finally:
        first.kill()
        first.wait()


# ------------------------------------------------------------------------------------------ 7. non-finite numbers
def test_a_non_finite_loss_stops_that_image_only(tmp_path, editor):
    inputs, out = photos(tmp_path / "in", names=("a", "b")), tmp_path / "out"
    method = decontext()
    real_loss = method.loss
    state = {"image": None}

    def loss(editor, x, size, step, generator):
        value, info = real_loss(editor, x, size, step, generator)
        return (value * float("nan") if state["image"] == "a" else value), info

    real_start = method.start

    def start(editor, x0, size):
        state["image"] = "a" if state["image"] is None else "b"
        return real_start(editor, x0, size)

    method.loss, method.start = loss, start
    report = protect_files(editor, method, inputs, out, settings(), progress=False, log=lambda m: None)
    assert report.done == ["b.png"] and "non-finite loss at PGD step 0" in report.failed["a.png"]
    assert not (out / "a.png").exists() and manifest(out)["images"]["a.png"]["status"] == "failed"


# ------------------------------------------------------------------------------------------ 11. out of memory
def test_out_of_memory_on_one_image_names_the_options_and_the_batch_goes_on(tmp_path, editor, monkeypatch):
    inputs, out = photos(tmp_path / "in", names=("a", "b")), tmp_path / "out"
    real = protect_module.protect

    def protect(editor, method, pixels, config, seed, **options):
        if seed == image_seed(0, "a"):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(editor, method, pixels, config, seed, **options)

    monkeypatch.setattr(protect_module, "protect", protect)
    report = protect_files(editor, decontext(), inputs, out, settings(), progress=False, log=lambda m: None)
    assert report.done == ["b.png"]
    message = report.failed["a.png"]
    assert "out of GPU memory" in message and all(
        flag in message for flag in ("--checkpointing", "--quantize", "--resolution")
    )


def test_out_of_memory_while_editing_names_the_options_and_the_batch_goes_on(tmp_path, monkeypatch):
    from decontext.inference import EditSettings, run_edits
    from decontext.prompts import load_prompts

    editor = FluxKontextEditor.tiny()  # its own: editing releases the text encoders
    images = photos(tmp_path / "in", names=("a", "b"), size=(32, 32))
    real = editor.edit
    calls = {"n": 0}

    def edit(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(editor, "edit", edit)
    report = run_edits(
        editor,
        images,
        [load_prompts()[0]],
        [1],
        tmp_path / "edits",
        EditSettings(steps=2, resolution="native"),
        progress=False,
    )
    assert len(report.done) == 1 and "out of GPU memory" in report.failed["a.png"]
    assert all(flag in report.failed["a.png"] for flag in ("--offload", "--vae-tiling", "--resolution"))


def test_max_megapixels_lowers_and_raises_the_bomb_guard(tmp_path, capsys, monkeypatch):
    from PIL import Image as PILImage

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", PILImage.MAX_IMAGE_PIXELS)  # restored after the test
    inputs = photos(tmp_path / "in", names=("a",), size=(40, 48))
    code = attack_main(
        family="flux_kontext",
        argv=[
            "--model",
            "tiny",
            "--input",
            str(inputs),
            "--output",
            str(tmp_path / "o"),
            "--resolution",
            "native",
            "--steps",
            "1",
            "--measure-draws",
            "0",
            "--no-progress",
            "--max-megapixels",
            "0.001",
        ],
    )
    assert (
        code == 1 and "over the limit of 1000 pixels" in capsys.readouterr().err
    )  # 40 x 48 = 1920 > 1000: refused, named
    code = attack_main(
        family="flux_kontext",
        argv=["--model", "tiny", "--input", str(inputs), "--output", str(tmp_path / "o2"), "--max-megapixels", "-1"],
    )
    assert code == 2 and "--max-megapixels must be > 0" in capsys.readouterr().err
