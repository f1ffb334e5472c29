#!/usr/bin/env python
"""What an amortized protector costs on a model, per --architecture (several side by side, in one run): one
training step (the protector's forward, the method's loss through the editor, backward, Adam) at --size with
--batch-size images, the protector's inference on one --infer-size photo (run at the editor's working size for
it, perturbation resized back) and its bare forward on one --face-size face. Median of --repeats after one
warm-up, the architectures' repeats interleaved (the order rotates every repeat); peak GPU memory of each row on
CUDA. The last line gives each architecture's times as ratios to the first one's.

    python -m bench.protector_step --preset-model flux --device cuda --dtype bfloat16 --size 512 --checkpointing
    python -m bench.protector_step                      # tiny model on the CPU (a check that it runs)
    python -m bench.protector_step --architecture conv fold4 small   # side by side
    python -m bench.protector_step --method edit_away --sample-steps 4   # the through-the-edit objective
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
from decontext.methods.protector import ARCHITECTURES, Protector, protected_start


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
    ap.add_argument("--face-size", type=int, default=64, help="the face of the bare forward row (square, batch 1)")
    ap.add_argument(
        "--architecture",
        nargs="+",
        choices=list(ARCHITECTURES),
        default=["conv"],
        help="protector architectures to time side by side (default conv: what `decontext amortize` trains above "
        "256 px); ratios are to the first",
    )
    ap.add_argument(
        "--method",
        default="decontext",
        choices=["decontext", "edit_away"],
        help="the objective of the training step: decontext (the attention share) or edit_away (through the "
        "editor's own few-step sampler, each step checkpointed)",
    )
    ap.add_argument("--sample-steps", type=int, default=4, help="edit_away: sampler steps backpropagated through")
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
    prompts = ["make the person smile", "add a hat", "turn the hair blue"]
    extra = {"sample_steps": args.sample_steps} if args.method == "edit_away" else {}
    method = build_method(args.method, prompts=prompts, **extra)
    size = (args.size, args.size)
    x0 = torch.rand(args.batch_size, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)
    photo = torch.rand(1, 3, args.infer_size, args.infer_size, generator=torch.Generator().manual_seed(1)).to(device)
    face = torch.rand(1, 3, args.face_size, args.face_size, generator=torch.Generator().manual_seed(2)).to(device)
    names = list(dict.fromkeys(args.architecture))
    protectors, optimizers = {}, {}
    for name in names:
        torch.manual_seed(0)
        protectors[name] = Protector(ARCHITECTURES[name], eps=12.75).to(device)
        optimizers[name] = torch.optim.Adam(protectors[name].parameters(), lr=3e-4)

    def train_step(name: str, step: int) -> None:
        protector = protectors[name]
        method.start(editor, x0, size)
        x = (x0 + protector(x0)).clamp(0, 1)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda and args.dtype == "bfloat16"):
            value = objective(method, editor, x, size, step, _generators(0, step, args.batch_size))
        optimizers[name].zero_grad(set_to_none=True)
        (-value).backward()
        optimizers[name].step()

    def face_forward(name: str, step: int) -> None:
        with torch.no_grad():
            protectors[name](face)

    tasks = (
        ("train_step", train_step),
        ("inference", lambda name, step: protected_start(protectors[name], editor, photo, "auto")),
        ("face", face_forward),
    )
    rows = {
        name: {
            "parameters": protectors[name].parameters_count(),
            "mb_float32": sum(p.numel() * p.element_size() for p in protectors[name].parameters()) / 1e6,
        }
        for name in names
    }
    with method.session(editor):
        for row, fn in tasks:
            times = {name: [] for name in names}
            peaks = dict.fromkeys(names, 0.0)
            for name in names:
                fn(name, 0)  # warm-up
            sync()
            for step in range(1, args.repeats + 1):
                shift = (step - 1) % len(names)
                for name in names[shift:] + names[:shift]:
                    if cuda:
                        torch.cuda.reset_peak_memory_stats()
                    began = time.perf_counter()
                    fn(name, step)
                    sync()
                    times[name].append(time.perf_counter() - began)
                    if cuda:
                        peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated() / 2**30)
            for name in names:
                rows[name][row] = {
                    "median_s": statistics.median(times[name]),
                    "times_s": times[name],
                    "peak_gb": peaks[name] if cuda else None,
                }
                print(
                    f"{name} {row}: {rows[name][row]['median_s']:.4f} s (median of {args.repeats}; "
                    f"min {min(times[name]):.4f}, max {max(times[name]):.4f})"
                    + (f", peak {peaks[name]:.1f} GB" if cuda else ""),
                    flush=True,
                )
    for name in names:
        r = rows[name]
        r["hours_30k_steps"] = r["train_step"]["median_s"] * 30000 / 3600
        print(
            f"{name} ({r['parameters'] / 1e6:.2f} M parameters, {r['mb_float32']:.1f} MB float32) "
            f"{args.method} on {args.preset} at {args.size} px, batch {args.batch_size}: "
            f"a training step {r['train_step']['median_s']:.3f} s (30,000 steps ~{r['hours_30k_steps']:.1f} h); "
            f"one {args.infer_size} px photo {1000 * r['inference']['median_s']:.1f} ms; "
            f"one {args.face_size} px face {1000 * r['face']['median_s']:.1f} ms"
        )
    first = names[0]
    ratios = {
        name: {row: rows[name][row]["median_s"] / rows[first][row]["median_s"] for row, _ in tasks}
        for name in names[1:]
    }
    for name, ratio in ratios.items():
        print(f"ratios {name}/{first} " + " ".join(f"{row}={value:.3f}" for row, value in ratio.items()))
    out = {"args": vars(args), "architectures": rows, "ratios": ratios}
    save_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
