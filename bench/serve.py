#!/usr/bin/env python
"""Load on ``decontext serve`` over loopback (docs/SERVE.md): images per second and p50/p95/p99 latency at
concurrency 1, 8 and 32, with the toy protector and with fast PGD on the toy, three servers side by side
(batching on: one forward per batch; queue: the default, batches share the queue, each photo computed alone;
off: one photo at a time); then a bounded soak (``--soak`` requests, default 10,000) counting lost and mixed-up
answers while hostile uploads (truncated, not an image, a pixel bomb, a 200 MB body, a wrong type) arrive in between.

Each server is the real command in its own process (``python -m decontext serve``), on 127.0.0.1 only. Every
request is a distinct toy face (one pixel of a held-out face changed per request), so an answer that is not
within the budget of its own upload would be one given to the wrong request; a 503 is retried after its
Retry-After, as a platform's uploader would. Nothing leaves the machine; every loop is bounded.

    python -m bench.serve --json bench/results/serve.json
    python -m bench.serve --pgd-requests 0 --soak 0      # the protector's cells alone (a minute)
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench import save_json

ROOT = Path(__file__).resolve().parents[1]
EPS = 16


def faces(count: int) -> list[bytes]:
    """``count`` distinct PNG uploads: held-out toy faces, each with one pixel set from its index."""
    from decontext.toy import world

    base = [world.render(world.sample_scene(who, seed=i)) for i, who in enumerate(world.eval_identities()[:20])]
    out = []
    for k in range(count):
        face = base[k % len(base)].copy()
        face[k // (64 * len(base)) % 64, (k // len(base)) % 64] = [(k * 37) % 256, (k * 91) % 256, (k * 13) % 256]
        buffer = io.BytesIO()
        Image.fromarray(face).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m decontext serve`` with ``flags`` on a free loopback port, ready when constructed."""

    def __init__(self, flags: list[str]):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "decontext", "serve", "--port", str(self.port), "--log-level", "warning", *flags],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"decontext serve {' '.join(flags)} exited with {self.process.returncode}")
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("decontext serve did not become ready in 180 s")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


async def post(client, uploads: list[bytes], k: int, query: str, retries: list[int]):
    """One upload, retried on 503 after its Retry-After (at most 50 tries); (status, body, seconds)."""
    began = time.perf_counter()
    for _ in range(50):
        answer = await client.post(f"/v1/protect{query}", content=uploads[k], headers={"Content-Type": "image/png"})
        if answer.status_code != 503:
            return answer.status_code, answer.content, time.perf_counter() - began
        retries[0] += 1
        await asyncio.sleep(min(float(answer.headers.get("retry-after", 1)), 0.2))
    return 503, b"", time.perf_counter() - began


