"""`accelerate launch` with two CPU processes shards the inputs: each image protected exactly once."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_two_processes_share_four_images(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(4):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(
            inputs / f"im{i}.png"
        )
    out = tmp_path / "out"
    result = subprocess.run(
        [
            accelerate,
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--num_cpu_threads_per_process",
            "1",
            str(ROOT / "attack" / "attack_kontext.py"),
            "--model",
            "tiny",
            "--input",
            str(inputs),
            "--output",
            str(out),
            "--steps",
            "2",
            "--resolution",
            "native",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[process 0/2] protected 2" in result.stdout and "[process 1/2] protected 2" in result.stdout
    for i in range(4):  # each image's line appears once: protected by exactly one process
        assert result.stdout.count(f"im{i}.png: share") == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["processes"] == 2
    assert sorted(manifest["images"]) == [f"im{i}.png" for i in range(4)]
    assert all(entry["status"] == "done" for entry in manifest["images"].values())
    assert not list(out.glob("manifest.rank*.json"))
    for i in range(4):
        assert Image.open(out / f"im{i}.png").size == (48, 32)
