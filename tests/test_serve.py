"""decontext serve against real servers on 127.0.0.1 with the shipped toy protector: the budget holds on every
returned image, equal requests get equal bytes (batched or not), hostile uploads are refused with 4xx while
the next good request is served, a full queue answers 503 with Retry-After, a deadline 504, the API key is
enforced, SIGTERM answers what is in flight and exits 0, and a non-loopback bind without a key is refused.

One loaded engine is shared by the in-process servers (uvicorn in a thread); the SIGTERM test starts the
command itself."""

import base64
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")
pillow_heif = pytest.importorskip("pillow_heif")  # the serve extra reads HEIC uploads with it

ROOT = Path(__file__).resolve().parents[1]
EPS = 16  # the toy protector's budget (its protector.json)


# ---------------------------------------------------------------------------------------------- helpers
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _face(index: int) -> np.ndarray:
    from decontext.toy import world

    return world.render(world.sample_scene(world.eval_identities()[index], seed=index))


def _encode(array: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    """PNG (or ``fmt``) bytes of an array; its mode from its shape and type (uint16: 16-bit grey)."""
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt, **kwargs)
    return out.getvalue()


def _rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


class Running:
    """uvicorn serving ``app`` in a thread on a free loopback port."""

    def __init__(self, app):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        _wait(lambda: self.server.started, 30, "the server to start")
        self.service = app.state.service

    def client(self, **kwargs):
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)


class Gate:
    """An engine that runs the real one only when the gate is open (a blocked worker, for queue tests)."""

    def __init__(self, engine):
        self.engine = engine
        self.open = threading.Event()
        self.open.set()

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def run(self, jobs):
        self.open.wait(60)
        return self.engine.run(jobs)


@pytest.fixture(scope="module", autouse=True)
def _pixel_limit_restored():
    """The servers set Pillow's process-wide pixel limit (--max-megapixels); the other tests get theirs back."""
    limit = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = limit


@pytest.fixture(scope="module")
def engine():
    from decontext.serve.engine import Engine

    return Engine(("toy-decontext",), device="cpu", measure_draws=1, pgd_steps=8).load()


def _serve(engine, **settings):
    from decontext.serve.app import create_app
    from decontext.serve.settings import ServeSettings

    running = Running(create_app(ServeSettings(**settings), engine=engine))
    _wait(lambda: running.service.ready, 30, "readiness")
    return running


@pytest.fixture(scope="module")
def server(engine):
    running = _serve(engine, max_batch=8, max_wait_ms=5, max_queue=16, max_upload_bytes=2 * 1024 * 1024)
    yield running
    running.stop()


# ---------------------------------------------------------------------------------------------- protection
def test_the_answer_is_the_protected_photo_within_budget_with_its_record(server):
    from decontext.methods.protector_files import weights_digest

    face = _face(0)
    with server.client() as client:
        answer = client.post("/v1/protect", content=_encode(face), headers={"Content-Type": "image/png"})
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "image/png"
        diff = np.abs(_rgb(answer.content) - face.astype(int))
        assert diff.shape == face.shape and 0 < diff.max() <= EPS
        h = answer.headers
        assert h["x-decontext-protector"] == "toy-decontext"
        assert h["x-decontext-protector-sha256"] == weights_digest("toy-decontext")
        assert h["x-decontext-eps"] == "16" and int(h["x-decontext-max-diff-levels"]) == diff.max()
        assert h["x-decontext-measure-before"].startswith("share=") and h["x-decontext-measure-after"].startswith(
            "share="
        )
        assert h["x-decontext-version"] and float(h["x-decontext-milliseconds"]) > 0 and h["x-decontext-request-id"]

        small = client.post("/v1/protect?eps=4", content=_encode(face), headers={"Content-Type": "image/png"})
        assert small.headers["x-decontext-eps"] == "4"
        assert 0 < np.abs(_rgb(small.content) - face).max() <= 4
        capped = client.post("/v1/protect?eps=200", content=_encode(face), headers={"Content-Type": "image/png"})
        assert capped.headers["x-decontext-eps"] == "16" and np.abs(_rgb(capped.content) - face).max() <= EPS

        pgd = client.post("/v1/protect?method=fast&eps=8", content=_encode(face), headers={"Content-Type": "image/png"})
        assert pgd.status_code == 200, pgd.text
        assert pgd.headers["x-decontext-method"].startswith("decontext") and "x-decontext-protector" not in pgd.headers
        assert 0 < np.abs(_rgb(pgd.content) - face).max() <= 8

        record = client.post("/v1/protect?record=json", content=_encode(face), headers={"Content-Type": "image/png"})
        body = record.json()
        assert body["media_type"] == "image/png" and body["record"]["eps"] == 16
        assert base64.b64decode(body["image_base64"]) == answer.content  # the same request, the same bytes


