"""The step benchmark runs end to end on a small size and prints its machine-readable ratios line."""

import importlib
import re
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_step.py"


def test_bench_step_prints_ratios(capsys):
    bench = importlib.import_module("bench.bench_step")
    assert bench.main(["--size", "64", "--text-tokens", "8", "--repeats", "1", "--skip-memory", "--with-separate"]) == 0
    out = capsys.readouterr().out
    for variant in ("ours", "official", "bare", "ours_sep"):
        assert re.search(rf"^{variant}\s+\d+\.\d+", out, re.M), out
    ratios = re.search(r"^ratios official_time=(\S+) official_mem=(\S+) bare_time=(\S+)$", out, re.M)
    assert ratios, out
    assert float(ratios.group(1)) > 0 and float(ratios.group(3)) > 0
    assert ratios.group(2) == "nan"  # memory skipped


def _load_step_bench():
    return importlib.import_module("bench.bench_step")


def test_bench_step_variants_run_in_the_given_order_and_ratios_name_what_is_missing(capsys):
    bench = _load_step_bench()
    assert (
        bench.main(
            [
                "--size",
                "64",
                "--text-tokens",
                "8",
                "--repeats",
                "1",
                "--skip-memory",
                "--with-separate",
                "--variants",
                "ours_sep",
                "ours",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    rows = re.findall(r"^(ours_sep|ours|official|bare)\s+\d", out, re.M)
    assert rows == ["ours_sep", "ours"], out
    assert re.search(r"^ratios .*not run or did not fit: official, bare", out, re.M), out
    with pytest.raises(SystemExit):
        bench.main(["--size", "64", "--variants", "ours_sep"])  # ours_sep needs --with-separate
    assert "ours_sep needs --with-separate" in capsys.readouterr().err


def test_bench_step_gpu_only_modes_are_refused_on_the_cpu(capsys):
    bench = _load_step_bench()
    with pytest.raises(SystemExit, match="needs --device cuda"):
        bench.main(["--size", "64", "--quantize", "4bit"])
    with pytest.raises(SystemExit):
        bench.main(["--size", "64", "--memory-cap-gb", "24"])
    assert "--memory-cap-gb needs a CUDA device" in capsys.readouterr().err


def test_bench_step_reports_out_of_memory_instead_of_dying():
    import torch

    bench = _load_step_bench()
    calls = []

    def too_big():
        calls.append(1)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.05 GiB.\nmore")

    assert bench.run_or_oom(too_big) == "CUDA out of memory. Tried to allocate 3.05 GiB."
    assert bench.run_or_oom(lambda: None) is None and calls == [1]
    with pytest.raises(ValueError):  # anything else is not swallowed
        bench.run_or_oom(lambda: (_ for _ in ()).throw(ValueError("bug")))


def test_bench_builds_in_place_on_the_target_device_and_dtype_then_restores_the_defaults():
    import torch

    bench = _load_step_bench()
    before = torch.get_default_dtype()
    with bench.built_in_place(torch.device("meta"), torch.bfloat16):
        made = torch.nn.Linear(4, 4)
    assert made.weight.device.type == "meta" and made.weight.dtype == torch.bfloat16
    assert torch.get_default_dtype() == before and torch.empty(1).device.type == "cpu"
    with bench.built_in_place(torch.device("cpu"), torch.bfloat16):  # the CPU path keeps float32 weights
        assert torch.nn.Linear(2, 2).weight.dtype == before


def test_tiny_qwen_components_build_under_a_default_device_context():
    """The bench builds real-size models under ``torch.device('cuda')``; the tiny builders' CPU generators
    must not break there (they did: 'Expected a cuda device type for generator')."""
    import torch

    from decontext.editors.qwen_image_edit import tiny_qwen_image_edit_components

    with torch.device("meta"):
        components = tiny_qwen_image_edit_components()
    assert next(components["transformer"].parameters()).device.type == "meta"
    assert len(components["vae"].config.latents_mean) == components["vae"].config.z_dim


def test_bench_probe_pad_runs(capsys):
    bench = importlib.import_module("bench.bench_probe_pad")
    args = [
        "--text",
        "3",
        "--target",
        "16",
        "--context",
        "16",
        "--heads",
        "2",
        "--head-dim",
        "8",
        "--pads",
        "1",
        "8",
        "--repeats",
        "1",
    ]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert re.search(r"^plain\s+\d", out, re.M) and re.search(r"^fused pad 8\s+\d", out, re.M), out


def test_bench_uvr_runs_on_the_toy(tmp_path):
    """bench/uvr.py end to end at its smallest: anchors on the calibration split, UVR off and on, one row."""
    import json

    bench = importlib.import_module("bench.uvr")
    import torch

    threads = torch.get_num_threads()
    try:
        result = bench.main(
            [
                "--identities",
                "2",
                "--calibration",
                "2",
                "--threshold",
                "1e9",
                "--out",
                str(tmp_path),
                "--threads",
                str(threads),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    row = result["rows"][0]
    assert row["erase_rate"]["n"] == 2 and row["flagged_share_concept"] == 0.0
    assert row["other_unchanged"] == 1.0  # nothing flagged: every other edit identical to UVR off
    assert json.loads(next(tmp_path.glob("*.json")).read_text())["rows"][0]["threshold"] == 1e9
    assert next(tmp_path.glob("*.safetensors")).is_file()


def _bench(name):
    return importlib.import_module(f"bench.{name}")


def test_bench_steps_reports_each_rule_against_the_paper_run_per_image():
    out = _bench("steps").main(
        [
            "--model",
            "tiny",
            "--size",
            "64",
            "--images",
            "2",
            "--paper-steps",
            "4",
            "--snapshots",
            "2",
            "--budgets",
            "2",
            "--rules",
            "momentum+cosine x2",
            "fast",
            "--draws",
            "1",
        ]
    )
    rows = out["rows"]
    assert set(rows) == {"paper@0", "paper@2", "paper@4", "momentum+cosine x2@2", "fast@2"}
    assert all(len(v) == 2 for v in rows.values())  # one entry per image
    assert all(
        rows["paper@4"][i]["share"] < rows["paper@0"][i]["share"] for i in range(2)
    )  # DeContext lowers the share it measures
    gap = out["summary"]["fast@2"]["gap"]
    shares = [r["share"] - p["share"] for r, p in zip(rows["fast@2"], rows["paper@4"], strict=False)]
    assert gap[0] == pytest.approx(sum(shares) / 2) and gap[1] <= gap[0] <= gap[2]
    assert out["summary"]["paper@4"]["time_ratio"][0] == pytest.approx(1.0)


def test_bench_photo_protects_one_photo_with_both_presets(tmp_path):
    rows = _bench("photo").main(
        ["--size", "64", "--paper-steps", "3", "--fast-steps", "4", "--json", str(tmp_path / "photo.json")]
    )
    assert rows["fast"]["steps_run"] <= 4 and rows["paper"]["steps_run"] == 3
    assert rows["paper"]["extrapolated_800_s"] > rows["paper"]["protect_s"]


def test_bench_step_compile_times_a_compiled_copy_beside_eager(capsys, monkeypatch):
    """--compile's plumbing (a compiled copy timed beside the eager model), with the fast aot_eager backend."""
    from decontext.editors import blocks, dit

    monkeypatch.setattr(
        dit, "compile_blocks", lambda model, backend="inductor", **kw: blocks.compile_blocks(model, "aot_eager", **kw)
    )
    assert (
        _load_step_bench().main(
            [
                "--size",
                "64",
                "--text-tokens",
                "8",
                "--repeats",
                "1",
                "--skip-memory",
                "--compile",
                "--variants",
                "ours",
                "ours_compiled",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert re.search(r"^ours_compiled\s+\d+\.\d+", out, re.M) and "loss eager" in out


def test_bench_robustness_scores_every_breaker_with_and_without_eot():
    import torch

    threads = torch.get_num_threads()
    try:
        out = _bench("robustness").main(
            ["--identities", "2", "--steps", "1", "--methods", "encoder", "--breakers", "none", "jpeg", "--eot", "jpeg"]
        )
    finally:
        torch.set_num_threads(threads)
    results = out["results"]
    assert set(results) == {"clean", "another person", "noise", "encoder", "encoder +EOT"}
    assert all(set(results[k]) == {"none", "jpeg"} for k in ("clean", "noise", "encoder", "encoder +EOT"))
    assert all(len(v) == 6 and len(v[0]) == 2 for v in results["encoder"].values())  # edits x identities


def test_bench_effect_replots_identity_against_budget_from_its_json(tmp_path):
    """bench/effect.py --replot: one line per method, one interval bar and point per (method, budget),
    drawn from a saved JSON without re-running anything."""
    import json
    import xml.etree.ElementTree as ET

    import numpy as np

    rng = np.random.default_rng(0)

    def scores(level):
        return {
            "toy_identity": np.clip(level + rng.normal(0, 0.05, (6, 4)), 0, 1).tolist(),
            "edit_success": np.ones((6, 4)).tolist(),
        }

    results = {"clean": scores(0.95), "another person": scores(0.45)}
    for eps in (4, 8, 16):
        results[f"noise@{eps}"] = {**scores(0.95), "psnr": 30.0, "seconds_per_image": 0.1}
        results[f"decontext@{eps}"] = {**scores(0.95 - eps / 100), "psnr": 28.0, "seconds_per_image": 1.0}
    results["decontext_all_t@16"] = scores(0.8)  # a variant run at one budget only
    saved = tmp_path / "effect.json"
    saved.write_text(json.dumps(results))

    effect = _bench("effect")
    assert effect.main(["--replot", str(saved)]) == 0
    svg = ET.parse(tmp_path / "effect.svg").getroot()
    classes = [e.get("class") for e in svg.iter()]
    assert classes.count("series") == 3 and classes.count("errorbar") == 7 and classes.count("mark") == 7
    assert classes.count("reference") == 2  # clean and another person
    legend = [e.text for e in svg.iter() if e.tag.endswith("text")]
    assert {"noise", "decontext", "decontext_all_t"} <= set(legend)
    lines = [e.get("points").split() for e in svg.iter() if e.get("class") == "series"]  # noise, decontext, variant
    assert [len(points) for points in lines] == [3, 3, 1]
    ys = [float(point.split(",")[1]) for point in lines[1]]
    assert ys == sorted(ys)  # decontext's identity falls with the budget: its line goes down the page (larger y)

    series = effect.budget_series(results)
    assert [eps for eps, _ in series["decontext"]] == [4.0, 8.0, 16.0]
    ci = series["decontext"][2][1]
    per_identity = np.asarray(results["decontext@16"]["toy_identity"]).mean(0)
    assert ci.mean == pytest.approx(per_identity.mean()) and ci.n == 4 and ci.low <= ci.mean <= ci.high

    assert effect.main(["--replot", str(saved), "--plot", str(tmp_path / "other.svg")]) == 0
    assert (tmp_path / "other.svg").read_text() == (tmp_path / "effect.svg").read_text()


def test_bench_paired_bootstrap_is_the_shared_paired_difference():
    """bench/effect.py's (edits, identities) arrays and report.html's edit rows give the same interval."""
    import numpy as np

    from decontext.metrics.bootstrap import paired_difference_ci

    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.5, 1, (6, 9)), rng.uniform(0.5, 1, (6, 9))

    def rows(x):
        return [
            {"image": f"im{i}", "identity": f"id{i:02d}", "prompt_index": e, "seed": 0, "m": float(x[e, i])}
            for e in range(6)
            for i in range(9)
        ]

    shared = paired_difference_ci(rows(a), rows(b), "m", n_boot=2000, seed=0).diff
    mean, low, high = _bench("effect").paired_bootstrap(a, b)
    assert (mean, low, high) == (pytest.approx(shared.mean), pytest.approx(shared.low), pytest.approx(shared.high))
    # and it is the textbook identity bootstrap of the per-identity mean differences
    per_identity = (a - b).mean(0)
    draws = per_identity[np.random.default_rng(0).integers(0, 9, (2000, 9))].mean(1)
    assert (low, high) == (pytest.approx(np.percentile(draws, 2.5)), pytest.approx(np.percentile(draws, 97.5)))


def test_real_presets_of_the_new_editors_have_the_published_transformer_sizes():
    """bench_step --family flux2 / qwen_image_edit --preset real builds the real transformer shapes (random
    weights, GPU only); built here on the meta device, they have FLUX.2 [dev]'s 32 B and Qwen-Image's 20 B
    parameters (the published sizes), so the preset really is that architecture."""
    import argparse

    from accelerate import init_empty_weights

    from decontext.editors.flux2 import tiny_flux2_klein_components
    from decontext.editors.qwen_image_edit import tiny_qwen_image_edit_components

    bench_step = _bench("bench_step")
    args = argparse.Namespace(text_tokens=128)
    with init_empty_weights():
        flux2 = tiny_flux2_klein_components(bench_step.real_flux2_config(args))["transformer"]
        qwen = tiny_qwen_image_edit_components(bench_step.real_qwen_config(args))["transformer"]
    assert 31.5e9 < sum(p.numel() for p in flux2.parameters()) < 33e9
    assert 20.0e9 < sum(p.numel() for p in qwen.parameters()) < 21e9
    assert (flux2.config.num_layers, flux2.config.num_single_layers) == (8, 48) and qwen.config.num_layers == 60


def test_bench_step_runs_the_new_families_tiny():
    bench_step = _bench("bench_step")
    for family in ("flux2", "qwen_image_edit"):
        assert bench_step.main(["--family", family, "--size", "32", "--repeats", "1", "--skip-memory"]) == 0
