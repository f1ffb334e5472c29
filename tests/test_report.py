"""report.html: self-contained thumbnails, perturbation view, the paired headline lines, inline SVG
charts, and headless-Chromium render checks (the images load, the charts are drawn)."""

import base64
import io
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from decontext.metrics.base import EvalOptions, MetricBackend, MetricSpec
from decontext.metrics.evaluate import evaluate_run, summarize
from decontext.metrics.pixel import PixelBackend
from decontext.metrics.run import load_run
from decontext.report import condition_colors, perturbation_image, write_report
from tests.demo_run import make_demo_run

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class SourceSimilarity(MetricBackend):
    """A weights-free stand-in for an identity metric: how much of the source is left in the edit. It
    takes the headline name so that the report leads with it, as it would with the toy reader."""

    name = "source-similarity"
    metrics = (MetricSpec("toy_identity", "lower", "edit", "stand-in: 1 - mean |edit - source| / 255"),)

    def load(self) -> None:
        self.source = "the test's <stand-in> backend"
        self._ok()

    def score_edit(self, edit, run) -> dict[str, float]:
        source = run.image(run.source_path(edit.stem)).astype(np.float64)
        return {"toy_identity": 1.0 - float(np.abs(run.image(edit.output).astype(np.float64) - source).mean()) / 255.0}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    run = load_run(make_demo_run(tmp / "run", extra_condition="noise"))
    result = evaluate_run(run, [PixelBackend(EvalOptions()), SourceSimilarity()], progress=False)
    return tmp, result, summarize(result, n_boot=200)


@pytest.fixture(scope="module")
def report(evaluated):
    tmp, result, summary = evaluated
    out = tmp / "elsewhere" / "report.html"  # not inside the run folder: must still show the images
    out.parent.mkdir()
    return write_report(result, summary, out)


def test_perturbation_is_amplified_around_grey():
    src = np.full((4, 4, 3), 100, np.uint8)
    prot = src.copy()
    prot[0, 0] = (103, 99, 100)
    pert = perturbation_image(src, prot)
    assert pert[1, 1].tolist() == [128, 128, 128]
    assert pert[0, 0].tolist() == [158, 118, 128]
    assert perturbation_image(src, np.full_like(src, 255)).max() == 255  # clipped


def test_report_is_self_contained(report):
    text = report.read_text()
    uris = re.findall(r'src="(data:image/(?:png|jpeg);base64,[^"]+)"', text)
    # per stem: source, protected + perturbation, noise + perturbation, 2 edits in each of 3 conditions
    assert len(uris) == 2 * 11
    assert "http://" not in text and "https://" not in text
    for uri in uris[:3]:
        Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).verify()
    assert "Summary by condition" in text and "psnr_input" in text
    assert "protected - source, x10" in text


def _chromium(args, timeout=90):
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        return subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=timeout
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.browser
def test_report_renders_in_headless_chromium(report, tmp_path):
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"headless Chromium not found at {CHROMIUM} (apt-get install chromium; .ci/run does)")
    url = report.resolve().as_uri()
    dom = _chromium(["--virtual-time-budget=5000", "--dump-dom", url]).stdout
    assert "<title>report ready: 22 images</title>" in dom, dom[:500]
    assert 'data-images="ok"' in dom

    shot = tmp_path / "shot.png"
    _chromium([f"--screenshot={shot}", "--window-size=1200,2600", "--virtual-time-budget=5000", url])
    assert shot.is_file()
    arr = np.asarray(Image.open(shot).convert("RGB")).astype(np.float64)
    assert arr.shape[:2] == (2600, 1200)
    assert arr.std() > 20  # not a blank page
    # below the headline, charts and tables: photo thumbnails put many distinct colours on screen, a
    # text-only page would not
    lower = arr[1400:]
    assert len(np.unique(lower.reshape(-1, 3)[::7].astype(np.uint8), axis=0)) > 2000


@pytest.mark.browser
def test_broken_image_is_detected_by_the_page(tmp_path):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"headless Chromium not found at {CHROMIUM}")
    from decontext.report import _SCRIPT

    page = tmp_path / "broken.html"
    page.write_text(
        f'<html><head><title>x</title></head><body><img src="missing.png"><script>{_SCRIPT}</script></body></html>'
    )
    dom = _chromium(["--virtual-time-budget=3000", "--dump-dom", page.resolve().as_uri()]).stdout
    assert "report broken: 1 of 1 images failed" in dom


