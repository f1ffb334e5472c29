"""report.html: self-contained thumbnails, perturbation view, and a headless-Chromium render check."""

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

from decontext.metrics.base import EvalOptions
from decontext.metrics.demo import make_demo_run
from decontext.metrics.evaluate import evaluate_run, summarize
from decontext.metrics.pixel import PixelBackend
from decontext.metrics.run import load_run
from decontext.report import perturbation_image, write_report

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    run = load_run(make_demo_run(tmp / "run"))
    result = evaluate_run(run, [PixelBackend(EvalOptions())], progress=False)
    out = tmp / "elsewhere" / "report.html"  # not inside the run folder: must still show the images
    out.parent.mkdir()
    return write_report(result, summarize(result, n_boot=200), out)


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
    # per stem: source, protected, perturbation, 2 clean edits, 2 protected edits
    assert len(uris) == 2 * 7
    assert "http://" not in text and "https://" not in text
    for uri in uris[:3]:
        Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).verify()
    assert "Summary by condition" in text and "psnr_input" in text
    assert "protected - source, x10" in text


def _chromium(args, timeout=90):
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.browser
def test_report_renders_in_headless_chromium(report, tmp_path):
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"headless Chromium not found at {CHROMIUM} (apt-get install chromium; .ci/run does)")
    url = report.resolve().as_uri()
    dom = _chromium(["--virtual-time-budget=5000", "--dump-dom", url]).stdout
    assert "<title>report ready: 14 images</title>" in dom, dom[:500]
    assert 'data-images="ok"' in dom

    shot = tmp_path / "shot.png"
    _chromium([f"--screenshot={shot}", "--window-size=1200,900", "--virtual-time-budget=5000", url])
    assert shot.is_file()
    arr = np.asarray(Image.open(shot).convert("RGB")).astype(np.float64)
    assert arr.shape[:2] == (900, 1200)
    assert arr.std() > 20  # not a blank page
    # photo thumbnails put many distinct colours on screen, a text-only page would not
    assert len(np.unique(arr.reshape(-1, 3)[::7].astype(np.uint8), axis=0)) > 2000


@pytest.mark.browser
def test_broken_image_is_detected_by_the_page(tmp_path):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"headless Chromium not found at {CHROMIUM}")
    from decontext.report import _SCRIPT

    page = tmp_path / "broken.html"
    page.write_text(f'<html><head><title>x</title></head><body><img src="missing.png"><script>{_SCRIPT}</script></body></html>')
    dom = _chromium(["--virtual-time-budget=3000", "--dump-dom", page.resolve().as_uri()]).stdout
    assert "report broken: 1 of 1 images failed" in dom
