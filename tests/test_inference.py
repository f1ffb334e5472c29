"""Inference on the tiny Kontext: determinism, batching, resume after kill -9, index.json, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.data import astronaut, chelsea

from decontext.editors.flux_kontext import FluxKontextEditor
from decontext.inference import EditSettings, run_edits
from decontext.prompts import load_prompts

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "inference" / "kontext_inference.py"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    Image.fromarray(astronaut()).resize((64, 48)).save(folder / "astro.png")
    Image.fromarray(chelsea()).resize((48, 48)).save(folder / "cat.jpg")
    return folder


def _pixels(path):
    return np.asarray(Image.open(path))


def test_same_seed_prompt_image_gives_same_pixels_and_batching_matches(tmp_path, images):
    prompts = load_prompts()[:3]
    settings = EditSettings(steps=2, resolution="native")
    one = run_edits(FluxKontextEditor.tiny(), images, prompts, [7, 8], tmp_path / "a", settings, progress=False)
    again = run_edits(FluxKontextEditor.tiny(), images, prompts, [7, 8], tmp_path / "b", settings, progress=False)
    batched = EditSettings(steps=2, resolution="native", batch_size=4)
    run_edits(FluxKontextEditor.tiny(), images, prompts, [7, 8], tmp_path / "c", batched, progress=False)
    assert len(one.done) == len(again.done) == 2 * 3 * 2
    outputs = sorted((tmp_path / "a").rglob("seed*.png"))
    assert len(outputs) == 12
    for path in outputs:
        rel = path.relative_to(tmp_path / "a")
        assert np.array_equal(_pixels(path), _pixels(tmp_path / "b" / rel)), rel
        # Batched GEMMs sum in another order: float outputs agree to ~1e-6, so after rounding to 8 bits a
        # rare pixel may flip by one level. Anything more would be a real batching bug.
        diff = np.abs(_pixels(path).astype(int) - _pixels(tmp_path / "c" / rel).astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (rel, diff.max(), (diff > 0).mean())
    # Different seeds really differ.
    assert not np.array_equal(_pixels(tmp_path / "a/astro/0/seed7.png"), _pixels(tmp_path / "a/astro/0/seed8.png"))


def test_index_json_records_every_edit(tmp_path, images):
    run = tmp_path / "runs" / "r"
    out = run / "edits" / "clean"
    prompts = [load_prompts()[i] for i in (0, 10)]
    report = run_edits(
        FluxKontextEditor.tiny(),
        images,
        prompts,
        [42],
        out,
        EditSettings(steps=2, guidance=2.5, resolution="native"),
        progress=False,
    )
    index = json.loads((out / "index.json").read_text())
    assert len(report.done) == 4 and index["settings"]["steps"] == 2 and index["settings"]["guidance"] == 2.5
    records = {(e["image"], e["prompt_index"], e["seed"]): e for e in index["edits"]}
    assert set(records) == {(s, i, 42) for s in ("astro", "cat") for i in (0, 10)}
    entry = records[("cat", 10, 42)]
    assert entry["category"] == "accessories" and entry["prompt"] == prompts[1].text
    assert entry["output"] == "edits/clean/cat/10/seed42.png"  # relative to the run folder
    assert (run / entry["output"]).is_file() and entry["seconds"] > 0
    assert Image.open(run / entry["output"]).size == (48, 48)
    assert (
        entry["status"] == "done"
        and len(entry["input_sha256"]) == 64
        and entry["settings_digest"] in index["settings_by_digest"]
    )
    # Re-run with the same settings: nothing to do.
    again = run_edits(
        FluxKontextEditor.tiny(),
        images,
        prompts,
        [42],
        out,
        EditSettings(steps=2, guidance=2.5, resolution="native"),
        progress=False,
    )
    assert not again.done and len(again.skipped) == 4 and again.ok
    # Other settings: refused, saying what differs; the files stay as they were.
    before = {p: p.read_bytes() for p in out.rglob("seed*.png")}
    other = run_edits(
        FluxKontextEditor.tiny(),
        images,
        prompts,
        [42],
        out,
        EditSettings(steps=2, guidance=3.5, resolution="native"),
        progress=False,
    )
    assert not other.done and {Path(k).stem for k in other.failed} == {"astro", "cat"}
    assert all("guidance: 2.5 -> 3.5" in m and "--overwrite" in m for m in other.failed.values())
    assert {p: p.read_bytes() for p in out.rglob("seed*.png")} == before
    # A changed prompt text under the same index is another edit too.
    changed = [prompts[0], type(prompts[1])("put a red scarf on the person", prompts[1].category, prompts[1].index)]
    only_one = run_edits(
        FluxKontextEditor.tiny(),
        images,
        changed,
        [42],
        out,
        EditSettings(steps=2, guidance=2.5, resolution="native"),
        progress=False,
    )
    assert len(only_one.skipped) == 2 and all("prompt:" in m for m in only_one.failed.values())
    # --overwrite redoes them and says so.
    redo = run_edits(
        FluxKontextEditor.tiny(),
        images,
        prompts,
        [42],
        out,
        EditSettings(steps=2, guidance=3.5, resolution="native"),
        progress=False,
        overwrite=True,
    )
    assert len(redo.done) == 4 and redo.ok
    index = json.loads((out / "index.json").read_text())
    assert all("guidance: 2.5 -> 3.5" in e["redone"] for e in index["edits"]) and index["settings"]["guidance"] == 3.5


def test_resume_after_kill_leaves_no_half_written_png(tmp_path, images):
    out = tmp_path / "edits"
    args = [
        sys.executable,
        str(CLI),
        "--model",
        "tiny",
        "--images",
        str(images),
        "--output",
        str(out),
        "--prompt-indices",
        "0",
        "1",
        "2",
        "--seeds",
        "1",
        "2",
        "--steps",
        "6",
        "--resolution",
        "native",
        "--no-progress",
    ]
    process = subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.rglob("seed*.png"))) < 2:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    partial = list(out.rglob("seed*.png"))
    assert 0 < len(partial) < 12, "the kill should land mid-run"
    for path in partial:  # every PNG under its final name is complete
        Image.open(path).load()
    finished = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    import re

    edited, skipped = map(int, re.search(r"edited (\d+), skipped (\d+)", finished.stdout).groups())
    # A PNG saved in the instant before its record said "done" is redone (its record says it is ours), never refused.
    assert edited + skipped == 12 and len(partial) - 1 <= skipped <= len(partial)
    assert len(list(out.rglob("seed*.png"))) == 12
    assert not list(out.rglob("*.part"))
    index = json.loads((out / "index.json").read_text())
    assert len(index["edits"]) == 12 and all(e["status"] == "done" for e in index["edits"])


def test_bad_arguments_fail_before_loading_a_model(tmp_path, images):
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n")
    cases = [
        (["--prompts", str(empty)], "no prompts"),
        (["--prompt-indices", "999"], "out of range"),
        (["--seeds", "-1"], "seed -1"),
    ]
    for extra, message in cases:
        # A model name that cannot load proves nothing was loaded before the error.
        result = subprocess.run(
            [
                sys.executable,
                str(CLI),
                "--model",
                str(tmp_path / "no-such-model"),
                "--images",
                str(images),
                "--output",
                str(tmp_path / "o"),
                *extra,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 2, (extra, result.stderr)
        assert message in result.stderr, (extra, result.stderr)
    assert not (tmp_path / "o").exists()


def test_unreadable_image_is_reported_and_others_edited(tmp_path, images):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "bad.png").write_text("not a png")
    Image.open(images / "cat.jpg").save(folder / "good.png")
    report = run_edits(
        FluxKontextEditor.tiny(),
        folder,
        load_prompts()[:1],
        [0],
        tmp_path / "out",
        EditSettings(steps=1, resolution="native"),
        progress=False,
        log=lambda m: None,
    )
    assert "bad.png" in report.failed and "bad.png" in report.failed["bad.png"]
    assert len(report.done) == 1 and (tmp_path / "out/good/0/seed0.png").is_file()