def test_equal_requests_get_equal_bytes_and_settings_or_content_change_them(server):
    faces = [_encode(_face(i)) for i in range(2)]
    with server.client() as client:

        def send(photo, query="", **kwargs):
            kwargs.setdefault("content", photo)
            kwargs.setdefault("headers", {"Content-Type": "image/png"})
            answer = client.post(f"/v1/protect{query}", **kwargs)
            assert answer.status_code == 200, answer.text
            return answer.content

        first = send(faces[0])
        assert send(faces[0]) == first
        # multipart with the settings as form fields is the same request as the raw body with query parameters
        assert send(None, content=None, headers={}, files={"image": ("a.png", faces[0], "image/png")}) == first
        eps8 = send(faces[0], "?eps=8")
        form8 = send(
            None, content=None, headers={}, files={"image": ("a.png", faces[0], "image/png")}, data={"eps": "8"}
        )
        assert form8 == eps8 != first
        assert send(faces[1]) != first


def test_a_batch_gives_each_photo_the_bytes_it_gets_alone(engine):
    gated = Gate(engine)
    running = _serve(gated, max_batch=8, max_wait_ms=1, max_queue=16)
    faces = [_encode(_face(i)) for i in range(5)]
    try:
        with running.client() as client:
            alone = [client.post("/v1/protect", content=f, headers={"Content-Type": "image/png"}) for f in faces]
            gated.open.clear()
            with ThreadPoolExecutor(len(faces)) as pool:
                blocker = pool.submit(
                    client.post, "/v1/protect", content=faces[0], headers={"Content-Type": "image/png"}
                )
                _wait(lambda: running.service.batcher.running == 1, 30, "the worker to take the first request")
                rest = [
                    pool.submit(client.post, "/v1/protect", content=f, headers={"Content-Type": "image/png"})
                    for f in faces[1:]
                ]
                _wait(lambda: running.service.batcher.depth == 4, 30, "four queued requests")
                gated.open.set()
                together = [blocker.result()] + [r.result() for r in rest]
        assert [a.headers["x-decontext-batch"] for a in together] == ["1", "4", "4", "4", "4"]
        assert [a.content for a in together] == [a.content for a in alone]
    finally:
        gated.open.set()
        running.stop()


