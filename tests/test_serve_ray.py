"""decontext serve --ray on a local Ray with two replicas and the shipped toy protector: one replica's process is
SIGKILLed under load; the client retries on 503 and on connection errors, and every request still gets 200,
within budget, equal uploads get equal bytes (nothing answered twice with different bytes), Serve replaces the
replica, and SIGTERM takes the deployment down with exit 0."""

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("ray.serve")

ROOT = Path(__file__).resolve().parents[1]
EPS = 16  # the toy protector's budget
DISTINCT = 24  # uploads; each is sent twice
CONCURRENCY = 8
KILL_AFTER = 12  # answers before the kill: the load is well under way, most of it still to come


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _face(index: int) -> np.ndarray:
    from decontext.toy import world

    identities = world.eval_identities()
    return world.render(world.sample_scene(identities[index % len(identities)], seed=500 + index))


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def _replica_pids(session: int) -> list[int]:
    """The replica actors' processes of the Ray this test started (its session only: other Rays are not ours)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "ServeReplica:decontext" in command and os.getsid(int(entry.name)) == session:
                pids.append(int(entry.name))
        except OSError:
            continue
    return sorted(pids)


def _wait(predicate, timeout: float, what: str, process=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the server exited ({process.returncode}) while waiting for {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_two_replicas_survive_a_killed_replica_under_load(tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "decontext", "serve", "--ray", "--replicas", "2", "--port", str(port)]
    command += ["--device", "cpu", "--threads", "1", "--measure-draws", "1", "--max-batch", "4", "--max-wait-ms", "5"]
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen(
        command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ}
    )
    tail = lambda: (tmp_path / "server.log").read_text(errors="replace")[-4000:]  # noqa: E731
    try:
        _wait(lambda: _ready(url), 120, "readiness", server)
        _wait(lambda: len(_replica_pids(server.pid)) == 2, 30, "two replica processes", server)
        before = _replica_pids(server.pid)

        faces = [_face(i) for i in range(DISTINCT)]
        uploads = [_png(face) for face in faces]
        order = [i for i in range(DISTINCT) for _ in range(2)]
        answered = []
        retries = {"503": 0, "connection": 0}
        lock = threading.Lock()

        def protect(i: int) -> tuple[int, bytes]:
            with httpx.Client(base_url=url, timeout=60) as client:
                for _ in range(60):
                    try:
                        answer = client.post("/v1/protect", content=uploads[i], headers={"Content-Type": "image/png"})
                    except httpx.TransportError:
                        with lock:
                            retries["connection"] += 1
                        time.sleep(0.5)
                        continue
                    if answer.status_code == 503:
                        with lock:
                            retries["503"] += 1
                        time.sleep(float(answer.headers.get("Retry-After", 1)))
                        continue
                    assert answer.status_code == 200, (answer.status_code, answer.text[:500])
                    with lock:
                        answered.append(i)
                    return i, answer.content
            raise AssertionError(f"upload {i} was never answered")

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            futures = [pool.submit(protect, i) for i in order]
            _wait(lambda: len(answered) >= KILL_AFTER, 120, f"{KILL_AFTER} answers", server)
            killed = before[0]
            os.kill(killed, signal.SIGKILL)
            results = [f.result(timeout=180) for f in futures]
        print(f"retries after the kill: {retries}")

        by_upload: dict[int, set[bytes]] = {}
        for i, data in results:
            by_upload.setdefault(i, set()).add(data)
            got = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
            diff = np.abs(got - faces[i].astype(int))
            assert got.shape == faces[i].shape and 0 < diff.max() <= EPS
        assert sorted(by_upload) == list(range(DISTINCT)) and len(results) == 2 * DISTINCT
        assert all(len(answers) == 1 for answers in by_upload.values()), "an upload got two different answers"
        assert len({next(iter(a)) for a in by_upload.values()}) == DISTINCT  # no answer given to another upload

        # Serve replaced the killed replica
        _wait(
            lambda: len(_replica_pids(server.pid)) == 2 and killed not in _replica_pids(server.pid),
            60,
            "a new replica",
            server,
        )

        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0, tail()
        assert not _replica_pids(server.pid)
    finally:
        try:
            os.killpg(server.pid, signal.SIGKILL)  # whatever of the Ray this test started is still there
        except ProcessLookupError:
            pass
        server.wait()
        log.close()


def test_a_request_lost_with_its_replica_is_answered_503_and_the_apps_own_answers_pass():
    import asyncio

    from decontext.serve.ray_app import RetryableLoss

    async def lost(scope, receive, send):  # Ray's proxy when the replica died: nothing sent
        return None

    async def raised(scope, receive, send):
        raise RuntimeError("the actor died")

    async def proxy_500(scope, receive, send):
        await send({"type": "http.response.start", "status": 500, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"Internal Server Error"})

    async def ours_500(scope, receive, send):
        headers = [(b"x-decontext-request-id", b"abc"), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 500, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"error": "the protection failed"}'})

    def answer(app):
        sent = []

        async def send(message):
            sent.append(message)

        asyncio.run(RetryableLoss(app)({"type": "http"}, None, send))
        return sent

    for app in (lost, raised, proxy_500):
        sent = answer(app)
        assert sent[0]["status"] == 503 and (b"retry-after", b"1") in sent[0]["headers"] and len(sent) == 2
    sent = answer(ours_500)
    assert sent[0]["status"] == 500 and sent[1]["body"] == b'{"error": "the protection failed"}'
