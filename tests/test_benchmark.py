"""The benchmark (decontext.benchmark, decontext benchmark): specs round trip and bad ones are refused
naming the key; a run killed mid-cell resumes to the records of an uninterrupted run; a re-run computes
nothing; the leaderboard regenerated from records is byte-identical (also the committed toy-quick one)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from decontext.benchmark.spec import SpecError, load_spec, shipped_specs

ROOT = Path(__file__).resolve().parents[1]
VOLATILE = ("seconds", "command")  # what may differ between two runs of the same spec


def bench(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "decontext", "benchmark", *args, "--quiet"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def finished(*args: str) -> subprocess.CompletedProcess:
    process = bench(*args)
    out, err = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def records(folder: Path) -> dict[str, dict]:
    return {
        p.name: {k: v for k, v in json.loads(p.read_text()).items() if k not in VOLATILE}
        for p in sorted((folder / "records").glob("*.json"))
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "whole"
    result = finished("toy-tiny", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_shipped_specs_load_and_round_trip_through_toml():
    assert {"toy-quick", "toy-tiny", "toy"} <= set(shipped_specs())
    for name in (
        "toy-quick",
        "toy-tiny",
        "toy",
        "toy-v3-quick",
        "toy-transfer",
        "toy-remover-draws",
        "toy-remover-strong",
        "toy-remover-draws-tdae",
        "toy-remover-strong-pgd",
        "toy-decoys",
    ):
        spec = load_spec(name)
        again = load_spec(spec.to_toml())
        assert again == spec and again.digest == spec.digest
    quick = load_spec("toy-quick")
    assert quick.identities["count"] == 20 and quick.editors == ["toy-v1"]
    methods = {"noise", "decontext", "encoder", "danp", "protector:toy-decontext", "protector:toy-robust"}
    assert methods == set(quick.methods)


def toml_of(data: dict) -> str:
    from decontext.benchmark.spec import _toml_value

    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for k, v in data.items():
        if isinstance(v, dict):
            lines += [f"[{k}]"] + [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


BAD = [
    ({"editors": ["toy-v9"]}, "editors: unknown editor 'toy-v9' (allowed: toy-ip2p, toy-v1"),
    ({"methods": ["noise", "decontxt"]}, "methods: unknown method 'decontxt'"),
    ({"methods": ["decontext"]}, "methods: 'noise'"),
    ({"methods": ["noise", "protector:nobody"]}, "methods: unknown protector 'nobody' (allowed: protector:NAME"),
    ({"attackers": ["none", "regenerate"]}, "attackers: unknown attacker 'regenerate'"),
    ({"attackers": ["none", "editor_clean"]}, "attackers: editor_clean asks the editor"),
    ({"budgets": [300]}, "budgets: 300.0 out of range (allowed: numbers in (0, 64]"),
    ({"budgetz": [8]}, "budgetz: unknown key (allowed: name, description"),
    ({"identities": {"source": "folder", "path": "/no/such/folder"}}, "identities.path: no folder"),
    ({"identities": {"source": "toy", "count": 500}}, "identities.count: 500 out of range (allowed: 2..100"),
    ({"pgd": {"preset": "slow"}}, "pgd.preset: 'slow' (allowed: fast, paper, none)"),
    ({"edits": {"prompt_indices": [0, 99]}}, "edits.prompt_indices: [99] (allowed: 0.."),
    ({"edits": {"prompt_indices": [0], "seeds": [1]}}, "edits.seeds: unknown key (allowed: prompt_indices"),
    (
        {"editors": ["toy-v1", "toy-ip2p"], "methods": ["noise", "encoder+decontext"]},
        "methods: 'decontext' does not apply to editor 'toy-ip2p' (the instruct_pix2pix family lacks context_att",
    ),
]


def _with(change: dict) -> str:
    """toy-tiny's TOML with some keys (or whole tables) replaced."""
    return toml_of({**load_spec("toy-tiny").to_dict(), **change})


@pytest.mark.parametrize("change,message", BAD)
def test_a_bad_spec_is_refused_naming_the_key(change, message):
    with pytest.raises(SpecError) as error:
        load_spec(_with(change))
    assert message in str(error.value)


