"""Composed methods (--method a+b) and the attack entry points of every editor running every method
on the tiny models, within budget."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from decontext.methods import METHODS, build_method, method_names, parse_weights
from decontext.methods.composite import Composite, Term

ROOT = Path(__file__).resolve().parents[1]


def run(script, *args):
    return subprocess.run(
        [sys.executable, str(ROOT / "attack" / script), *args], capture_output=True, text=True, cwd=ROOT
    )


@pytest.fixture(scope="module")
def face(tmp_path_factory):
    folder = tmp_path_factory.mktemp("in")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(folder / "face.png")
    return folder / "face.png"


def test_method_specs_and_weights():
    assert method_names("decontext+encoder") == ["decontext", "encoder"]
    for bad in ("decontext+bogus", "encoder+encoder", "decontext+"):
        with pytest.raises(ValueError):
            method_names(bad)
    assert parse_weights("encoder:0.5", ["decontext", "encoder"]) == {"decontext": 1.0, "encoder": 0.5}
    for bad in ("encoder", "flow_loss:1", "encoder:-1", "encoder:x"):
        with pytest.raises(ValueError):
            parse_weights(bad, ["decontext", "encoder"])
    with pytest.raises(ValueError, match="cannot be composed"):
        Composite([Term(build_method("noise")), Term(build_method("encoder"))])
    combo = Composite([Term(build_method("decontext", prompts=["a"])), Term(build_method("encoder"), 0.5)])
    assert combo.requires == {"context_attention", "vae"} and combo.name == "decontext+encoder"
    assert combo.pgd_defaults == {"schedule": "linear", "start": "uniform"}  # encoder's; decontext has none


def test_composition_on_the_cli_logs_every_term_and_stays_in_budget(face, tmp_path):
    out = tmp_path / "out"
    result = run(
        "attack_kontext.py",
        "--model",
        "tiny",
        "--input",
        str(face),
        "--output",
        str(out),
        "--resolution",
        "native",
        "--steps",
        "4",
        "--eps",
        "8",
        "--method",
        "decontext+encoder",
        "--weights",
        "decontext:1,encoder:0.5",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"]["method"] == "decontext+encoder" and manifest["method"]["normalize"] == "grad"
    assert [t["weight"] for t in manifest["method"]["terms"]] == [1.0, 0.5]
    assert manifest["pgd"] == {
        "eps": 8.0,
        "alpha": 0.6375,
        "steps": 4,
        "momentum": 0.0,
        "schedule": "linear",
        "start": "uniform",
        "update": "sign",
        "psnr_floor": None,
        "eot_samples": 1,
    }
    entry = manifest["images"]["face.png"]
    assert set(entry["before"]) == {"decontext:share", "encoder:latent_mse"}
    assert 0 < entry["max_abs_diff_levels"] <= 8


@pytest.mark.parametrize(
    "args, message",
    [
        (("--method", "decontext+bogus"), "bogus"),
        (("--method", "encoder", "--weights", "encoder:2"), "composed"),
        (("--method", "decontext+encoder", "--weights", "flow_loss:1"), "flow_loss"),
        (("--method", "encoder", "--schedule", "warm"), "warm"),
    ],
)
def test_bad_compositions_exit_2_before_loading(face, tmp_path, args, message):
    result = run("attack_kontext.py", "--model", "tiny", "--input", str(face), "--output", str(tmp_path / "o"), *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("script", ["attack_step1x.py", "attack_ip2p.py"])
def test_the_other_entry_points_run_a_composition(face, tmp_path, script):
    """Every single method runs on every editor in test_conformance.py; here a composition runs through
    the Step1X and InstructPix2Pix CLIs (IP2P: encoder+danp, since DeContext does not apply there)."""
    composition = "encoder+danp" if script == "attack_ip2p.py" else "decontext+encoder"
    out = tmp_path / "out"
    result = run(
        script,
        "--model",
        "tiny",
        "--input",
        str(face),
        "--output",
        str(out),
        "--resolution",
        "native",
        "--steps",
        "2",
        "--eps",
        "6",
        "--measure-draws",
        "1",
        "--method",
        composition,
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    saved = np.asarray(Image.open(out / "face.png")).astype(int)
    source = np.asarray(Image.open(face)).astype(int)
    assert saved.shape == source.shape and 0 < np.abs(saved - source).max() <= 6
    assert json.loads((out / "manifest.json").read_text())["method"]["method"] == composition


def test_registry_lists_the_new_methods():
    assert {"danp", "tdae"} <= set(METHODS)


def test_shell_driver_leaves_each_method_its_own_defaults(tmp_path, face):
    """The shell drivers pass --blocks / --t-range only when BLOCKS / T_RANGE are set, so DANP keeps its
    'all' layers (a DeContext block spec would not even exist on a UNet)."""
    import os

    env = {
        **os.environ,
        "MODEL": "tiny",
        "METHOD": "danp",
        "STEPS": "2",
        "RESOLUTION": "64",
        "INPUT": str(face),
        "OUTPUT": str(tmp_path / "o"),
    }
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "attack_ip2p.sh"), "--no-progress", "--measure-draws", "0"],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    method = json.loads((tmp_path / "o" / "manifest.json").read_text())["method"]
    assert method["blocks"] == "all" and method["t_range"] == [0.0, 1.0]


def test_psnr_floor_holds_on_the_saved_file(face, tmp_path):
    """--psnr-floor is a budget like --eps: the saved 8-bit file keeps it, for PGD and for the noise control."""
    source = np.asarray(Image.open(face)).astype(float)
    for method in ("encoder", "noise"):
        out = tmp_path / method
        result = run(
            "attack_kontext.py",
            "--model",
            "tiny",
            "--input",
            str(face),
            "--output",
            str(out),
            "--resolution",
            "native",
            "--steps",
            "6",
            "--eps",
            "16",
            "--alpha",
            "4",
            "--update",
            "l2",
            "--psnr-floor",
            "34",
            "--method",
            method,
            "--measure-draws",
            "0",
            "--no-progress",
        )
        assert result.returncode == 0, result.stderr[-2000:]
        saved = np.asarray(Image.open(out / "face.png")).astype(float)
        psnr = 10 * np.log10(255.0**2 / np.mean((saved - source) ** 2))
        assert 34 <= psnr < 34.5, (method, psnr)  # at the floor (the loss and the noise want more), never below
        assert np.abs(saved - source).max() <= 16
        assert json.loads((out / "manifest.json").read_text())["pgd"]["psnr_floor"] == 34