def test_the_formats_people_upload(server):
    face = _face(1)
    tall = np.ascontiguousarray(face[:, :40])  # 64 high, 40 wide
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    jpeg = io.BytesIO()
    Image.fromarray(tall).save(jpeg, format="JPEG", quality=95, exif=exif.tobytes())
    rgba = np.dstack([face, np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))])
    grey16 = (face[..., 0].astype(np.uint16) * 257).astype(np.uint16)
    cmyk = io.BytesIO()
    Image.fromarray(face).convert("CMYK").save(cmyk, format="JPEG", quality=95)
    with server.client() as client:

        def send(data, kind, query=""):
            answer = client.post(f"/v1/protect{query}", content=data, headers={"Content-Type": kind})
            assert answer.status_code == 200, answer.text
            return answer

        shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(jpeg.getvalue()))).convert("RGB")).astype(int)
        out = _rgb(send(jpeg.getvalue(), "image/jpeg").content)
        assert out.shape == shown.shape == (40, 64, 3) and np.abs(out - shown).max() <= EPS  # upright, in budget

        answer = Image.open(io.BytesIO(send(_encode(rgba), "image/png").content))
        assert answer.mode == "RGBA" and np.array_equal(np.asarray(answer)[..., 3], rgba[..., 3])  # alpha kept
        assert np.abs(np.asarray(answer)[..., :3].astype(int) - face).max() <= EPS

        webp = _encode(face, "WEBP", lossless=True)
        assert np.abs(_rgb(send(webp, "image/webp").content) - face).max() <= EPS
        grey = _rgb(send(_encode(grey16), "image/png").content)
        assert grey.shape == (64, 64, 3) and np.abs(grey - (grey16 // 257)[..., None]).max() <= EPS
        assert send(cmyk.getvalue(), "image/jpeg").content[:8] == b"\x89PNG\r\n\x1a\n"
        heic = io.BytesIO()  # a phone's photo (pillow-heif, in the serve extra); lossless so the budget is exact
        pillow_heif.from_bytes(mode="RGB", size=(64, 64), data=face.tobytes()).save(
            heic, quality=-1, chroma=444, matrix_coefficients=0
        )
        for kind in ("image/heic", "image/heif", "application/octet-stream"):
            assert np.abs(_rgb(send(heic.getvalue(), kind).content) - face).max() <= EPS, kind

        lossy = send(_encode(face), "image/png", "?format=jpeg")
        assert lossy.headers["content-type"] == "image/jpeg" and "weakens" in lossy.headers["x-decontext-warning"]
        assert send(_encode(face), "image/png", "?format=webp").content[8:12] == b"WEBP"


def test_a_heic_upload_without_pillow_heif_is_a_415_that_names_the_package(monkeypatch):
    from decontext import images
    from decontext.serve.uploads import UploadProblem, check_image_type

    monkeypatch.setattr(images, "_heif", False)  # as on a server installed without the serve extra's reader
    with pytest.raises(UploadProblem) as refused:
        check_image_type("image/heic; charset=binary")
    assert refused.value.status == 415 and "image/heic needs pillow-heif" in str(refused.value)
    with pytest.raises(UploadProblem) as other:
        check_image_type("text/plain")
    assert "image/png" in str(other.value) and "heif" not in str(other.value)  # not offered among what it reads
    monkeypatch.setattr(images, "_heif", True)
    check_image_type("image/heif")
    with pytest.raises(UploadProblem) as listed:
        check_image_type("text/plain")
    assert "image/heic" in str(listed.value)


# ---------------------------------------------------------------------------------------------- hostile uploads
def _pixel_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A valid tiny PNG whose header declares ``width`` x ``height`` pixels (900 MP): it must never be decoded."""
    png = bytearray(_encode(np.zeros((1, 1, 3), np.uint8)))
    ihdr = png.index(b"IHDR")
    png[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    png[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(png[ihdr : ihdr + 17])))
    return bytes(png)


def test_hostile_uploads_are_refused_and_the_next_good_request_is_served(server):
    good = _encode(_face(2))
    hostile = {
        "truncated": (good[: len(good) // 2], "image/png", 400),
        "not an image": (b"<html>hello</html>" * 20, "image/png", 400),
        "empty": (b"", "image/png", 400),
        "a pixel bomb": (_pixel_bomb(), "image/png", 413),
        "over the byte limit": (b"\0" * (3 * 1024 * 1024), "image/png", 413),
        "a wrong content type": (good, "text/plain", 415),
        "no content type": (good, "", 415),
    }
    with server.client() as client:
        for what, (data, kind, status) in hostile.items():
            answer = client.post("/v1/protect", content=data, headers={"Content-Type": kind} if kind else {})
            assert answer.status_code == status, (what, answer.text)
            assert answer.json()["error"] and answer.json()["request_id"], what
            after = client.post("/v1/protect", content=good, headers={"Content-Type": "image/png"})
            assert after.status_code == 200 and np.abs(_rgb(after.content) - _face(2)).max() <= EPS, what
        # a body that streams past the limit without announcing its length is cut off too
        chunks = iter([b"\x89PNG" + b"\0" * (1024 * 1024)] * 3)
        assert client.post("/v1/protect", content=chunks, headers={"Content-Type": "image/png"}).status_code == 413
        bad = [
            client.post("/v1/protect?eps=-1", content=good, headers={"Content-Type": "image/png"}),
            client.post("/v1/protect?protector=nope", content=good, headers={"Content-Type": "image/png"}),
            client.post("/v1/protect?format=gif", content=good, headers={"Content-Type": "image/png"}),
            client.post("/v1/protect", files={"other": ("a.png", good, "image/png")}),
        ]
        assert [a.status_code for a in bad] == [400] * 4, [a.text for a in bad]
        metrics = client.get("/metrics").text
    assert 'decontext_failures_total{reason="too_many_pixels"} 1' in metrics
    assert 'decontext_failures_total{reason="wrong_type"} 2' in metrics
    assert 'decontext_requests_total{status="413"} 3' in metrics


def test_probes_metrics_and_the_openapi_page(server):
    with server.client() as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["protectors"] == ["toy-decontext"]
        client.post("/v1/protect", content=_encode(_face(3)), headers={"Content-Type": "image/png"})
        metrics = client.get("/metrics")
        schema = client.get("/openapi.json").json()
        assert client.get("/docs").status_code == 200
    text = metrics.text
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    for name in (
        "decontext_requests_total",
        "decontext_request_seconds_bucket",
        "decontext_batch_size_bucket",
        "decontext_queue_depth",
        "decontext_failures_total",
    ):
        assert f"# TYPE {name.removesuffix('_bucket')}" in text
    assert 'decontext_request_seconds_bucket{le="+Inf"}' in text
    assert "/v1/protect" in schema["paths"] and "multipart/form-data" in json.dumps(schema["paths"]["/v1/protect"])


# ---------------------------------------------------------------------------------------------- load
def test_a_full_queue_answers_503_with_retry_after_and_the_accepted_ones_are_served(engine):
    gated = Gate(engine)
    gated.open.clear()
    running = _serve(gated, max_batch=1, max_wait_ms=0, max_queue=1)
    face = _encode(_face(4))
    try:
        with running.client() as client, ThreadPoolExecutor(2) as pool:

            def post():
                return client.post("/v1/protect", content=face, headers={"Content-Type": "image/png"})

            first = pool.submit(post)
            _wait(lambda: running.service.batcher.running == 1, 30, "the worker to take the first request")
            second = pool.submit(post)
            _wait(lambda: running.service.batcher.depth == 1, 30, "the second request to queue")
            refused = post()
            assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
            assert "full" in refused.json()["error"]
            gated.open.set()
            assert first.result().status_code == 200 and second.result().status_code == 200
            assert first.result().content == second.result().content
            assert post().status_code == 200  # room again
            assert 'decontext_failures_total{reason="queue_full"} 1' in client.get("/metrics").text
    finally:
        gated.open.set()
        running.stop()


def test_a_request_past_its_deadline_gets_504(engine):
    gated = Gate(engine)
    gated.open.clear()
    running = _serve(gated, max_batch=1, max_wait_ms=0, max_queue=4, timeout=0.5)
    try:
        with running.client() as client:
            late = client.post("/v1/protect", content=_encode(_face(5)), headers={"Content-Type": "image/png"})
            assert late.status_code == 504 and "deadline" in late.json()["error"]
            gated.open.set()
    finally:
        gated.open.set()
        running.stop()


def test_the_api_key_is_required_when_set_and_keep_writes_only_where_asked(engine, tmp_path):
    running = _serve(engine, api_key="k" * 24, keep=str(tmp_path / "kept"))
    face = _encode(_face(6))
    try:
        with running.client() as client:
            assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
            assert client.post("/v1/protect", content=face, headers={"Content-Type": "image/png"}).status_code == 401
            wrong = {"Content-Type": "image/png", "Authorization": "Bearer " + "x" * 24}
            assert client.post("/v1/protect", content=face, headers=wrong).status_code == 401
            assert client.get("/metrics").status_code == 401
            for key in ({"Authorization": "Bearer " + "k" * 24}, {"X-API-Key": "k" * 24}):
                answer = client.post("/v1/protect", content=face, headers={"Content-Type": "image/png", **key})
                assert answer.status_code == 200, answer.text
                request_id = answer.headers["x-decontext-request-id"]
                assert (tmp_path / "kept" / f"{request_id}.upload").read_bytes() == face
                assert (tmp_path / "kept" / f"{request_id}.png").read_bytes() == answer.content
        assert len(list((tmp_path / "kept").iterdir())) == 6  # upload, answer and record of the two served
    finally:
        running.stop()


# ---------------------------------------------------------------------------------------------- the command
def _command(*argv, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "decontext", "serve", *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        **kwargs,
    )


def test_a_non_loopback_bind_needs_a_key_file(tmp_path):
    refused = _command("--host", "0.0.0.0", "--port", str(_free_port()))
    output, _ = refused.communicate(timeout=60)
    assert refused.returncode == 2 and "--api-key-file" in output and "0.0.0.0" in output
    short = tmp_path / "key"
    short.write_text("short\n")
    weak = _command("--host", "0.0.0.0", "--api-key-file", str(short))
    output, _ = weak.communicate(timeout=60)
    assert weak.returncode == 2 and "at least 16 characters" in output


def test_sigterm_answers_the_requests_in_flight_and_exits_0():
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = _command(
        "--port", str(port), "--max-batch", "1", "--measure-draws", "0", "--pgd-steps", "40", "--device", "cpu"
    )
    try:
        with httpx.Client(base_url=url, timeout=120) as client:

            def ready():
                try:
                    return client.get("/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            _wait(ready, 120, "the command to load")
            faces = [_encode(_face(i)) for i in range(3)]
            with ThreadPoolExecutor(len(faces)) as pool:
                answers = [
                    pool.submit(
                        client.post, "/v1/protect?method=fast", content=f, headers={"Content-Type": "image/png"}
                    )
                    for f in faces
                ]
                _wait(lambda: "decontext_in_flight 3" in client.get("/metrics").text, 60, "three requests in flight")
                process.send_signal(signal.SIGTERM)
                results = [a.result() for a in answers]
            assert [r.status_code for r in results] == [200, 200, 200]
            for face, result in zip(faces, results, strict=True):
                assert np.abs(_rgb(result.content) - _rgb(face)).max() <= EPS
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 0, output
        assert "stopped" in output
        assert "<html" not in output and "PNG" not in output  # logs name requests, never their bytes
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
