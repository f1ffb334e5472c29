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
