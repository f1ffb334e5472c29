#!/usr/bin/env python
"""Throughput of ``decontext cluster`` (Ray Data, local Ray) against the single-process CLI on the same toy
faces, side by side in one run (docs/PERFORMANCE.md, "Cluster job").

Three runs into fresh output folders, each a whole process as a user starts it (start-up included):
``decontext attack`` (one process), ``decontext cluster --actors 1`` and ``--actors N``. Per run: wall
seconds and images per second; the per-image overhead Ray adds is (cluster with 1 actor - CLI) / images,
start-up of the local Ray included (its fixed part is also shown: the cluster's wall time minus its own
steady rate over the images).

    python -m bench.cluster --images 500 --actors 2 --json runs/cluster/bench.json
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import save_json

ROOT = Path(__file__).resolve().parents[1]


def make_faces(folder: Path, count: int) -> None:
    from PIL import Image

    from decontext.toy import world

    folder.mkdir(parents=True, exist_ok=True)
    identities = world.train_identities() + world.eval_identities()
    for i in range(count):
        Image.fromarray(world.render(world.sample_scene(identities[i % len(identities)], seed=1000 + i))).save(
            folder / f"face{i:04d}.png"
        )


def timed(command: list[str]) -> tuple[float, str]:
    began = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    return seconds, done.stdout + done.stderr


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--protector", default="toy-decontext", help="the method: this trained protector (amortized)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    faces = work / "faces"
    make_faces(faces, args.images)
    common = [
        "--model",
        "toy",
        "--method",
        "amortized",
        "--protector",
        args.protector,
        "--measure-draws",
        "0",
        "--seed",
        "7",
        "--input",
        str(faces),
        "--no-progress",
    ]
    python = [sys.executable, "-m", "decontext"]
    runs = {}
    try:
        for name, command in (
            ("CLI (one process)", [*python, "attack", *common, "--output", str(work / "cli")]),
            ("cluster, 1 actor", [*python, "cluster", *common, "--output", str(work / "c1"), "--actors", "1"]),
            (
                f"cluster, {args.actors} actors",
                [*python, "cluster", *common, "--output", str(work / "cn"), "--actors", str(args.actors)],
            ),
        ):
            seconds, text = timed(command)
            inner = re.search(r"in (\d+(?:\.\d+)?) s \(", text)
            runs[name] = {
                "seconds": seconds,
                "images_per_s": args.images / seconds,
                "reported_s": float(inner.group(1)) if inner else None,
            }
            print(f"{name}: {seconds:.1f} s, {args.images / seconds:.2f} images/s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cli, one = runs["CLI (one process)"], runs["cluster, 1 actor"]
    overhead_ms = 1000 * (one["seconds"] - cli["seconds"]) / args.images
    lines = [
        f"{args.images} toy faces, protector {args.protector} (one forward per face), local Ray, this machine; "
        "whole processes, start-up included",
        "",
        "| run | wall s | images/s |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {r['seconds']:.1f} | {r['images_per_s']:.2f} |" for name, r in runs.items()]
    lines += [
        "",
        f"Ray's overhead per image (cluster with 1 actor - CLI, over {args.images} images, start-up included): "
        f"{overhead_ms:+.1f} ms",
    ]
    print("\n".join(lines))
    out = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "runs": runs,
        "overhead_ms_per_image": overhead_ms,
        "table": lines,
    }
    save_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
