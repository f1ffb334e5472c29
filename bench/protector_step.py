#!/usr/bin/env python
"""What an amortized protector costs on a model: one training step (the protector's forward, the method's
loss through the editor, backward, Adam) at --size with --batch-size images, and the protector's
inference on one --infer-size photo (run at the editor's working size for it, perturbation resized back).
Median of --repeats after one warm-up; peak GPU memory of the training step on CUDA.

    python -m bench.protector_step --preset-model flux --device cuda --dtype bfloat16 --size 512 --checkpointing
    python -m bench.protector_step                      # tiny model on the CPU (a check that it runs)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench import save_json
from bench.bench_step import build_editor
from decontext.amortize import _generators, objective
from decontext.cli.common import avoid_cudnn_attention, quiet_libraries
from decontext.methods import build_method
from decontext.methods.amortized import CONV_ARCHITECTURE, Protector, protected_start


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--preset-model",
        dest="preset",
        choices=["tiny", "flux"],
        default="tiny",
        help="tiny, or flux: the real architecture, random weights",
    )
    ap.add_argument("--size", type=int, default=512, help="training size (square)")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--infer-size", type=int, default=1024, help="the photo the protector is applied to (square)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
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
    editor = build_editor(build)
    device = editor.device
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    method = build_method("decontext", prompts=["make the person smile", "add a hat", "turn the hair blue"])
    protector = Protector(CONV_ARCHITECTURE, eps=12.75).to(device)  # what `decontext amortize` trains above 256 px
    optimizer = torch.optim.Adam(protector.parameters(), lr=3e-4)
    size = (args.size, args.size)
    x0 = torch.rand(args.batch_size, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)

    def train_step(step: int) -> None:
        method.start(editor, x0, size)
        x = (x0 + protector(x0)).clamp(0, 1)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda and args.dtype == "bfloat16"):
            value = objective(method, editor, x, size, step, _generators(0, step, args.batch_size))
        optimizer.zero_grad(set_to_none=True)
        (-value).backward()
        optimizer.step()

    photo = torch.rand(1, 3, args.infer_size, args.infer_size, generator=torch.Generator().manual_seed(1)).to(device)
    rows = {}
    with method.session(editor):
        for name, fn in (
            ("train_step", train_step),
            ("inference", lambda step: protected_start(protector, editor, photo, "auto")),
        ):
            fn(0)  # warm-up
            sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            times = []
            for step in range(1, args.repeats + 1):
                began = time.perf_counter()
                fn(step)
                sync()
                times.append(time.perf_counter() - began)
            rows[name] = {
                "median_s": statistics.median(times),
                "times_s": times,
                "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            }
            print(
                f"{name}: {rows[name]['median_s']:.4f} s (median of {args.repeats})"
                + (f", peak {rows[name]['peak_gb']:.1f} GB" if cuda else ""),
                flush=True,
            )
    steps_30k = rows["train_step"]["median_s"] * 30000 / 3600
    print(
        f"protector on {args.preset} at {args.size} px, batch {args.batch_size}: "
        f"a training step {rows['train_step']['median_s']:.3f} s "
        f"(30,000 steps ~{steps_30k:.1f} h); "
        f"one {args.infer_size} px photo {1000 * rows['inference']['median_s']:.1f} ms"
    )
    out = {"args": vars(args), "rows": rows, "hours_30k_steps": steps_30k}
    save_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
