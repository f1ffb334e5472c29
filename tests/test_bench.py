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