def _by_hand(result, condition, reference):
    """toy_identity of ``condition`` minus ``reference`` on the same (image, prompt, seed), mean per identity."""
    ref = {
        (r["image"], r["prompt_index"], r["seed"]): r["toy_identity"]
        for r in result.edit_rows
        if r["condition"] == reference
    }
    per_identity: dict[str, list[float]] = {}
    for r in result.edit_rows:
        if r["condition"] == condition:
            per_identity.setdefault(r["identity"], []).append(
                r["toy_identity"] - ref[(r["image"], r["prompt_index"], r["seed"])]
            )
    return float(np.mean([np.mean(v) for v in per_identity.values()]))


def test_paired_lines_lead_the_report_and_summary(evaluated, report):
    _, result, summary = evaluated
    paired = summary["_paired"]
    assert paired["metric"] == "toy_identity" and paired["direction"] == "lower"
    lines = {e["condition"]: e for e in paired["conditions"]}
    assert set(lines) == {"protected", "noise"}
    assert [v["reference"] for v in lines["protected"]["versus"]] == ["clean", "noise"]
    assert [v["reference"] for v in lines["noise"]["versus"]] == ["clean"]  # the control is not compared with itself
    for cond, ref in (("protected", "clean"), ("protected", "noise"), ("noise", "clean")):
        d = next(v for v in lines[cond]["versus"] if v["reference"] == ref)["diff"]
        assert d["mean"] == pytest.approx(_by_hand(result, cond, ref))
        assert (d["pairs"], d["identities"]) == (4, 2) and d["low"] <= d["mean"] <= d["high"]
    # the washed-out protected edits of image a keep less of the source than the clean edits do
    assert lines["protected"]["versus"][0]["diff"]["mean"] < -0.05

    text = report.read_text()
    d = lines["protected"]["versus"][0]
    expected = (
        f"protected: toy_identity {d['condition_mean']:.3f} vs clean {d['reference_mean']:.3f}: "
        f"{d['diff']['mean']:+.3f} [{d['diff']['low']:+.3f}, {d['diff']['high']:+.3f}] "
        "(n=4 pairs, 2 identities; lower = better protection); vs noise"
    )
    assert expected in text
    assert text.index('id="paired"') < text.index('id="charts"') < text.index("Summary by condition")
    # the metrics list says what computed each metric, escaped
    assert "computed with: the test&#x27;s &lt;stand-in&gt; backend" in text
    from decontext.metrics.evaluate import summary_markdown

    md = summary_markdown(summary)
    assert f"- {expected}" in md and md.index("## Headline: paired differences") < md.index("## By condition")


def test_noise_reference_follows_the_purifier():
    from decontext.metrics.evaluate import noise_reference

    conds = ["clean", "noise", "decontext", "decontext@jpeg75", "noise@jpeg75", "decontext@blur1"]
    assert noise_reference("decontext", conds) == "noise"
    assert noise_reference("decontext@jpeg75", conds) == "noise@jpeg75"
    assert noise_reference("decontext@blur1", conds) == "noise"  # no noise@blur1: the plain control
    assert noise_reference("noise@jpeg75", conds) is None
    assert noise_reference("decontext", ["clean", "decontext"]) is None
    assert noise_reference("encoder", ["clean", "noise_l2", "encoder"]) == "noise_l2"


def _expected_marks(summary) -> dict[str, int]:
    """Per metric chart: one point per condition that has a mean."""
    conds = [c for c in summary if not c.startswith("_")]
    counts = {
        m: sum(1 for c in conds if (summary[c].get(m) or {}).get("mean") is not None) for m in summary["_metrics"]
    }
    return {m: n for m, n in counts.items() if n}


def test_charts_have_one_point_and_one_interval_per_condition(evaluated, report):
    import xml.etree.ElementTree as ET

    _, _, summary = evaluated
    expected = _expected_marks(summary)
    # toy_identity in all 3 conditions; psnr/ssim of the input and of the edit vs clean in the 2 protected ones
    assert expected == {"toy_identity": 3, "psnr_input": 2, "ssim_input": 2, "psnr_vs_clean": 2, "ssim_vs_clean": 2}
    text = report.read_text()
    for metric, n in expected.items():
        svg = re.search(rf'<svg[^>]*id="chart-{metric}".*?</svg>', text, re.S).group(0)
        root = ET.fromstring(svg)  # well-formed XML, as inline SVG must be
        marks = [e for e in root.iter() if e.get("class") == "mark"]
        bars = [e for e in root.iter() if e.get("class") == "errorbar"]
        assert len(marks) == n and len(bars) == n, metric
    colors = condition_colors(["clean", "protected", "noise"])
    toy = re.search(r'<svg[^>]*id="chart-toy_identity".*?</svg>', text, re.S).group(0)
    assert all(f'fill="{colors[c]}"' in toy for c in colors)


