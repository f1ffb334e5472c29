"""The CLI on a small run folder built here (docs/RUN_LAYOUT.md), from skimage's astronaut."""

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from decontext.metrics.cli import main
from decontext.metrics.demo import make_demo_run

REPO = Path(__file__).resolve().parent.parent
# only backends that need no unobtainable weights, to keep in-process tests quick and independent of caches
FAST = "pixel,fdfr,brisque"


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_script_scores_run_and_reports_missing_weights(tmp_path):
    run = make_demo_run(tmp_path / "run", extra_condition="noise")
    before = _hashes(run)
    env = dict(os.environ, PYTHONPATH=str(REPO), TORCH_HOME=str(tmp_path / "torch"), HF_HOME=str(tmp_path / "hf"),
               HF_HUB_OFFLINE="1", HOME=str(tmp_path / "home"))
    proc = subprocess.run([sys.executable, str(REPO / "eval" / "compute_metrics.py"), "--run", str(run), "--no-progress",
                           "--weights-dir", str(tmp_path / "weights")],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "Unavailable metrics" in out and "ism_facenet" in out and "20180402-114759-vggface2.pt" in out
    assert "clip_i" in out and "lpips_vs_clean" in out

    # inputs untouched; outputs next to them
    after = _hashes(run)
    assert {k: v for k, v in after.items() if k in before} == before
    for name in ("metrics.csv", "inputs.csv", "summary.md", "summary.json", "report.html"):
        assert (run / name).is_file()

    rows = _rows(run / "metrics.csv")
    assert len(rows) == 3 * 2 * 2  # conditions x stems x prompts
    by = {(r["condition"], r["image"], r["prompt_index"]): r for r in rows}
    assert by[("clean", "a", "0")]["fdfr"] == "0"
    assert by[("protected", "a", "0")]["fdfr"] == "1"  # washed out: no face
    assert by[("protected", "b", "10")]["fdfr"] == "0"
    assert by[("clean", "a", "0")]["psnr_vs_clean"] == ""  # not defined for clean
    assert float(by[("protected", "a", "0")]["psnr_vs_clean"]) < float(by[("noise", "a", "0")]["psnr_vs_clean"])
    assert by[("clean", "a", "0")]["ism_facenet"] == ""  # unavailable here -> empty, never a made-up number
    assert {r["category"] for r in rows} == {"expression", "accessories"}

    summary = json.loads((run / "summary.json").read_text())
    assert {"clean", "protected", "noise"} <= set(summary)
    fd = summary["protected"]["fdfr"]
    assert fd["mean"] == 0.5 and fd["n"] == 4 and fd["low"] <= 0.5 <= fd["high"]
    assert summary["clean"]["fdfr"]["mean"] == 0.0
    assert summary["clean"]["ism_facenet"]["available"] is False and "vggface2" in summary["clean"]["ism_facenet"]["reason"]
    assert "ism_facenet" in summary["_unavailable"]
    assert summary["protected"]["psnr_input"]["n"] == 2 and summary["protected"]["psnr_input"]["mean"] > 30
    assert "psnr_vs_clean" not in summary["clean"]
    assert summary["_by_category"]["protected"]["expression"]["fdfr"]["n"] == 2
    md = (run / "summary.md").read_text()
    assert "## By condition" in md and "| fdfr | higher |" in md and "### accessories" in md
    assert "Unavailable metrics" in md and "capped at 100 dB" in md


def test_unreadable_edit_is_named_and_the_rest_scored(tmp_path, capsys):
    run = make_demo_run(tmp_path / "run")
    bad = run / "edits" / "protected" / "b" / "0" / "seed42.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (run / "protected" / "b.png").write_bytes(b"garbage")
    assert main(["--run", str(run), "--metrics", FAST, "--no-progress", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "seed42.png" in printed and "b.png" in printed
    rows = _rows(tmp_path / "out" / "metrics.csv")
    assert len(rows) == 8
    broken = [r for r in rows if r["error"]]
    assert [(r["condition"], r["image"], r["prompt_index"]) for r in broken] == [("protected", "b", "0")]
    assert all(r["fdfr"] != "" for r in rows if not r["error"])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert any("seed42.png" in e for e in summary["_errors"])
    assert summary["protected"]["fdfr"]["n"] == 3
    inputs = _rows(tmp_path / "out" / "inputs.csv")
    assert {r["image"]: bool(r["error"]) for r in inputs} == {"a": False, "b": True}
    assert not (run / "metrics.csv").exists()  # --out respected


def test_explicit_folders(tmp_path):
    run = make_demo_run(tmp_path / "run")
    out = tmp_path / "explicit"
    code = main(["--source", str(run / "source"), "--protected", str(run / "protected"),
                 "--edits-clean", str(run / "edits" / "clean"), "--edits-protected", str(run / "edits" / "protected"),
                 "--metrics", "pixel", "--no-progress", "--no-report", "--out", str(out)])
    assert code == 0
    rows = _rows(out / "metrics.csv")
    assert len(rows) == 8 and sum(1 for r in rows if r["psnr_vs_clean"]) == 4


def test_edits_without_index_are_found_by_layout(tmp_path):
    run = make_demo_run(tmp_path / "run")
    for cond in ("clean", "protected"):
        (run / "edits" / cond / "index.json").unlink()
    assert main(["--run", str(run), "--metrics", "pixel", "--no-progress", "--no-report"]) == 0
    rows = _rows(run / "metrics.csv")
    assert len(rows) == 8
    assert {r["category"] for r in rows} == {"expression", "accessories"}  # from the default prompt pool


def test_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        main(["--run", str(tmp_path / "missing")])
    with pytest.raises(SystemExit):
        main(["--source", str(tmp_path)])  # needs edits/protected and --out
    run = make_demo_run(tmp_path / "run")
    with pytest.raises(SystemExit):
        main(["--run", str(run), "--metrics", "nope"])