async def drive(url: str, uploads: list[bytes], requests: int, concurrency: int, query: str = "") -> dict:
    """``requests`` uploads by ``concurrency`` clients at once; rate, latency percentiles and every answer."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    answers: dict[int, tuple[int, bytes]] = {}
    latencies: list[float] = []
    retries = [0]
    queue = iter(range(requests))

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker():
            for k in queue:
                status, body, seconds = await post(client, uploads, k % len(uploads), query, retries)
                answers[k] = (status, body)
                latencies.append(seconds)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - began
    ok = sum(1 for status, _ in answers.values() if status == 200)
    p50, p95, p99 = (float(np.percentile(latencies, q)) for q in (50, 95, 99))
    return {
        "requests": requests,
        "concurrency": concurrency,
        "ok": ok,
        "retries_503": retries[0],
        "seconds": round(wall, 2),
        "images_per_s": round(ok / wall, 2),
        "p50_ms": round(p50 * 1000, 1),
        "p95_ms": round(p95 * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
        "answers": answers,
    }


def within_budget(upload: bytes, answer: bytes) -> bool:
    source = np.asarray(Image.open(io.BytesIO(upload)).convert("RGB")).astype(int)
    try:
        result = np.asarray(Image.open(io.BytesIO(answer)).convert("RGB")).astype(int)
    except Exception:
        return False
    return result.shape == source.shape and int(np.abs(result - source).max()) <= EPS


def hostile_uploads() -> dict[str, tuple[bytes, str]]:
    good = faces(1)[0]
    bomb = bytearray(good)
    ihdr = bomb.index(b"IHDR")
    import struct
    import zlib

    bomb[ihdr + 4 : ihdr + 12] = struct.pack(">II", 30000, 30000)
    bomb[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(bomb[ihdr : ihdr + 17])))
    return {
        "truncated": (good[: len(good) // 2], "image/png"),
        "not an image": (b"%PDF-1.4 not a photo" * 50, "image/jpeg"),
        "pixel bomb (30000x30000 declared)": (bytes(bomb), "image/png"),
        "200 MB body": (b"\0" * (200 * 1024 * 1024), "image/png"),
        "wrong content type": (good, "application/json"),
    }


async def hostile_during(url: str, rounds: int, stop: asyncio.Event) -> dict[str, list[int]]:
    """Hostile uploads every so often while the soak runs; the statuses each got."""
    import httpx

    seen: dict[str, list[int]] = {}
    uploads = hostile_uploads()
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for r in range(rounds):
            for name, (data, kind) in uploads.items():
                if name.startswith("200 MB") and r % 5:
                    continue  # the large body a few times, not every round
                try:
                    answer = await client.post("/v1/protect", content=data, headers={"Content-Type": kind})
                    status = answer.status_code
                except httpx.TransportError:
                    status = -1  # the server closed the connection before the client finished sending
                seen.setdefault(name, []).append(status)
            if stop.is_set():
                break
            await asyncio.sleep(0.5)
    return seen


async def soak(url: str, count: int, concurrency: int) -> dict:
    uploads = faces(count)
    stop = asyncio.Event()
    hostile = asyncio.ensure_future(hostile_during(url, 10_000, stop))
    result = await drive(url, uploads, count, concurrency)
    stop.set()
    statuses = await hostile
    answers = result.pop("answers")
    lost = [k for k in range(count) if answers.get(k, (0, b""))[0] != 200]
    wrong = [k for k, (status, body) in answers.items() if status == 200 and not within_budget(uploads[k], body)]
    bodies: dict[bytes, int] = {}
    for status, body in answers.values():
        if status == 200:
            bodies[body] = bodies.get(body, 0) + 1
    duplicated = sum(n - 1 for n in bodies.values() if n > 1)  # distinct uploads answered with the same bytes
    # the same upload sent again under load (in other batches) must get the same bytes
    repeats = await drive(url, [uploads[0]], 64, concurrency)
    distinct_repeats = len({body for status, body in repeats.pop("answers").values() if status == 200})
    return {
        **result,
        "lost": len(lost),
        "answered_outside_own_budget": len(wrong),
        "duplicated_answers": duplicated,
        "same_upload_64_times_distinct_answers": distinct_repeats,
        "hostile": {name: sorted(set(s)) for name, s in statuses.items()},
        "hostile_count": sum(len(s) for s in statuses.values()),
        "hostile_all_4xx": all(400 <= x < 500 or x == -1 for s in statuses.values() for x in s),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| mode | batching | concurrency | requests | answered 200 | images/s | p50 ms | p95 ms | p99 ms | p99/p50 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['batching']} | {r['concurrency']} | {r['requests']} | {r['ok']} | "
            f"{r['images_per_s']:.1f} | "
            f"{r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['p99_ms'] / r['p50_ms']:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="client concurrency levels")
    ap.add_argument("--requests", type=int, default=192, help="protector requests per cell (0: none; default 192)")
    ap.add_argument("--pgd-requests", type=int, default=16, help="fast-PGD requests per cell (0: none; default 16)")
    ap.add_argument("--soak", type=int, default=10_000, help="requests of the soak run (0: none; default 10000)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the server (default 2)")
    ap.add_argument("--max-batch", type=int, default=32, help="the batching server's --max-batch (default 32)")
    ap.add_argument("--json", default=None, help="write the record here")
    args = ap.parse_args(argv)

    common = ["--device", "cpu", "--threads", str(args.threads), "--measure-draws", "0", "--max-queue", "256"]
    # on: one forward per batch (--batch-compute); queue: the default engine, a batch shares one trip through the
    # queue but each photo is computed alone (equal bytes whatever the batch); off: one photo per trip.
    servers = {
        "on": [*common, "--max-batch", str(args.max_batch), "--max-wait-ms", "5", "--batch-compute"],
        "queue": [*common, "--max-batch", str(args.max_batch), "--max-wait-ms", "5"],
        "off": [*common, "--max-batch", "1", "--max-wait-ms", "0"],
    }
    rows = []
    uploads = faces(max(args.requests, args.pgd_requests))
    for batching, flags in servers.items():
        server = Server(flags)
        try:
            for mode, query, count in (
                ("toy protector", "", args.requests),
                ("fast PGD", "?method=fast", args.pgd_requests),
            ):
                if count <= 0:
                    continue
                asyncio.run(drive(server.url, uploads, min(8, count), 8, query))  # warm-up
                for concurrency in args.concurrency:
                    result = asyncio.run(drive(server.url, uploads, count, concurrency, query))
                    answers = result.pop("answers")
                    bad = sum(1 for k, (s, b) in answers.items() if s != 200 or not within_budget(uploads[k], b))
                    rows.append({"mode": mode, "batching": batching, **result, "bad": bad})
                    print(
                        f"{mode:14s} batching {batching:5s} c={concurrency:2d}: "
                        f"{result['images_per_s']:7.1f} images/s, "
                        f"p50 {result['p50_ms']:.0f} p95 {result['p95_ms']:.0f} p99 {result['p99_ms']:.0f} ms, "
                        f"bad {bad}",
                        flush=True,
                    )
        finally:
            code = server.stop()
            print(f"server (batching {batching}) stopped with exit code {code}", flush=True)
    order = list(servers)
    rows.sort(key=lambda r: (r["mode"] != "toy protector", r["concurrency"], order.index(r["batching"])))
    print("\n" + table(rows))
    record: dict = {"rows": rows, "cpu": os.cpu_count(), "flags": servers}
    if args.soak:
        server = Server(servers["on"])
        try:
            began = time.perf_counter()
            record["soak"] = asyncio.run(soak(server.url, args.soak, 32))
            record["soak"]["wall_s"] = round(time.perf_counter() - began, 1)
        finally:
            record["soak_exit_code"] = server.stop()
        print("\nsoak:", {k: v for k, v in record["soak"].items()}, "exit code", record["soak_exit_code"])
    save_json(args.json, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
