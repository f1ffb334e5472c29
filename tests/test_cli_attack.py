"""Acceptance of the attack CLI on the tiny model: budget, size, share drop, resume, bad files."""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.data import astronaut

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "attack" / "attack_kontext.py"), *args], capture_output=True, text=True, cwd=ROOT
    )


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    inputs = tmp_path_factory.mktemp("inputs")
    Image.fromarray(astronaut()).save(inputs / "astronaut.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(inputs / "wide.png")
    buffer = io.BytesIO()
    Image.fromarray(astronaut()).save(buffer, format="JPEG")
    (inputs / "broken.jpg").write_bytes(buffer.getvalue()[:5000])
    (inputs / "x.png").write_text("this is a text file")
    output = tmp_path_factory.mktemp("protected")
    result = run_cli(
        "--model",
        "tiny",
        "--input",
        str(inputs),
        "--output",
        str(output),
        "--resolution",
        "native",
        "--steps",
        "30",
        "--no-progress",
    )
    return inputs, output, result


def test_protects_within_budget_at_original_size_and_lowers_share(batch):
    inputs, output, result = batch
    manifest = json.loads((output / "manifest.json").read_text())
    for name, shape in (("astronaut", (512, 512, 3)), ("wide", (48, 80, 3))):
        source = np.asarray(Image.open(inputs / f"{name}.png").convert("RGB")).astype(int)
        saved = np.asarray(Image.open(output / f"{name}.png")).astype(int)
        assert saved.shape == shape
        assert np.abs(saved - source).max() <= 12
        assert np.abs(saved - source).max() > 0
        entry = manifest["images"][f"{name}.png"]
        assert entry["status"] == "done"
        assert entry["max_abs_diff_levels"] == np.abs(saved - source).max()
        assert entry["after"]["share"] < entry["before"]["share"], entry
    assert manifest["args"]["steps"] == 30
    assert manifest["versions"]["diffusers"]
    assert manifest["method"]["resolved_blocks"] == ["single.0", "single.1", "single.2"]


def test_bad_files_reported_by_name_and_exit_code(batch):
    _, output, result = batch
    assert result.returncode == 1
    assert "broken.jpg" in result.stderr and "x.png" in result.stderr
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["images"]["broken.jpg"]["status"] == "failed"
    assert "not an image" in manifest["images"]["x.png"]["error"]
    assert not (output / "broken.png").exists()


def test_rerun_skips_done_files(batch):
    inputs, output, _ = batch
    before = (output / "astronaut.png").stat().st_mtime_ns
    result = run_cli(
        "--model",
        "tiny",
        "--input",
        str(inputs / "astronaut.png"),
        "--output",
        str(output),
        "--resolution",
        "native",
        "--steps",
        "30",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    assert "skipped 1" in result.stdout
    assert (output / "astronaut.png").stat().st_mtime_ns == before


def test_refuses_to_overwrite_inputs_and_bad_arguments(tmp_path):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    original = (tmp_path / "a.png").read_bytes()
    result = run_cli(
        "--model", "tiny", "--input", str(tmp_path), "--output", str(tmp_path), "--steps", "1", "--no-progress"
    )
    assert result.returncode == 1 and "overwrite" in result.stderr
    assert (tmp_path / "a.png").read_bytes() == original
    missing = run_cli("--model", "tiny", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o"))
    assert missing.returncode == 2 and "nope" in missing.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    result = run_cli(
        "--model", "tiny", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--prompts", str(empty)
    )
    assert result.returncode == 2 and "no prompts" in result.stderr


def test_paper_preset_is_the_default_run_and_fast_records_its_stopping(batch, tmp_path):
    inputs, output, _ = batch
    # --preset paper on outputs made without a preset: the same settings, so the done image is skipped ...
    same = run_cli(
        "--model",
        "tiny",
        "--input",
        str(inputs / "wide.png"),
        "--output",
        str(output),
        "--resolution",
        "native",
        "--steps",
        "30",
        "--preset",
        "paper",
        "--no-progress",
    )
    assert same.returncode == 0, same.stderr
    assert "skipped 1" in same.stdout
    # ... and made afresh, the same bytes.
    fresh = tmp_path / "paper"
    made = run_cli(
        "--model",
        "tiny",
        "--input",
        str(inputs / "wide.png"),
        "--output",
        str(fresh),
        "--resolution",
        "native",
        "--steps",
        "30",
        "--preset",
        "paper",
        "--no-progress",
    )
    assert made.returncode == 0, made.stderr
    assert (fresh / "wide.png").read_bytes() == (output / "wide.png").read_bytes()
    paper = json.loads((fresh / "manifest.json").read_text())
    assert paper["args"]["preset"] == "paper" and paper["args"]["stop_patience"] == 0
    entry = paper["images"]["wide.png"]
    assert entry["steps_run"] == 30 and entry["stop_reason"] == "budget"
    fast = tmp_path / "fast"
    result = run_cli(
        "--model",
        "tiny",
        "--input",
        str(inputs / "wide.png"),
        "--output",
        str(fast),
        "--resolution",
        "native",
        "--preset",
        "fast",
        "--steps",
        "40",
        "--stop-patience",
        "5",
        "--stop-window",
        "3",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((fast / "manifest.json").read_text())
    args = manifest["args"]
    assert args["preset"] == "fast" and args["steps"] == 40 and args["stop_patience"] == 5 and args["stop_window"] == 3
    assert args["momentum"] == manifest["pgd"]["momentum"] > 0 and manifest["pgd"]["schedule"] == "cosine"
    entry = manifest["images"]["wide.png"]
    assert 0 < entry["steps_run"] <= 40
    assert entry["stop_reason"] == "budget" if entry["steps_run"] == 40 else entry["stop_reason"].startswith("plateau")
    refused = run_cli(
        "--model",
        "tiny",
        "--input",
        str(inputs / "wide.png"),
        "--output",
        str(tmp_path / "x"),
        "--preset",
        "paper",
        "--stop-patience",
        "5",
    )
    assert refused.returncode == 2 and "paper preset never stops" in refused.stderr