def test_the_command_refuses_a_bad_spec_with_exit_2_before_loading_a_model(tmp_path, capsys):
    from decontext.cli import main

    path = tmp_path / "bad.toml"
    path.write_text(_with({"attackers": ["none", "regenerate"]}))
    assert main(["benchmark", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "attackers: unknown attacker 'regenerate'" in err and "allowed:" in err
    assert not (tmp_path / "out").exists()  # nothing made
    assert main(["benchmark", "no-such-spec", "--out", str(tmp_path / "out")]) == 2
    assert "shipped:" in capsys.readouterr().err


def test_a_run_killed_mid_cell_resumes_to_the_uninterrupted_records(uninterrupted, tmp_path):
    out = tmp_path / "killed"
    process = bench("toy-tiny", "--out", str(out))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list((out / "records").glob("*.json"))) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(list((out / "records").glob("*.json")))
    assert 2 <= done < len(records(uninterrupted)), "killed too late to test a resume"
    resumed = finished("toy-tiny", "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert records(out) == records(uninterrupted)

    def board(folder: Path) -> list[str]:  # the same leaderboard but for the command line (its --out)
        return [line for line in (folder / "leaderboard.md").read_text().splitlines() if "command:" not in line]

    assert board(out) == board(uninterrupted)


def test_a_rerun_computes_no_cell_and_another_spec_is_refused(uninterrupted):
    from decontext.benchmark.run import run_benchmark

    before = {p.name: p.stat().st_mtime_ns for p in (uninterrupted / "records").glob("*.json")}
    result = run_benchmark(load_spec("toy-tiny"), uninterrupted, log=lambda *a: None)
    assert result["computed"] == [] and result["skipped"] == result["cells"] == len(before)
    assert {p.name: p.stat().st_mtime_ns for p in (uninterrupted / "records").glob("*.json")} == before
    other = finished("toy-quick", "--out", str(uninterrupted))
    assert other.returncode == 2 and "--overwrite" in other.stderr


def test_chosen_cells_run_in_windows_and_equal_the_whole_runs_records(uninterrupted, tmp_path):
    """--cells computes only the matching cells, the same records as a run of the whole spec; --stop-after starts
    no new cell once its time is up (the first always runs) and the next run goes on from there."""
    from decontext.benchmark.run import run_benchmark

    spec, out = load_spec("toy-tiny"), tmp_path / "windows"
    chosen = ["toy-v1__encoder@16__jpeg.json", "toy-v1__protector_toy-decontext@16__none.json"]
    patterns = ["*encoder@16__jpeg", "*protector*__none"]
    first = run_benchmark(spec, out, log=lambda *a: None, cells=patterns, stop_after=1e-9)
    assert first["computed"] == ["toy-v1__encoder@16__jpeg"] and first["left"] == 1 and first["cells"] == 2
    assert sorted(records(out)) == chosen[:1]
    second = run_benchmark(spec, out, log=lambda *a: None, cells=patterns)
    assert second["computed"] == ["toy-v1__protector_toy-decontext@16__none"] and second["skipped"] == 1
    assert second["left"] == 0
    whole = records(uninterrupted)
    assert records(out) == {name: whole[name] for name in chosen}


def test_cells_that_match_nothing_or_a_stop_at_zero_are_refused_before_anything_is_made(tmp_path, capsys):
    from decontext.cli import main

    assert main(["benchmark", "toy-tiny", "--out", str(tmp_path / "o"), "--cells", "*encoder*", "*@32__*"]) == 2
    err = capsys.readouterr().err
    assert "--cells *@32__*: matches no cell of this spec" in err and "toy-v1__encoder@16__none" in err
    assert main(["benchmark", "toy-tiny", "--out", str(tmp_path / "o"), "--stop-after", "0"]) == 2
    assert "--stop-after 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_dry_run_says_what_is_recorded_and_left_and_touches_nothing(tmp_path, capsys):
    """--dry-run counts the records a run would find (here written as empty files: only their presence
    counts) and groups what is left by editor, budget and method; it loads no model and writes nothing."""
    from decontext.benchmark.records import claim_folder, record_path
    from decontext.benchmark.run import plan
    from decontext.cli import main

    out = tmp_path / "run"
    spec = load_spec("toy-tiny")
    claim_folder(out, spec, overwrite=False)
    (out / "records").mkdir()
    every = plan(spec)
    gone = next(c for c in reversed(every) if c.attacker != "none")
    for cell in every:
        if cell != gone:
            record_path(out, cell).write_text("{}")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}

    assert main(["benchmark", "toy-tiny", "--out", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"toy-tiny in {out}: {len(every) - 1} of {len(every)} cells recorded, 1 to compute"
    assert lines[1:] == [f"  {gone.editor}@{gone.budget:g}: 1 left ({gone.method} 1)"]
    assert main(["benchmark", "toy-tiny", "--out", str(out), "--dry-run", "--cells", "*__none"]) == 0
    selected = [c for c in every if c.attacker == "none"]
    first = capsys.readouterr().out.splitlines()[0]
    assert first.endswith(f"{len(selected)} of {len(selected)} cells recorded, 0 to compute")
    # another spec's folder: everything would be computed, and only with --overwrite
    assert main(["benchmark", "toy-quick", "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    quick = plan(load_spec("toy-quick"))
    assert f"0 of {len(quick)} cells recorded, {len(quick)} to compute" in text
    assert "holds the records of spec 'toy-tiny'" in text and "--overwrite" in text
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert main(["benchmark", "toy-tiny", "--out", str(tmp_path / "new"), "--dry-run"]) == 0
    assert f"0 of {len(every)} cells recorded" in capsys.readouterr().out and not (tmp_path / "new").exists()


def test_ctrl_c_exits_130_saying_the_finished_cells_are_kept(tmp_path, capsys, monkeypatch):
    import decontext.benchmark.run as run
    from decontext.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "run_benchmark", interrupted)
    assert main(["benchmark", "toy-tiny", "--out", str(tmp_path / "o"), "--quiet"]) == 130
    err = capsys.readouterr().err
    assert "every finished cell is recorded" in err and "Run the same command again" in err and "Traceback" not in err


def test_records_carry_what_a_reviewer_needs(uninterrupted):
    spec = load_spec("toy-tiny")
    for record in records(uninterrupted).values():
        assert record["schema"] == 1 and record["spec_digest"] == spec.digest
        assert {"commit", "seeds", "library_versions", "identities", "edits", "values", "reference"} <= set(record)
        values = record["values"]
        n, e = len(record["identities"]), len(record["edits"])
        for condition in ("method", "noise", "clean"):
            assert len(values[condition]["identity"]) == e and len(values[condition]["identity"][0]) == n
        assert len(values["psnr_input"]) == len(values["attack_cost_ssim"]) == n
        if record["cell"]["attacker"].startswith("remover"):
            from decontext.toy import world

            held_out = {i.index for i in world.eval_identities()}
            assert record["attacker_info"]["identities"] and held_out.isdisjoint(record["attacker_info"]["identities"])
            assert held_out.issuperset(record["identities"])


def test_the_report_regenerated_from_records_is_byte_identical(uninterrupted, tmp_path):
    from decontext.cli import main

    before = {n: (uninterrupted / n).read_bytes() for n in ("leaderboard.md", "leaderboard.html", "results.json")}
    assert main(["benchmark", "--report", str(uninterrupted)]) == 0
    assert {n: (uninterrupted / n).read_bytes() for n in before} == before
    html = before["leaderboard.html"].decode()
    assert "<svg" in html and "sortable" in html and "robust effect" in html
    results = json.loads(before["results.json"])
    assert {r["method"] for r in results["robust"]} == {"encoder", "protector:toy-decontext"}


COMMITTED = ROOT / "bench" / "results" / "toy-quick"


@pytest.mark.skipif(not (COMMITTED / "records").is_dir(), reason="toy-quick's records are not committed yet")
def test_the_committed_leaderboard_is_what_its_records_give(tmp_path):
    import shutil

    from decontext.benchmark.report import write_report

    shutil.copytree(COMMITTED / "records", tmp_path / "records")
    write_report(tmp_path)
    for name in ("leaderboard.md", "results.json"):
        assert (tmp_path / name).read_bytes() == (COMMITTED / name).read_bytes(), name
    from decontext.benchmark.report import embedded

    assert embedded((COMMITTED / "leaderboard.md").read_text()) in (ROOT / "docs" / "BENCHMARK.md").read_text()


@pytest.mark.skipif(not (COMMITTED / "records").is_dir(), reason="toy-quick's records are not committed yet")
def test_the_change_under_an_attacker_is_the_paired_difference_of_the_two_cells():
    """Change = the attacked cell's effect minus the unattacked one's, per edit and identity: by hand from the raw
    values, its mean is that difference's mean over identities (and so the difference of the two cells' means);
    a cell paired with itself changes by exactly 0; cells that do not share identities are not paired; the
    table stars exactly the intervals that exclude 0."""
    from decontext.benchmark.report import change_against_unattacked, markdown, read_records, results

    records = read_records(COMMITTED)
    res = results(records)
    by = {(r["method"], r["attacker"]): r for r in res["rows"]}
    raw = {(r["cell"]["method"], r["cell"]["attacker"]): r for r in records}
    starred = 0
    for (method, attacker), row in by.items():
        if attacker == "none":
            assert row["change"] is None
            continue
        effects = [
            np.subtract(raw[method, a]["values"]["method"]["identity"], raw[method, a]["values"]["noise"]["identity"])
            for a in (attacker, "none")
        ]
        by_hand = np.mean(np.mean(effects[0] - effects[1], axis=0))  # over edits, then over identities
        assert row["change"] == pytest.approx(by_hand, abs=1e-12)
        assert row["change"] == pytest.approx(row["effect"] - by[method, "none"]["effect"], abs=1e-12)
        assert row["change_low"] < row["change"] < row["change_high"]
        starred += row["change_low"] > 0 or row["change_high"] < 0
    assert sum(a != "none" for _, a in by) == 20 and 0 < starred < 20
    unattacked = raw["decontext", "none"]
    assert change_against_unattacked(unattacked, unattacked) == (0.0, 0.0, 0.0)
    shuffled = dict(unattacked, identities=unattacked["identities"][::-1])
    assert change_against_unattacked(raw["decontext", "jpeg"], shuffled) is None
    text = markdown(res)
    table = text[text.index("paired [95% CI]") :].split("\n\n")[1]
    assert table.count(" *") == starred


def test_the_control_gets_a_cell_under_each_learned_remover_planned_after_every_method_cell():
    """The noise control has a cell of its own under the remover (only: every other attacker treats all photos
    alike), one per editor, budget and remover, after every method's cell: adding them moved no recorded
    position."""
    from decontext.benchmark.cells import control_cells, plan

    for name in sorted(set(shipped_specs()) - {"kontext-paper"}):  # kontext-paper needs a folder of photos
        spec = load_spec(name)
        every = plan(spec)
        controls = [c for c in every if c.method == "noise"]
        assert controls == control_cells(spec) == every[len(every) - len(controls) :]
        removers = [a for a in spec.attackers if a.startswith("remover")]
        assert len(controls) == len(spec.editors) * len(spec.budgets) * len(removers)
        assert {c.attacker for c in controls} == set(removers)


@pytest.mark.skipif(not (COMMITTED / "records").is_dir(), reason="toy-quick's records are not committed yet")
def test_the_effect_against_a_control_attacked_the_same_way_is_the_paired_difference():
    """After the remover, the effect against the control's own-remover cell = the protected photo's identity
    (through its method's remover) minus the control's (through a remover trained on the control), per edit and
    identity, by hand from the raw values; the control's remover was trained on its own pairs (training
    identities only); the control is no row of the leaderboard; unpaired records give no number."""
    from decontext.benchmark.report import against_own_control, read_records, results
    from decontext.toy import world

    records = read_records(COMMITTED)
    raw = {(r["cell"]["method"], r["cell"]["attacker"]): r for r in records}
    control = raw["noise", "remover"]
    held_out = {i.index for i in world.eval_identities()}
    assert held_out.isdisjoint(control["attacker_info"]["identities"])
    assert control["values"]["method"] == control["values"]["noise"]  # one photo set through one remover
    res = results(records)
    assert "noise" not in {r["method"] for r in res["rows"] + res["robust"]}
    assert [c["method"] for c in res["controls"]] == ["noise"]
    own = [r for r in res["rows"] if r["own_effect"] is not None]
    assert {r["attacker"] for r in own} == {"remover"} and len(own) == 5
    for row in own:
        mine = raw[row["method"], "remover"]["values"]["method"]["identity"]
        by_hand = np.mean(np.mean(np.subtract(mine, control["values"]["method"]["identity"]), axis=0))
        assert row["own_effect"] == pytest.approx(by_hand, abs=1e-12)
        assert row["own_low"] < row["own_effect"] < row["own_high"]
        assert row["own_share"] == pytest.approx(-row["own_effect"] / row["way"])
    # the method's remover is not the control's: the control through it scores otherwise
    assert any(r["own_noise_identity"] != r["noise_identity"] for r in own)
    shuffled = dict(control, identities=control["identities"][::-1])
    assert against_own_control(raw["decontext", "remover"], shuffled) is None


@pytest.mark.skipif(not (COMMITTED / "records").is_dir(), reason="toy-quick's records are not committed yet")
def test_a_run_under_way_marks_the_worst_case_of_a_method_not_yet_under_every_attacker(tmp_path):
    """A resumed run's report in between: a method with cells still to come shows the worst attacker SO FAR
    (marked, with how many of the spec's attackers), never a worst case it has not earned; the others unchanged."""
    import shutil

    from decontext.benchmark.report import PARTIAL, write_report

    shutil.copytree(COMMITTED / "records", tmp_path / "records")
    shutil.copy(COMMITTED / "spec.json", tmp_path / "spec.json")
    for attacker in ("remover", "jpeg"):
        (tmp_path / "records" / f"toy-v1__danp@16__{attacker}.json").unlink()
    write_report(tmp_path)
    robust = {r["method"]: r for r in json.loads((tmp_path / "results.json").read_text())["robust"]}
    committed = {r["method"]: r for r in json.loads((COMMITTED / "results.json").read_text())["robust"]}
    assert robust["danp"]["incomplete"] == "3 of 5" and robust["danp"]["attackers"] == 3
    left = [r for r in json.loads((tmp_path / "results.json").read_text())["rows"] if r["method"] == "danp"]
    assert robust["danp"]["robust_effect"] == max(r["effect"] for r in left)
    assert robust["danp"]["robust_effect"] <= committed["danp"]["robust_effect"]  # more attackers: only worse
    for method, row in robust.items():
        if method != "danp":
            assert row == committed[method], method
    text = (tmp_path / "leaderboard.md").read_text()
    assert PARTIAL in text and text.count("(worst of 3 of 5 so far)") == 2  # the robust table and the grid
    assert PARTIAL not in (COMMITTED / "leaderboard.md").read_text()


def test_a_protector_is_measured_on_an_editor_its_objective_cannot_serve(tmp_path, monkeypatch):
    """Transfer to the toy InstructPix2Pix: toy-decontext (trained with DeContext's share, which a UNet has no
    joint attention for) is applied by its forward pass alone, the very pixels ``protect`` saves where the
    objective applies, and its cell is recorded like any other."""
    from decontext.benchmark.cells import Cache, ToyEnvironment
    from decontext.benchmark.run import run_benchmark
    from decontext.methods.decontext import DeContext

    spec = load_spec(
        _with({"editors": ["toy-ip2p"], "attackers": ["none"], "methods": ["noise", "protector:toy-decontext"]})
    )
    spec.identities["count"] = 2
    report = run_benchmark(spec, tmp_path / "ip2p", log=lambda *_: None)
    assert report["computed"] == ["toy-ip2p__protector_toy-decontext@16__none"]
    record = json.loads((tmp_path / "ip2p" / "records" / "toy-ip2p__protector_toy-decontext@16__none.json").read_text())
    assert np.isfinite(record["values"]["method"]["identity"]).all() and len(record["identities"]) == 2
    v1 = ToyEnvironment(load_spec("toy-tiny"), "toy-v1", Cache(tmp_path / "cache"), log=lambda *_: None)
    saved = v1.protect("protector:toy-decontext", 16.0, v1.sources, 7)
    monkeypatch.setattr(DeContext, "applies_to", classmethod(lambda cls, editor: False))
    assert np.array_equal(v1.protect("protector:toy-decontext", 16.0, v1.sources, 7), saved)


def test_overwrite_clears_another_specs_records_and_only_then(tmp_path):
    from decontext.benchmark.records import FolderError, claim_folder

    tiny, quick = load_spec("toy-tiny"), load_spec("toy-quick")
    claim_folder(tmp_path, tiny, overwrite=False)
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "cell.json").write_text("{}")
    claim_folder(tmp_path, tiny, overwrite=False)  # the same spec: kept
    assert (tmp_path / "records" / "cell.json").exists()
    with pytest.raises(FolderError, match="pass --overwrite"):
        claim_folder(tmp_path, quick, overwrite=False)
    assert (tmp_path / "records" / "cell.json").exists()
    claim_folder(tmp_path, quick, overwrite=True)
    assert not (tmp_path / "records").exists()
    assert json.loads((tmp_path / "spec.json").read_text())["digest"] == quick.digest


def test_kontext_paper_runs_end_to_end_on_the_tiny_editor(tmp_path):
    """The shipped real-editor spec, smaller (2 photos at 64 px, 1 edit, 2 PGD and edit steps), on
    random weights: every cell recorded, the report written (ISM is NaN without a face network)."""
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (80, 72, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    shipped = load_spec("kontext-paper", photos=str(photos), model="tiny")
    assert shipped.pgd["preset"] == "paper" and shipped.budgets == [12.75] and shipped.model == "tiny"
    small = shipped.to_dict()
    small["identities"].update(count=2, size=64)
    small["edits"].update(prompts=small["edits"]["prompts"][:1], steps=2)
    small["pgd"]["steps"] = 2
    (tmp_path / "kp.toml").write_text(toml_of(small))
    result = finished(str(tmp_path / "kp.toml"), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    made = records(tmp_path / "out")
    assert {r["cell"]["attacker"] for r in made.values()} == {"none", "jpeg", "resize", "vae", "editor_clean"}
    assert all(r["identities"] == ["p0", "p1"] for r in made.values())
    leaderboard = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "kontext-paper" in leaderboard
    assert "## kontext-paper: the paper's reported values beside this run's (no attacker)" in leaderboard


def test_a_model_needs_a_real_editor():
    with pytest.raises(SpecError, match="model: 'tiny' replaces a real editor's weights"):
        load_spec("toy-tiny", model="tiny")


@pytest.mark.skipif(not (COMMITTED / "records").is_dir(), reason="toy-quick's records are not committed yet")
def test_the_evidence_table_states_what_the_committed_records_give():
    from decontext.benchmark.report import _ci, read_records, results

    res = results(read_records(COMMITTED))
    evidence = (ROOT / "docs" / "EVIDENCE.md").read_text()
    section = evidence[evidence.index("## The benchmark against adaptive attackers (issue 40)") :]
    for row in res["robust"]:
        worst = row["worst_attacker"].partition(":")[0]
        assert f"**{_ci(row['robust_effect'], row['low'], row['high'])}** ({worst})" in section, row["method"]
    for row in res["rows"]:
        assert _ci(row["effect"], row["low"], row["high"]) in section, (row["method"], row["attacker"])


@pytest.mark.skipif(not (COMMITTED / "records").is_dir(), reason="toy-quick's records are not committed yet")
def test_the_kontext_paper_leaderboard_shows_the_papers_values_beside_the_run():
    """The paper's protocol numbers from the reference notes beside the run's; its scores, which the notes do
    not give, said to be missing (not guessed); other specs' leaderboards unchanged."""
    from decontext.benchmark.report import NOT_GIVEN, html_page, markdown, read_records, results

    quick = results(read_records(COMMITTED))
    assert "the paper's reported values" not in markdown(quick)
    paper = results([dict(r, spec="kontext-paper") for r in read_records(COMMITTED)])
    text = markdown(paper)
    section = text[text.index("## kontext-paper: the paper's reported values beside this run's") :]
    assert (
        "| budget | 12.75/255 (eps 0.1 on [-1, 1]) | Where it is applied (official defaults): PGD | 16/255 |" in section
    )
    assert "800 sign steps of 0.6375/255" in section and "20 steps, guidance 3.5, 512x512, seed 42" in section
    assert section.count(NOT_GIVEN) == 3  # ISM, FDFR, CLIP-I: no numbers in the notes
    unattacked = [r for r in paper["rows"] if r["attacker"] == "none"]
    assert f"clean {unattacked[0]['clean_identity']:.3f}" in section
    for row in unattacked:
        assert f"{row['method']} {row['identity']:.3f}" in section
        assert f"{row['method']} {1 - row['edit_success']:.3f}" in section
    assert "the paper&#x27;s reported values beside this run&#x27;s" in html_page(paper)


RESULTS = ROOT / "bench" / "results"


def _record(folder: Path, name: str) -> dict:
    return json.loads((folder / "records" / f"{name}.json").read_text())


def assert_repeats_the_toy_spec(
    folder: Path,
    methods: tuple[str, ...],
    exact: tuple[str, ...] = ("none", "remover"),
    editors: tuple[str, ...] = ("toy-v3",),
    attackers: tuple[str, ...] = ("none", "remover"),
) -> None:
    """The unattacked and draw-0 remover cells (``attackers``) of ``methods`` (on ``editors``, 16/255) in ``folder``
    equal the `toy` spec's records: the same protection, the same remover, the same edits. The cells of the
    attackers in ``exact`` equal them value for value. The others are not bit-reproducible on two CPU threads:
    TDAE's PGD on the remover's 48 training pairs, a protector's float32 forward pass run again (toy-v1 in
    toy-remover-strong, whose protected photos were made anew, not read from the toy spec's cache) or per-image PGD
    run again (toy-remover-strong-pgd). There the remover's final loss may move in the 4th digit, the protected
    inputs' PSNR by a hundredth of a dB and the clean photo's PSNR after the remover by a tenth, and a rare edit of
    the clean photo after it reads otherwise (toy-v1's toy-robust: 1 of 600); every identity and edit-success score
    of the protected photos and the noise control must still be equal."""
    for method, editor, attacker in itertools.product(methods, editors, attackers):
        name = f"{editor}__{method}@16__{attacker}"
        ours, theirs = _record(folder, name), _record(RESULTS / "toy", name)
        if attacker in exact:
            assert ours["values"] == theirs["values"] and ours["attacker_info"] == theirs["attacker_info"], name
            continue
        for key in ("method", "noise"):
            assert ours["values"][key] == theirs["values"][key], (name, key)
        np.testing.assert_allclose(ours["values"]["psnr_input"], theirs["values"]["psnr_input"], atol=0.01)
        if attacker == "none":
            assert ours["values"]["clean"] == theirs["values"]["clean"], name
            continue
        for score, values in ours["values"]["clean"].items():
            mine, their = np.asarray(values, float), np.asarray(theirs["values"]["clean"][score], float)
            assert np.mean(mine != their) <= 0.01, (name, score)
        np.testing.assert_allclose(ours["values"]["attack_cost_psnr"], theirs["values"]["attack_cost_psnr"], atol=0.2)
        info, their_info = dict(ours["attacker_info"]), dict(theirs["attacker_info"])
        assert info.pop("final_loss") == pytest.approx(their_info.pop("final_loss"), rel=1e-3), name
        assert info == their_info, name


def assert_same_values(ours: dict, theirs: dict) -> None:
    """Two records of one cell computed in two folders hold the same values and attacker (the noise control and its
    remover are deterministic from the seed: no PGD)."""
    assert ours["cell"] == dict(theirs["cell"], position=ours["cell"]["position"])
    assert ours["values"] == theirs["values"] and ours["attacker_info"] == theirs["attacker_info"]


def assert_same_photos(ours: dict, theirs: dict) -> None:
    """Two records score the same held-out photos and edits against the same noise control: equal identities, and
    equal scores of the clean photos' and the control's edits."""
    assert ours["identities"] == theirs["identities"]
    assert ours["values"]["noise"] == theirs["values"]["noise"] and ours["values"]["clean"] == theirs["values"]["clean"]


# spec: (its methods, the attackers whose cells repeat the toy spec's bit for bit; TDAE's remover does not, see above)
DRAW_SPECS = {
    "toy-remover-draws": (("protector_toy-decontext", "protector_toy-robust"), ("none", "remover")),
    "toy-remover-draws-tdae": (("tdae",), ("none",)),
}


@pytest.mark.parametrize("spec", sorted(DRAW_SPECS))
def test_the_committed_remover_draws_repeat_the_toy_spec_at_draw_0_and_differ_after(spec):
    """Draw 0 is the toy spec's remover: its committed cells (and the unattacked ones) equal the toy spec's value for
    value; draws 1 and 2 trained other removers (the same training identities in other scenes, other weights) and gave
    other values."""
    folder = RESULTS / spec
    if not (folder / "records").is_dir():
        pytest.skip(f"{spec}'s records are not committed yet")
    methods, exact = DRAW_SPECS[spec]
    assert_repeats_the_toy_spec(folder, methods, exact=exact)
    control = _record(folder, "toy-v3__noise@16__remover")
    assert_same_values(control, _record(RESULTS / "toy", "toy-v3__noise@16__remover"))
    for draw in (1, 2):  # the control's own remover is drawn again too, as an attacker would
        other = _record(folder, f"toy-v3__noise@16__remover_draw={draw}")
        assert other["attacker_info"]["seed"] == control["attacker_info"]["seed"] + draw
        assert other["values"]["method"] != control["values"]["method"]
    for method in methods:
        first = _record(folder, f"toy-v3__{method}@16__remover")
        for draw in (1, 2):
            other = _record(folder, f"toy-v3__{method}@16__remover_draw={draw}")
            assert other["attacker_info"]["seed"] == first["attacker_info"]["seed"] + draw
            assert other["attacker_info"]["identities"] == first["attacker_info"]["identities"]
            assert other["values"]["method"] != first["values"]["method"]


STRONG = RESULTS / "toy-remover-strong"
STRONG_REMOVER = "remover_pairs=480_steps=2000_width=32"  # the cell name of remover:pairs=480,steps=2000,width=32


def assert_strong_remover(record: dict, held_out: set[int], weaker: dict | None = None) -> None:
    """A strong remover's cell: the remover trained as named (480 pairs, 2000 steps, width 32) on training identities
    only; given ``weaker`` (the same photos after the benchmark's remover), it erased more than that one did: the
    protected photos' edits after it are nearer the person."""
    info = record["attacker_info"]
    assert (info["pairs"], info["steps"], info["width"]) == (480, 2000, 32)
    assert held_out.isdisjoint(info["identities"]) and len(info["identities"]) > 0
    if weaker is not None:
        after = [np.nanmean(rec["values"]["method"]["identity"]) for rec in (weaker, record)]
        assert after[1] > after[0], record["cell"]


@pytest.mark.skipif(not (STRONG / "records").is_dir(), reason="toy-remover-strong's records are not committed yet")
def test_the_committed_strong_remover_was_trained_as_named_on_training_identities_only():
    """On both worlds, the benchmark's remover cells of the four shipped protectors repeat the toy spec's value for
    value; each strong remover's record says what it was (480 pairs, 2000 steps, width 32, the spec's seed) and that
    no identity it trained on is held out, and it erased more than the benchmark's remover: the protected photos'
    identity after it is higher than after the benchmark's remover."""
    from decontext.toy import world, world3

    methods = ("protector_toy-decontext", "protector_toy-robust", "protector_toy-encoder", "protector_toy-v3-robust")
    assert_repeats_the_toy_spec(STRONG, methods)  # toy-v3's cells: read from the toy spec's cache, bit for bit
    assert_repeats_the_toy_spec(STRONG, methods, exact=(), editors=("toy-v1",))
    for editor, toy_world in (("toy-v1", world), ("toy-v3", world3)):
        held_out = {i.index for i in toy_world.eval_identities()}
        assert_same_values(
            _record(STRONG, f"{editor}__noise@16__remover"), _record(RESULTS / "toy", f"{editor}__noise@16__remover")
        )
        assert_strong_remover(_record(STRONG, f"{editor}__noise@16__{STRONG_REMOVER}"), held_out)
        for method in methods:
            weak = _record(STRONG, f"{editor}__{method}@16__remover")
            strong = _record(STRONG, f"{editor}__{method}@16__{STRONG_REMOVER}")
            assert_strong_remover(strong, held_out, weaker=weak)
            info = strong["attacker_info"]
            assert info["seed"] == weak["attacker_info"]["seed"]
            assert held_out.issuperset(strong["identities"])
            assert set(weak["attacker_info"]["identities"]) <= set(info["identities"])


STRONG_PGD = RESULTS / "toy-remover-strong-pgd"


@pytest.mark.skipif(not (STRONG_PGD / "records").is_dir(), reason="toy-remover-strong-pgd's records are not committed")
def test_the_strong_remover_against_per_image_pgd_repeats_the_toy_spec_unattacked():
    """The unattacked cells of DeContext and flow_loss (per-image PGD, the fast preset) on toy-v3 at 16/255 equal the
    toy spec's score for score (the same held-out photos protected the same way); the strong remover was trained as
    named, on training identities only, for each method and for the control, and erased more than the default remover
    of the toy spec did: the protected photos' edits after it are nearer the person."""
    from decontext.toy import world3

    held_out = {i.index for i in world3.eval_identities()}
    # PGD on two CPU threads is not bit-reproducible: the saved pixels differ by a hair (DeContext: 0.0003 dB)
    assert_repeats_the_toy_spec(STRONG_PGD, ("decontext", "flow_loss"), exact=(), attackers=("none",))
    assert_strong_remover(_record(STRONG_PGD, f"toy-v3__noise@16__{STRONG_REMOVER}"), held_out)
    for method in ("decontext", "flow_loss"):
        weak = _record(RESULTS / "toy", f"toy-v3__{method}@16__remover")
        assert_strong_remover(_record(STRONG_PGD, f"toy-v3__{method}@16__{STRONG_REMOVER}"), held_out, weaker=weak)


DECOYS = RESULTS / "toy-decoys"


def _unattacked_effect(folder: Path, name: str) -> float:
    """Mean identity of the protected photos' edits minus the noise control's, paired (the leaderboard's effect)."""
    values = _record(folder, name)["values"]
    return float(np.nanmean(np.asarray(values["method"]["identity"]) - np.asarray(values["noise"]["identity"])))


@pytest.mark.skipif(not (DECOYS / "records").is_dir(), reason="toy-decoys' records are not committed")
def test_the_decoy_cells_share_the_toy_specs_photos_and_beat_the_grey_target_on_v1():
    """toy-decoys scores the same held-out photos, edits and noise control as the toy spec (the control's scores and
    its remover equal the toy spec's); its removers trained on training identities only; and, as docs/BENCHMARK.md
    reads, the decoy target moved toy-v1's identity further than the grey one, per image and as a protector."""
    from decontext.toy import world, world3

    for editor, toy_world in (("toy-v1", world), ("toy-v3", world3)):
        held_out = {i.index for i in toy_world.eval_identities()}
        theirs = _record(RESULTS / "toy", f"{editor}__encoder@16__none")
        for method in ("encoder_decoys=toy-train", "protector_toy-decoy"):
            ours = _record(DECOYS, f"{editor}__{method}@16__none")
            assert_same_photos(ours, theirs)
            info = _record(DECOYS, f"{editor}__{method}@16__remover")["attacker_info"]
            assert held_out.isdisjoint(info["identities"]) and len(info["identities"]) == info["pairs"] == 48
        assert_same_values(
            _record(DECOYS, f"{editor}__noise@16__remover"), _record(RESULTS / "toy", f"{editor}__noise@16__remover")
        )
    grey = _unattacked_effect(RESULTS / "toy", "toy-v1__encoder@16__none")
    grey_protector = _unattacked_effect(RESULTS / "toy", "toy-v1__protector_toy-encoder@16__none")
    assert _unattacked_effect(DECOYS, "toy-v1__encoder_decoys=toy-train@16__none") < grey - 0.03
    assert _unattacked_effect(DECOYS, "toy-v1__protector_toy-decoy@16__none") < grey_protector - 0.02
    assert _record(DECOYS, "toy-v1__encoder_decoys=toy-train@16__none")["cell"]["method"] == "encoder:decoys=toy-train"
    # the diffusion attack toward the decoy (bench/pilot/decoy_diffusion.toml): the same photos, edits and control
    pilot, name = RESULTS / "pilot-decoy-diffusion", "toy-v1__diffusion_decoys=toy-train@16__none"
    ours, theirs = _record(pilot, name), _record(RESULTS / "toy", "toy-v1__diffusion@16__none")
    assert_same_photos(ours, theirs)
    assert _unattacked_effect(pilot, name) < _unattacked_effect(RESULTS / "toy", "toy-v1__diffusion@16__none") - 0.05
    # the protector trained on it (bench/pilot/decoy_diffusion_protector.toml): the same photos, past toy-decoy
    pilot, name = RESULTS / "pilot-decoy-diffusion-protector", "toy-v1__protector_runs_protectors_toy-diffusion-decoy"
    ours = _record(pilot, f"{name}@16__none")
    assert_same_photos(ours, theirs)
    assert _unattacked_effect(pilot, f"{name}@16__none") < _unattacked_effect(
        DECOYS, "toy-v1__protector_toy-decoy@16__none"
    )
    # the strong remover on toy-decoy (bench/pilot/decoy_strong.toml): trained as named, erased more than the default
    strong = RESULTS / "pilot-decoy-strong"
    held_out = {i.index for i in world.eval_identities()}
    weak = _record(DECOYS, "toy-v1__protector_toy-decoy@16__remover")
    assert_strong_remover(_record(strong, f"toy-v1__protector_toy-decoy@16__{STRONG_REMOVER}"), held_out, weaker=weak)


DECOY_EDIT = RESULTS / "pilot-decoy-edit"


def _share(folder: Path, name: str) -> float:
    """-effect / (clean - another person) of one record: the leaderboard's share of the way."""
    reference = _record(folder, name)["reference"]
    way = np.nanmean(reference["clean"]) - np.nanmean(reference["another_person"])
    return -_unattacked_effect(folder, name) / way


@pytest.mark.skipif(not (DECOY_EDIT / "records").is_dir(), reason="pilot-decoy-edit's records are not committed")
def test_the_decoy_edit_protector_passes_30_percent_on_the_toy_specs_photos_and_its_removers_saw_no_held_out_face():
    """toy-decoy-edit (bench/pilot/decoy_edit.toml) is scored on the toy spec's held-out photos, edits and noise
    control; as docs/AMORTIZED.md reads, it moves toy-v1's identity past 30% of the way unattacked, past the per-image
    diffusion attack toward the decoy and past the same recipe with the small network, and JPEG, resizing and
    regeneration leave it past 30%; both removers that erase it trained on training identities only, the strong one
    as named and erasing more than the default one."""
    from decontext.toy import world

    held_out = {i.index for i in world.eval_identities()}
    name = "toy-v1__protector_toy-decoy-edit@16"
    ours, theirs = _record(DECOY_EDIT, f"{name}__none"), _record(RESULTS / "toy", "toy-v1__encoder@16__none")
    assert_same_photos(ours, theirs)
    assert _share(DECOY_EDIT, f"{name}__none") > 0.30
    per_image = _unattacked_effect(RESULTS / "pilot-decoy-diffusion", "toy-v1__diffusion_decoys=toy-train@16__none")
    small = _unattacked_effect(
        RESULTS / "pilot-decoy-diffusion-protector", "toy-v1__protector_runs_protectors_toy-diffusion-decoy@16__none"
    )
    assert _unattacked_effect(DECOY_EDIT, f"{name}__none") < min(per_image, small)
    for attacker in ("jpeg", "resize", "regen_t=0.2"):
        assert _share(DECOY_EDIT, f"{name}__{attacker}") > 0.30, attacker
    weak = _record(DECOY_EDIT, f"{name}__remover")
    assert held_out.isdisjoint(weak["attacker_info"]["identities"]) and weak["attacker_info"]["pairs"] == 48
    assert_strong_remover(_record(DECOY_EDIT, f"{name}__{STRONG_REMOVER}"), held_out, weaker=weak)
    assert _unattacked_effect(DECOY_EDIT, f"{name}__remover") > 0  # erased: edits back nearer the person than noise's


@pytest.mark.skipif(
    not (RESULTS / "pilot-decoy-edit-transfer" / "records").is_dir(), reason="the transfer pilot is not committed"
)
def test_the_decoy_edit_protector_keeps_half_its_effect_on_two_toy_editors_it_never_trained_against():
    """Leave one out (bench/pilot/decoy_edit_transfer.toml): toy-decoy-edit, trained on toy-v1 alone, scored on
    held-out identities of toy-v2, toy-v2-fine and the toy InstructPix2Pix keeps >= 50% of its toy-v1 effect on toy-v2
    and on the UNet, and a smaller effect, below zero, on toy-v2-fine (docs/AMORTIZED.md reads the miss)."""
    from decontext.toy import world

    held_out = {i.index for i in world.eval_identities()}
    own = _unattacked_effect(DECOY_EDIT, "toy-v1__protector_toy-decoy-edit@16__none")
    folder = RESULTS / "pilot-decoy-edit-transfer"
    kept = {}
    for editor in ("toy-v2", "toy-v2-fine", "toy-ip2p"):
        name = f"{editor}__protector_toy-decoy-edit@16__none"
        assert held_out.issuperset(_record(folder, name)["identities"])
        kept[editor] = _unattacked_effect(folder, name) / own
    assert kept["toy-v2"] >= 0.5 and kept["toy-ip2p"] >= 0.5
    assert 0.2 < kept["toy-v2-fine"] < 0.5


@pytest.mark.skipif(not (RESULTS / "pilot-decoy-edit-v3" / "records").is_dir(), reason="the v3 pilot is not committed")
def test_the_v3_decoy_edit_protector_is_scored_on_the_toy_specs_v3_photos():
    """toy-decoy-edit's recipe trained on toy-v3 (bench/pilot/decoy_edit_v3.toml, not shipped) is scored on the toy
    spec's held-out toy-v3 photos, edits and noise control, score for score, and moves toy-v3's identity against that
    control as docs/AMORTIZED.md reads it."""
    from decontext.toy import world3

    folder, name = RESULTS / "pilot-decoy-edit-v3", "toy-v3__protector_runs_protectors_toy-v3-decoy-edit@16"
    ours, theirs = _record(folder, f"{name}__none"), _record(RESULTS / "toy", "toy-v3__encoder@16__none")
    assert_same_photos(ours, theirs)
    assert {i.index for i in world3.eval_identities()}.issuperset(ours["identities"])
    for attacker in ("none", "jpeg", "resize", "regen_t=0.2"):
        assert _unattacked_effect(folder, f"{name}__{attacker}") < -0.03, attacker


@pytest.mark.skipif(
    not (RESULTS / "pilot-decoy-edit-seed1" / "records").is_dir(), reason="the seed-1 pilot is not committed"
)
def test_the_decoy_edit_recipe_passes_30_percent_with_a_second_seed_on_the_same_photos():
    """toy-decoy-edit's recipe trained with --seed 1 (bench/pilot/decoy_edit_seed1.toml) is scored on the toy spec's
    photos, edits and noise control, and passes 30% of the way as seed 0 did (docs/AMORTIZED.md: 45% and 46%)."""
    folder, name = RESULTS / "pilot-decoy-edit-seed1", "toy-v1__protector_runs_protectors_toy-decoy-edit-seed1@16__none"
    ours, theirs = _record(folder, name), _record(RESULTS / "toy", "toy-v1__encoder@16__none")
    assert_same_photos(ours, theirs)
    assert _share(folder, name) > 0.30
    assert (
        abs(
            _unattacked_effect(folder, name)
            - _unattacked_effect(DECOY_EDIT, "toy-v1__protector_toy-decoy-edit@16__none")
        )
        < 0.03
    )
