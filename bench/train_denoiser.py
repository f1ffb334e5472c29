#!/usr/bin/env python
"""Train the regeneration attacker's denoiser of a toy world (``decontext.attackers``, ``regen``).

A small U-Net learns to predict a clean toy render from x_t = (1 - t) x + t e, t uniform in [0, 1), on
renders of the world's TRAINING identities only (the held-out identities are the benchmark's judge set;
``training_scenes`` refuses them). The target is the clean render itself: no reader, no identity model.
Seeded and reproducible; a few minutes on a 2-core CPU. Writes
``data/attackers/toy_denoiser_<world>.safetensors`` (float16) and a ``.json`` beside it naming this command.

    python -m bench.train_denoiser --world v1
    python -m bench.train_denoiser --world v3 --steps 3000 --images 2000 --seed 0
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from decontext.attackers import DENOISERS, save_net, train_denoiser
from decontext.toy.worlds import get_world


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default="v1", choices=sorted(DENOISERS))
    ap.add_argument("--images", type=int, default=2000, help="training renders")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.003)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-t", type=float, default=0.5, help="noise levels drawn in [0, max_t)")
    ap.add_argument("--out", type=Path, default=None, help="default: data/<the shipped path>.safetensors")
    args = ap.parse_args(argv)
    began = time.perf_counter()
    state = train_denoiser(get_world(args.world), args.images, args.steps, args.width, args.lr, args.seed, args.max_t)
    state.info["seconds"] = round(time.perf_counter() - began, 1)
    state.info["command"] = "python -m bench.train_denoiser " + shlex.join(
        ["--world", args.world, "--images", str(args.images), "--steps", str(args.steps), "--width", str(args.width)]
        + ["--lr", str(args.lr), "--seed", str(args.seed), "--max-t", str(args.max_t)]
    )
    out = args.out or Path("data") / (DENOISERS[args.world] + ".safetensors")
    save_net(state, out)
    print(f"{out}: final loss {state.info['final_loss']:.5f}, {state.info['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
