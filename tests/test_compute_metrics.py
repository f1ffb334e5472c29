"""The CLI on a small run folder built here (docs/RUN_LAYOUT.md), from skimage's astronaut."""

import csv
import hashlib
import html as html_module
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from decontext.cli.evaluate import main
from tests.demo_run import make_demo_run

REPO = Path(__file__).resolve().parent.parent
# only backends that need no unobtainable weights, to keep in-process tests quick and independent of caches
FAST = "pixel,fdfr,brisque"


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_script_scores_run_and_reports_missing_weights(tmp_path):
    run = make_demo_run(tmp_path / "run", extra_condition="noise")
    before = _hashes(run)
    env = dict(
        os.environ,
        TORCH_HOME=str(tmp_path / "torch"),
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_OFFLINE="1",
        HOME=str(tmp_path / "home"),
    )
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "eval" / "compute_metrics.py"),
            "--run",
            str(run),
            "--no-progress",
            "--weights-dir",
            str(tmp_path / "weights"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "Not measured in this run" in out and "ism_facenet" in out and "20180402-114759-vggface2.pt" in out
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
    assert (
        summary["clean"]["ism_facenet"]["available"] is False
        and "vggface2" in summary["clean"]["ism_facenet"]["reason"]
    )
    assert "ism_facenet" in summary["_unavailable"]
    assert summary["protected"]["psnr_input"]["n"] == 2 and summary["protected"]["psnr_input"]["mean"] > 30
    assert "psnr_vs_clean" not in summary["clean"]
    assert summary["_by_category"]["protected"]["expression"]["fdfr"]["n"] == 2
    md = (run / "summary.md").read_text()
    assert "## By condition" in md and "| fdfr | higher |" in md and "### accessories" in md
    assert "Not measured in this run: " in md and "capped at 100 dB" in md
    assert "unavailable" not in md.split("## Metrics")[0]  # folded into one line per reason, not a row per metric
    assert "| ism_facenet |" not in md and "ism_facenet" in md.split("Not measured in this run: ")[1].splitlines()[0]


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
    code = main(
        [
            "--source",
            str(run / "source"),
            "--protected",
            str(run / "protected"),
            "--edits-clean",
            str(run / "edits" / "clean"),
            "--edits-protected",
            str(run / "edits" / "protected"),
            "--metrics",
            "pixel",
            "--no-progress",
            "--no-report",
            "--out",
            str(out),
        ]
    )
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


# -- hardening (issue 17): damaged run folders and hostile index.json paths -----------------------


def _problems(out: Path) -> tuple[list[str], str]:
    """summary.json's _errors, and report.html as text."""
    summary = json.loads((out / "summary.json").read_text())
    report = html_module.unescape((out / "report.html").read_text())
    return summary["_errors"], report


def _named(needle: str, errors: list[str], report: str) -> bool:
    return any(needle in e for e in errors) and needle in report


def test_damaged_run_still_writes_every_output_and_lists_every_problem(tmp_path):
    run = make_demo_run(tmp_path / "run", extra_condition="noise")
    # a missing edit that the index names
    (run / "edits" / "clean" / "b" / "10" / "seed42.png").unlink()
    # a corrupt PNG
    (run / "edits" / "noise" / "a" / "0" / "seed42.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR broken")
    # an index naming files that are not there
    index = json.loads((run / "edits" / "clean" / "index.json").read_text())
    index["edits"].append(
        {**index["edits"][0], "image": "ghost", "output": "edits/clean/ghost/0/seed42.png", "input": "source/ghost.png"}
    )
    index["edits"].append({**index["edits"][0], "seed": 999, "output": "edits/clean/a/0/seed999.png"})
    index["edits"].append({"image": "a", "prompt_index": "zero", "seed": 1})  # malformed
    (run / "edits" / "clean" / "index.json").write_text(json.dumps(index))
    # an index that is not valid JSON (a half-written one)
    (run / "edits" / "noise" / "index.json").write_text('{"settings": {"model": "tiny"}, "edits": [{"ima')
    # a half-written run: edits/protected exists but is empty, protected/ is missing
    shutil.rmtree(run / "edits" / "protected")
    (run / "edits" / "protected").mkdir()
    shutil.rmtree(run / "protected")

    assert main(["--run", str(run), "--metrics", FAST, "--no-progress", "--n-boot", "200"]) == 0
    for name in ("metrics.csv", "inputs.csv", "summary.md", "summary.json", "report.html"):
        assert (run / name).is_file(), name
    errors, report = _problems(run)
    assert "Problems" in report
    for needle in (
        "edits/clean/b/10/seed42.png",
        "edits/noise/a/0/seed42.png",
        "edits/clean/ghost/0/seed42.png",
        "edits/clean/a/0/seed999.png",
        "edits/noise/index.json",
        "edits/protected",
        "record 6 is malformed",
    ):
        assert _named(needle, errors, report), (needle, errors)
    assert any(e.endswith(f"{run / 'protected'}: input folder of condition 'protected' not found") for e in errors)
    assert any("no edits found for condition 'protected'" in e for e in errors)
    assert _named("unreadable index", errors, report)
    rows = _rows(run / "metrics.csv")
    by = {(r["condition"], r["image"], r["prompt_index"], r["seed"]): r for r in rows}
    # the rest is still scored: the noise edits were found by the layout despite the broken index
    assert by[("noise", "b", "0", "42")]["fdfr"] != "" and by[("noise", "a", "0", "42")]["error"]
    assert by[("clean", "a", "0", "42")]["fdfr"] != "" and by[("clean", "b", "10", "42")]["error"]


def test_index_paths_never_lead_outside_the_run(tmp_path, monkeypatch):
    run = make_demo_run(tmp_path / "run")
    secret = tmp_path / "outside" / "secret.png"  # an image outside the run that EXISTS
    secret.parent.mkdir()
    Image.new("RGB", (64, 64), (255, 0, 0)).save(secret)
    # symlink trick: an edit file inside the run that points at the outside image
    link = run / "edits" / "protected" / "b" / "0" / "seed8.png"
    link.symlink_to(secret)
    index_path = run / "edits" / "protected" / "index.json"
    index = json.loads(index_path.read_text())
    recs = index["edits"]  # a/0, a/10, b/0, b/10
    hostile = {
        0: ("output", "../../etc/passwd"),
        1: ("output", "/etc/passwd"),
        2: ("output", str(secret)),
        3: ("input", "../outside/secret.png"),
    }
    for i, (field, value) in hostile.items():
        recs[i][field] = value
    recs.append({**recs[2], "seed": 7, "output": str(secret), "input": str(secret)})  # no layout file to fall back on
    recs.append({**recs[2], "seed": 8, "output": "edits/protected/b/0/seed8.png"})  # the symlink
    recs.append({**recs[2], "seed": 9, "output": "..\\..\\..\\outside\\secret.png"})
    recs.append({**recs[2], "seed": 10, "image": "../../outside/secret"})  # traversal through the stem
    index_path.write_text(json.dumps(index))
    clean = run / "edits" / "clean" / "index.json"
    clean.write_text(clean.read_text().replace('"input": "source/a.png"', '"input": "/etc/passwd"'))

    opened: list[str] = []
    real_open = Image.open

    def spy(fp, *args, **kwargs):
        opened.append(os.path.realpath(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", spy)
    out = tmp_path / "out"
    assert main(["--run", str(run), "--metrics", FAST, "--no-progress", "--n-boot", "200", "--out", str(out)]) == 0
    root = os.path.realpath(run)
    assert opened and all(p.startswith(root + os.sep) for p in opened), [p for p in opened if not p.startswith(root)]

    errors, report = _problems(out)
    for value in (
        "../../etc/passwd",
        "/etc/passwd",
        str(secret),
        "../outside/secret.png",
        "edits/protected/b/0/seed8.png",
        "..\\..\\..\\outside\\secret.png",
    ):
        assert any(repr(value)[1:-1] in e and "refused" in e for e in errors), (value, errors)
        assert repr(value)[1:-1] in report, value
    assert any("'../../outside/secret' is not a plain file name" in e for e in errors)
    assert any(str(link) in e and "outside the run folder" in e for e in errors)  # not read through the symlink
    rows = _rows(out / "metrics.csv")
    by = {(r["condition"], r["image"], r["prompt_index"], r["seed"]): r for r in rows}
    # a refused path falls back to the layout's own file where there is one ...
    assert by[("protected", "a", "0", "42")]["fdfr"] != "" and not by[("protected", "a", "0", "42")]["error"]
    # ... and is an error row where there is none; never a score of the outside file
    assert by[("protected", "b", "0", "7")]["error"] and by[("protected", "b", "0", "7")]["fdfr"] == ""
    assert by[("protected", "b", "0", "8")]["error"] and by[("protected", "b", "0", "8")]["fdfr"] == ""


def test_symlinked_layout_folders_and_absolute_spellings_are_accepted(tmp_path):
    """A sweep point shares source/ and edits/clean/ through symlinks, and an editor writing to an edits/
    symlinked to another disk records absolute paths: neither is a problem."""
    run = make_demo_run(tmp_path / "run")
    shared = tmp_path / "shared"
    shared.mkdir()
    for rel in ("source", "edits/clean"):
        target = shared / rel.replace("/", "_")
        shutil.move(str(run / rel), target)
        (run / rel).symlink_to(os.path.relpath(target, (run / rel).parent), target_is_directory=True)
    index_path = run / "edits" / "protected" / "index.json"
    index = json.loads(index_path.read_text())
    for rec in index["edits"]:
        rec["output"] = os.path.realpath(run / rec["output"])
    index_path.write_text(json.dumps(index))
    out = tmp_path / "out"
    assert main(["--run", str(run), "--metrics", "pixel", "--no-progress", "--no-report", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["_errors"] == []
    rows = _rows(out / "metrics.csv")
    assert len(rows) == 8 and not any(r["error"] for r in rows)
    assert sum(1 for r in rows if r["psnr_vs_clean"]) == 4


@pytest.fixture(scope="module")
def cli_folders(tmp_path_factory):
    """Folders made by the project's own commands the way a user would name them (no run layout)."""
    from decontext.cli import run

    root = tmp_path_factory.mktemp("made")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert run("toy-faces", ["--count", "2", "--out", "faces"]) == 0
        assert (
            run(
                "attack",
                [
                    "--model",
                    "toy",
                    "--input",
                    "faces",
                    "--output",
                    "prot",
                    "--steps",
                    "2",
                    "--measure-draws",
                    "0",
                    "--no-progress",
                ],
            )
            == 0
        )
        assert (
            run(
                "edit",
                [
                    "--model",
                    "toy",
                    "--images",
                    "faces",
                    "--output",
                    "ec",
                    "--prompt-indices",
                    "0",
                    "2",
                    "--no-progress",
                ],
            )
            == 0
        )
        assert (
            run(
                "edit",
                ["--model", "toy", "--images", "prot", "--output", "ep", "--prompt-indices", "0", "2", "--no-progress"],
            )
            == 0
        )
        assert (
            run(
                "edit",
                [
                    "--model",
                    "toy",
                    "--images",
                    "prot",
                    "--output",
                    "ep7",
                    "--prompt-indices",
                    "0",
                    "2",
                    "--seeds",
                    "7",
                    "--no-progress",
                ],
            )
            == 0
        )
    finally:
        os.chdir(cwd)
    return root


def test_explicit_folders_made_by_the_cli_score_without_false_problems(cli_folders, tmp_path):
    root = cli_folders
    out = tmp_path / "scores"
    assert (
        main(
            [
                "--source",
                str(root / "faces"),
                "--protected",
                str(root / "prot"),
                "--edits-clean",
                str(root / "ec"),
                "--edits-protected",
                str(root / "ep"),
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["_errors"] == []
    assert (
        summary["_run"]["model"] == "toy" and summary["_run"]["editor"] == "flux_kontext"
    )  # read from the folders' records
    assert (
        "decontext" in summary["_run"]["protection"]["protected"]
        and "2 steps" in summary["_run"]["protection"]["protected"]
    )
    md = (out / "summary.md").read_text()
    assert "model `toy`, editor `flux_kontext`" in md and "unknown" not in md
    # the toy's drawn faces: face detection and recognition are not run, one line says why
    assert "fdfr" not in summary["protected"] and "fdfr" in summary["_not_run"]
    assert "drawings" in md.split("Not measured in this run: ")[1]
    rows = _rows(out / "metrics.csv")
    assert len(rows) == 8 and all(r["toy_identity"] != "" for r in rows)


def test_a_missing_paired_value_says_why(cli_folders, tmp_path):
    root = cli_folders
    out = tmp_path / "scores"
    assert (
        main(
            [
                "--source",
                str(root / "faces"),
                "--protected",
                str(root / "prot"),
                "--edits-clean",
                str(root / "ec"),
                "--edits-protected",
                str(root / "ep7"),
                "--no-progress",
                "--no-report",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    md = (out / "summary.md").read_text()
    assert "no paired values (none of the 4 protected edits has a clean edit of the same image, prompt and seed" in md
