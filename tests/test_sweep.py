"""The sweep (decontext/sweep.py, scripts/sweep_kontext.sh): grid parsing, point names, the table and
plots, and a 2-point sweep on the toy that resumes."""

from __future__ import annotations

import json
import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from decontext import sweep
from decontext.cli import sweep as sweep_cli

REPO = Path(__file__).resolve().parents[1]


def test_grid_points_names_and_flags(tmp_path):
    grid_file = tmp_path / "grid.json"
    grid_file.write_text(json.dumps({"eps": [8, 16], "method": ["decontext", "noise"], "t_range": ["0.98,1.0"]}))
    grid = sweep.load_grid(grid_file)
    pts = sweep.points(grid)
    assert len(pts) == 4 and pts[0] == {"eps": 8, "method": "decontext", "t_range": "0.98,1.0"}
    assert sweep.point_name(pts[0]) == "eps8_method-decontext_t_range-0.98-1.0"
    assert sweep.attack_flags(pts[0]) == ["--eps", "8", "--method", "decontext", "--t-range", "0.98", "1.0"]
    assert len({sweep.point_name(p) for p in pts}) == 4
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"epsilon": [1]}))
    with pytest.raises(ValueError, match="unknown axes"):
        sweep.load_grid(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable JSON grid"):
        sweep.load_grid(bad)
    assert sweep.devices("cpu") == ["cpu"] and sweep.devices("0,1") == ["0", "1"]


def test_editor_args_reach_the_attack_and_the_edits(tmp_path, monkeypatch):
    """A real Step1X-Edit checkpoint needs its --prefix-file when protecting AND when editing."""
    commands = []
    monkeypatch.setattr(sweep, "_run", lambda cmd, device, log: commands.append(cmd))
    prefix = tmp_path / "my prefix.txt"
    args = sweep_cli.parser().parse_args(
        [
            "--name",
            "s",
            "--editor",
            "step1x",
            "--model",
            "/models/Step1X-Edit",
            "--input",
            str(tmp_path),
            "--runs",
            str(tmp_path / "runs"),
            "--eps",
            "8",
            "--editor-args",
            f"--prefix-file '{prefix}'",
            "--attack-resolution",
            "auto",
        ]
    )
    point = {"eps": 8}
    runner = sweep.Sweep(args, {"eps": [8]})
    runner.shared("cpu")
    runner.run_point(point, "cpu")
    model_commands = [c for c in commands if "--model" in c and "runs" not in c]
    assert len(model_commands) == 3  # clean edits, attack, protected edits
    for cmd in model_commands:
        i = cmd.index("--prefix-file")
        assert cmd[i + 1] == str(prefix)
    assert model_commands[1][2:6] == ["decontext", "attack", "--family", "step1x_edit"]


def test_table_and_plots_from_point_summaries(tmp_path):
    todo = sweep.points({"eps": [8, 16], "method": ["a", "b"]})
    for k, point in enumerate(todo):
        folder = tmp_path / sweep.point_name(point)
        folder.mkdir()
        value = 0.9 - 0.1 * k
        (folder / "summary.json").write_text(
            json.dumps(
                {"protected": {"toy_identity": {"mean": value, "low": value - 0.05, "high": value + 0.05, "n": 4}}}
            )
        )
    written = sweep.write_table(tmp_path, todo)
    table = (tmp_path / "table.md").read_text()
    assert "headline toy_identity" in table and "| 16 | b | 0.6 [0.55, 0.65] |" in table
    rows = (tmp_path / "table.csv").read_text().splitlines()
    assert rows[0].startswith("point,eps,method,toy_identity,toy_identity_low,toy_identity_high") and len(rows) == 5
    for axis in ("eps", "method"):
        svg = ET.parse(written[f"plot_{axis}"]).getroot()
        assert len([e for e in svg.iter() if e.tag.endswith("circle")]) == 4
        assert len([e for e in svg.iter() if e.get("class") == "errorbar"]) == 4
        assert any(e.tag.endswith("polyline") for e in svg.iter())


def test_sweep_plot_escapes_names_and_places_numbers_to_scale():
    rows = [
        {"method": "a<b & c", "eps": 2, "toy_identity": 0.9, "toy_identity_low": 0.8, "toy_identity_high": 1.0},
        {"method": "d", "eps": 4, "toy_identity": 0.7},
        {"method": "d", "eps": 10, "toy_identity": 0.5},
    ]
    svg = ET.fromstring(sweep.svg_plot(rows, "method", "toy_identity"))  # parses: the "<" and "&" are escaped
    assert "a<b & c" in [e.text for e in svg.iter() if e.tag.endswith("text")]
    assert len([e for e in svg.iter() if e.get("class") == "errorbar"]) == 1  # only the row with an interval
    svg = ET.fromstring(sweep.svg_plot(rows, "eps", "toy_identity"))
    xs = [float(e.get("cx")) for e in svg.iter() if e.tag.endswith("circle")]
    assert xs == sorted(xs) and (xs[1] - xs[0]) * 3 == pytest.approx(
        xs[2] - xs[1], abs=0.5
    )  # eps 2, 4, 10 to scale (0.1 px rounding)
    means = next(e for e in svg.iter() if e.tag.endswith("polyline")).get("points").split()
    assert len(means) == 3


def test_nice_ticks_cover_the_range_with_round_steps():
    from decontext.plots import nice_ticks

    assert nice_ticks(0.0, 1.0) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert nice_ticks(0.93, 0.98) == [0.93, 0.94, 0.95, 0.96, 0.97, 0.98]
    ticks = nice_ticks(-3.7, 41.2)
    assert ticks == [0, 10, 20, 30, 40]
    assert nice_ticks(5.0, 5.0) == [5.0]


def test_bad_sweep_arguments(tmp_path, capsys):
    assert sweep_cli.main(["--name", "x", "--input", str(tmp_path), "--runs", str(tmp_path)]) == 2
    assert "nothing to sweep" in capsys.readouterr().err
    assert (
        sweep_cli.main(["--name", "x", "--input", str(tmp_path / "missing"), "--eps", "8", "--runs", str(tmp_path)])
        == 2
    )


@pytest.mark.slow
def test_two_point_toy_sweep_writes_its_table_and_resumes(tmp_path):
    from PIL import Image

    from decontext.toy import world

    faces = tmp_path / "faces"
    faces.mkdir()
    Image.fromarray(world.render(world.sample_scene(world.eval_identities()[0], seed=1))).save(faces / "a.png")
    env = dict(
        os.environ,
        NAME="two",
        RUNS=str(tmp_path / "runs"),
        MODEL="toy",
        INPUT=str(faces),
        EPS="4 16",
        STEPS="2",
        PROMPT_INDICES="0",
        METRICS="toy,pixel",
        DEVICES="cpu",
    )
    first = subprocess.run(
        ["bash", str(REPO / "scripts" / "sweep_kontext.sh")], env=env, capture_output=True, text=True, timeout=600
    )
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    root = tmp_path / "runs" / "two"
    table = (root / "table.md").read_text()
    assert "| 4 | 2 |" in table and "| 16 | 2 |" in table and "toy_identity" in table
    assert (root / "plot_eps.svg").is_file()
    for name in ("eps4_steps2", "eps16_steps2"):
        assert json.loads((root / name / "point.json").read_text())["done"]
        assert (root / name / "edits" / "clean").is_symlink()
    psnr = {row.split(",")[1]: row for row in (root / "table.csv").read_text().splitlines()[1:]}
    assert set(psnr) == {"4", "16"}
    stamp = (root / "eps4_steps2" / "protected" / "a.png").stat().st_mtime_ns
    second = subprocess.run(
        ["bash", str(REPO / "scripts" / "sweep_kontext.sh")], env=env, capture_output=True, text=True, timeout=600
    )
    assert second.returncode == 0 and "(2 already done)" in second.stdout
    assert (root / "eps4_steps2" / "protected" / "a.png").stat().st_mtime_ns == stamp
