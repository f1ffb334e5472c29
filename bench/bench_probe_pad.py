#!/usr/bin/env python
"""One layer's attention, forward + backward: a plain SDPA call vs the fused probe
(``attention_with_share``) at several padding widths, interleaved, medians.

    python -m bench.bench_probe_pad                       # S = 128 + 4096 + 4096, 4 heads x 64 (1024 px tiny)
    python -m bench.bench_probe_pad --heads 24 --head-dim 128 --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from decontext.attention import attention_with_share
from decontext.editors.base import Layout


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", type=int, default=128)
    parser.add_argument("--target", type=int, default=4096)
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--pads", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)
    layout = Layout(args.text, args.target, args.context)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    g = torch.Generator().manual_seed(0)
    base = [torch.randn(1, layout.total, args.heads, args.head_dim, generator=g).to(device, dtype) for _ in range(3)]

    def step(pad):
        q, k, v = (x.clone().requires_grad_(True) for x in base)
        if device.type == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        if pad is None:
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            loss = out.float().square().mean()
        else:
            out, share = attention_with_share(q, k, v, layout, pad=pad)
            loss = out.float().square().mean() + share.float().mean()
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - began

    variants = [None, *args.pads]
    for v in variants:  # warm-up
        step(v)
    times = {v: [] for v in variants}
    for _ in range(args.repeats):
        for v in variants:
            times[v].append(step(v))
    print(f"S={layout.total} heads={args.heads}x{args.head_dim} device={device} dtype={args.dtype}")
    plain = statistics.median(times[None])
    for v in variants:
        m = statistics.median(times[v])
        print(f"{'plain' if v is None else f'fused pad {v}':<14}{m:8.3f} s  x{m / plain:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
