"""The step benchmark runs end to end on a small size and prints its machine-readable ratios line."""

import importlib.util
import re
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_step.py"


def test_bench_step_prints_ratios(capsys):
    spec = importlib.util.spec_from_file_location("bench_step", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--size", "64", "--text-tokens", "8", "--repeats", "1", "--skip-memory", "--with-separate"]) == 0
    out = capsys.readouterr().out
    for variant in ("ours", "official", "bare", "ours_sep"):
        assert re.search(rf"^{variant}\s+\d+\.\d+", out, re.M), out
    ratios = re.search(r"^ratios official_time=(\S+) official_mem=(\S+) bare_time=(\S+)$", out, re.M)
    assert ratios, out
    assert float(ratios.group(1)) > 0 and float(ratios.group(3)) > 0
    assert ratios.group(2) == "nan"  # memory skipped


def test_bench_probe_pad_runs(capsys):
    spec = importlib.util.spec_from_file_location("bench_probe_pad", BENCH.parent / "bench_probe_pad.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = ["--text", "3", "--target", "16", "--context", "16", "--heads", "2", "--head-dim", "8", "--pads", "1", "8", "--repeats", "1"]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert re.search(r"^plain\s+\d", out, re.M) and re.search(r"^fused pad 8\s+\d", out, re.M), out


def test_bench_uvr_runs_on_the_toy(tmp_path):
    """bench/uvr.py end to end at its smallest: anchors on the calibration split, UVR off and on, one row."""
    import json

    spec = importlib.util.spec_from_file_location("bench_uvr", BENCH.parent / "uvr.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    import torch

    threads = torch.get_num_threads()
    try:
        result = bench.main(["--identities", "2", "--calibration", "2", "--threshold", "1e9", "--out", str(tmp_path), "--threads", str(threads)])
    finally:
        torch.set_num_threads(threads)
    row = result["rows"][0]
    assert row["erase_rate"]["n"] == 2 and row["flagged_share_concept"] == 0.0
    assert row["other_unchanged"] == 1.0  # nothing flagged: every other edit identical to UVR off
    assert json.loads(next(tmp_path.glob("*.json")).read_text())["rows"][0]["threshold"] == 1e9
    assert next(tmp_path.glob("*.safetensors")).is_file()


def _bench(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH.parent / f"{name}.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_bench_steps_reports_each_rule_against_the_official_run():
    out = _bench("steps").main(["--model", "tiny", "--size", "64", "--identities", "1", "--official-steps", "4", "--budgets", "2",
                                "--rules", "adam+cosine", "--draws", "1"])
    rows = out["rows"]
    assert set(rows) == {"official@0", "official@2", "official@4", "adam+cosine@2"}
    assert rows["official@4"]["share"] < rows["official@0"]["share"]  # DeContext lowers the share it measures


def test_bench_robustness_scores_every_breaker_with_and_without_eot():
    import torch

    threads = torch.get_num_threads()
    try:
        out = _bench("robustness").main(["--identities", "2", "--steps", "1", "--methods", "encoder", "--breakers", "none", "jpeg", "--eot", "jpeg"])
    finally:
        torch.set_num_threads(threads)
    results = out["results"]
    assert set(results) == {"clean", "another person", "noise", "encoder", "encoder +EOT"}
    assert all(set(results[k]) == {"none", "jpeg"} for k in ("clean", "noise", "encoder", "encoder +EOT"))
    assert all(len(v) == 6 and len(v[0]) == 2 for v in results["encoder"].values())  # edits x identities
