#!/usr/bin/env python
"""One photo protected end to end, as a user runs it: the editor built (the real FLUX.1-Kontext shapes with
random weights on a GPU, or the tiny model), one face photo protected through ``protect_files`` (load,
PGD, 8-bit save within the budget, manifest) with the fast preset and with the paper preset.

The paper preset's 800 steps at 1024 px take ~13.5 min of an H100, more than a lent GPU's budget, so it is
run for ``--paper-steps`` steps and its full time is reported as measured fixed costs + 800 x the measured
seconds per step (labelled "extrapolated"); the fast preset runs to its end (or its stopping rule).

    python -m bench.photo --preset-model flux --device cuda --dtype bfloat16 --size 1024
    python -m bench.photo --size 256                     # the CPU tiny model, to try it
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.bench_step import build_editor
from bench.steps import FACES
from decontext.cli.common import avoid_cudnn_attention, quiet_libraries
from decontext.config import PGDConfig, ProtectConfig
from decontext.methods import build_method
from decontext.protect import protect_files


def photo(folder: Path, size: int) -> Path:
    """A face photo at ``size`` x ``size`` (the first shared face, else a synthetic picture)."""
    faces = sorted(FACES.glob("*.jpg")) if FACES.is_dir() else []
    image = (
        Image.open(faces[0]).convert("RGB")
        if faces
        else Image.fromarray(np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8))
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "face.png"
    image.resize((size, size), Image.BICUBIC).save(path)
    return path


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--preset-model",
        dest="preset",
        choices=["tiny", "flux"],
        default="tiny",
        help="tiny, or flux: the real architecture, random weights",
    )
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile every block (--compile)")
    ap.add_argument(
        "--paper-steps", type=int, default=40, help="steps of the paper preset actually run (the rest extrapolated)"
    )
    ap.add_argument("--fast-steps", type=int, default=None, help="the fast preset's steps (default: the preset's)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    quiet_libraries()
    avoid_cudnn_attention()
    build = argparse.Namespace(
        family="flux_kontext",
        preset=args.preset,
        size=args.size,
        text_tokens=128,
        hidden=256,
        heads=4,
        double=2,
        single=4,
        vae_channels=[8, 8, 16, 16],
        dtype=args.dtype,
        device=args.device,
        quantize=None,
        checkpointing=args.checkpointing,
    )
    began = time.perf_counter()
    editor = build_editor(build)
    if args.compile:
        editor.compile_blocks()
    built = time.perf_counter() - began
    sync = torch.cuda.synchronize if editor.device.type == "cuda" else (lambda: None)
    rows = {"build_s": built}
    with tempfile.TemporaryDirectory(prefix="bench_photo_") as scratch:
        source = photo(Path(scratch) / "in", args.size)
        for preset, steps in (("fast", args.fast_steps), ("paper", args.paper_steps)):
            method = build_method("decontext", prompts=["make the person smile", "add a hat", "turn the hair blue"])
            pgd = PGDConfig.for_method(method, preset=preset, steps=steps)
            out = Path(scratch) / preset
            sync()
            t0 = time.perf_counter()
            protect_files(
                editor,
                method,
                source,
                out,
                ProtectConfig(pgd=pgd, resolution="native", measure_draws=0),
                seed=0,
                log=lambda *a, **k: None,
                progress=False,
            )
            sync()
            wall = time.perf_counter() - t0
            entry = json.loads((out / "manifest.json").read_text())["images"]["face.png"]
            per_step = entry["seconds"] / max(entry["steps_run"], 1)
            row = {
                "steps_run": entry["steps_run"],
                "stop_reason": entry["stop_reason"],
                "protect_s": entry["seconds"],
                "wall_s": wall,
                "per_step_s": per_step,
                "fixed_s": wall - entry["seconds"],
            }
            if preset == "paper":
                full = 800
                row["extrapolated_800_s"] = row["fixed_s"] + entry["seconds"] + (full - entry["steps_run"]) * per_step
            rows[preset] = row
            print(
                f"{preset}: {entry['steps_run']} steps ({entry['stop_reason']}), "
                f"protect {entry['seconds']:.1f} s ({per_step:.3f} s/step), "
                f"load+save+manifest {row['fixed_s']:.1f} s, wall {wall:.1f} s"
                + (f"; 800 steps extrapolated: {row['extrapolated_800_s']:.0f} s" if preset == "paper" else ""),
                flush=True,
            )
    fast, paper = rows["fast"], rows["paper"]
    print(
        f"photo {args.size}px on {editor.device} ({args.preset}): build {built:.0f} s; "
        f"fast preset {fast['wall_s']:.1f} s end to end, "
        f"paper preset ~{paper['extrapolated_800_s']:.0f} s (extrapolated): "
        f"{fast['wall_s'] / paper['extrapolated_800_s']:.3f}x"
    )
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