def _hex(color: str) -> tuple[int, int, int]:
    return tuple(int(color[k : k + 2], 16) for k in (1, 3, 5))


@pytest.mark.browser
def test_charts_are_drawn_in_headless_chromium(evaluated, report, tmp_path):
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"headless Chromium not found at {CHROMIUM} (apt-get install chromium; .ci/run does)")
    _, _, summary = evaluated
    expected = _expected_marks(summary)
    url = report.resolve().as_uri()
    dom = _chromium(["--virtual-time-budget=5000", "--dump-dom", url]).stdout
    charts = re.search(r'<div class="charts" id="charts">(.*?)</div>', dom, re.S).group(1)
    assert charts.count("<svg") == len(expected)
    assert charts.count('class="mark"') == sum(expected.values())
    assert charts.count('class="errorbar"') == sum(expected.values())

    # the charts sit near the top: a screenshot of the first screenful shows their marks in colour
    shot = tmp_path / "charts.png"
    _chromium([f"--screenshot={shot}", "--window-size=1200,900", "--virtual-time-budget=5000", url])
    arr = np.asarray(Image.open(shot).convert("RGB"))
    colors = condition_colors(["clean", "protected", "noise"])
    for cond, color in colors.items():
        hits = np.all(arr == np.array(_hex(color), np.uint8), axis=-1)
        # the points (r=5) of every chart in which the condition appears, and its error bars
        assert hits.sum() >= 40 * sum(1 for m in expected if m == "toy_identity" or cond != "clean"), cond
        ys, xs = np.nonzero(hits)
        assert ys.max() < 900 and xs.min() > 0


def _summary_with(diff: tuple[float, float, float], noise: bool = True, direction: str = "lower") -> dict:
    mean, low, high = diff
    versus = [
        {
            "reference": "clean",
            "condition_mean": 0.9,
            "reference_mean": 0.95,
            "diff": {"mean": mean, "low": low, "high": high, "identities": 20, "pairs": 120},
        }
    ]
    if noise:
        versus.append(
            {
                "reference": "noise",
                "condition_mean": 0.9,
                "reference_mean": 0.95,
                "diff": {"mean": mean, "low": low, "high": high, "identities": 20, "pairs": 120},
            }
        )
    return {
        "_paired": {
            "metric": "toy_identity",
            "direction": direction,
            "conditions": [{"condition": "protected", "versus": versus}],
        },
        "_run": {"protection": {"protected": "decontext, fast preset, 200 steps, eps 12.75/255"}},
    }


def test_the_verdict_says_when_the_interval_includes_zero():
    from decontext.metrics.evaluate import verdict_lines

    touching = verdict_lines(_summary_with((-0.021, -0.044, -0.0001)))[0]  # prints as +0.000 (or -0.000): includes 0
    assert touching.startswith(
        "**protected** (decontext, fast preset, 200 steps, eps 12.75/255) against the noise control"
    )
    assert "-0.021 (95% interval -0.044 to +0.000 over 20 identities" in touching
    assert "The interval includes 0, so this run cannot tell the protection apart from noise." in touching
    assert "Against clean edits: -0.021 (-0.044 to +0.000). The interval includes 0" in touching
    clear = verdict_lines(_summary_with((-0.05, -0.08, -0.02)))[0]
    assert (
        "The interval excludes 0: better protection than noise." in clear
        and "better protection than no protection" in clear
    )
    wrong = verdict_lines(_summary_with((0.05, 0.02, 0.08)))[0]
    assert "WORSE protection than noise" in wrong
    higher = verdict_lines(_summary_with((0.05, 0.02, 0.08), direction="higher"))[0]
    assert "better protection than noise" in higher
    alone = verdict_lines(_summary_with((-0.05, -0.08, -0.02), noise=False))[0]
    assert "against clean edits" in alone and "no noise control" in alone


def test_the_report_leads_with_the_verdict(evaluated, report):
    text = report.read_text()
    assert text.index('id="verdict"') < text.index('id="paired"')
    assert "<b>protected</b> against the noise control" in text


def test_colours_are_fixed_by_condition_name():
    from decontext.plots import FIXED_COLORS, color_of

    one, other = (
        condition_colors(["clean", "noise", "protected"]),
        condition_colors(["protected", "decontext", "clean", "noise@jpeg75", "noise"]),
    )
    assert one["protected"] == other["protected"] == FIXED_COLORS["protected"]
    assert one["clean"] == other["clean"] and one["noise"] == other["noise"] == other["noise@jpeg75"]
    assert len({one["clean"], one["noise"], one["protected"]}) == 3
    assert color_of("decontext") == color_of("decontext@jpeg75") not in FIXED_COLORS.values()
