"""decontext app: the page's logic directly, then the real page in headless Chromium (Playwright driving
the system's chromium): two toy faces protected, results within budget, the edit preview shown, and
hostile uploads named without breaking the session."""

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = os.environ.get("DECONTEXT_SCREENSHOTS")  # a folder: the browser test also saves its screenshots there


def _face(path: Path, index: int) -> Path:
    from decontext.toy import world

    Image.fromarray(world.render(world.sample_scene(world.eval_identities()[index], seed=index))).save(path)
    return path


def test_the_page_logic_protects_within_budget_and_names_bad_files(tmp_path):
    pytest.importorskip("gradio")
    from decontext.app import MODES, ProtectApp

    app = ProtectApp("toy", out=tmp_path / "app", device="cpu")
    session = app.new_session()
    face = _face(tmp_path / "face.png", 0)
    before = face.read_bytes()
    result = app.protect_one(session, face, list(MODES)[0], 16.0, app.prompts()[0])
    assert "error" not in result, result
    saved = np.asarray(Image.open(result["protected"])).astype(int)
    assert 0 < np.abs(saved - np.asarray(Image.open(face)).astype(int)).max() <= 16 and face.read_bytes() == before
    assert set(result["identity"]) == {"original", "protected"} and Path(result["edit_protected"]).is_file()
    (tmp_path / "bad.png").write_text("not an image")
    bad = app.protect_one(session, tmp_path / "bad.png", list(MODES)[1], 16.0, app.prompts()[0])
    assert "bad.png" in bad["name"] and "not an image" in bad["error"]
    Image.fromarray(np.zeros((1, 1, 3), dtype=np.uint8)).save(tmp_path / "dot.png")
    dot = app.protect_one(session, tmp_path / "dot.png", list(MODES)[0], 16.0, app.prompts()[0])
    assert "too small" in dot["error"] and not (session.folder / "protected" / "dot.png").exists()
    archive = app.archive(session)
    import zipfile

    assert sorted(zipfile.ZipFile(archive).namelist()) == ["face.png", "manifest.json"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    pytest.importorskip("gradio")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM}")
    out = tmp_path_factory.mktemp("app")
    port = _free_port()
    began = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "decontext", "app", "--port", str(port), "--out", str(out), "--device", "cpu"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if process.poll() is not None:
                raise AssertionError(process.stdout.read().decode()[-3000:]) from None
            time.sleep(0.3)
    started = time.perf_counter() - began
    print(f"app ready in {started:.1f} s")
    yield url, out, started
    process.terminate()
    process.wait(timeout=20)


@pytest.mark.browser
def test_the_page_in_a_browser(served, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, out, started = served
    faces = [_face(tmp_path / f"face{i}.png", i) for i in (1, 2)]
    (tmp_path / "fake.png").write_text("this is a text file")
    Image.fromarray(np.zeros((1, 1, 3), dtype=np.uint8)).save(tmp_path / "tiny.png")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.locator("#photos input[type=file]").set_input_files([str(f) for f in faces])
        page.locator("#protect").click()
        status = page.locator("#status")
        expect(status).to_contain_text("2 of 2 protected", timeout=240_000)
        expect(page.locator("#edits img")).to_have_count(4, timeout=60_000)  # original and protected edit of each face
        if SCREENSHOTS:
            Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(Path(SCREENSHOTS) / "app_protected.png"), full_page=True)
        links = page.locator("#download a")
        expect(links).to_have_count(3, timeout=30_000)  # two PNGs and the zip
        for i, face in enumerate(faces):
            href = links.nth(i).get_attribute("href")
            data = page.request.get(href if href.startswith("http") else url.rstrip("/") + href).body()
            saved = np.asarray(Image.open(io.BytesIO(data))).astype(int)
            source = np.asarray(Image.open(face)).astype(int)
            assert saved.shape == source.shape and 0 < np.abs(saved - source).max() <= 16
        # hostile uploads: named, and the session goes on (a new batch on the page, as after a reload)
        page.goto(url)
        page.locator("#photos input[type=file]").set_input_files(
            [str(tmp_path / "fake.png"), str(tmp_path / "tiny.png"), str(faces[0])]
        )
        page.locator("#protect").click()
        expect(status).to_contain_text("1 of 3 protected, 2 failed", timeout=240_000)
        expect(status).to_contain_text("fake.png")
        expect(status).to_contain_text("tiny.png")
        if SCREENSHOTS:
            page.screenshot(path=str(Path(SCREENSHOTS) / "app_bad_files.png"), full_page=True)
        browser.close()
    assert started < 60
