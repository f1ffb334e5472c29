#!/usr/bin/env python
"""Seconds per photo of each method's protection, exactly as the benchmark protects it
(``decontext.benchmark.cells.ToyEnvironment.protect``: the spec's preset and budget, the library's
``protect()``, the 8-bit save), one photo per call (a protector's worst case: no batching), on the first
--photos held-out identities of the spec's first editor. The methods take turns photo by photo (the order
rotating), so a slow spell of this shared machine hits them alike; each method's median over the photos is
reported, and the last line gives every median as a ratio to the first method's.

    python -m bench.protect_speed bench/pilot/decoy_diffusion.toml \
        --methods diffusion:decoys=toy-train protector:toy-decoy-edit --photos 8
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench import save_json
from decontext.cli.common import quiet_libraries


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", help="a benchmark spec (shipped name or .toml) on a toy editor")
    ap.add_argument("--methods", nargs="+", required=True, help="method names as a spec writes them")
    ap.add_argument("--photos", type=int, default=8, help="held-out photos, each protected once by every method")
    ap.add_argument("--budget", type=float, default=None, help="1/255 units (default: the spec's first budget)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.photos < 1:
        ap.error("--photos must be >= 1")
    quiet_libraries()
    from decontext.benchmark.cells import Cache, ToyEnvironment
    from decontext.benchmark.spec import load_spec

    spec = load_spec(args.spec)
    budget = float(args.budget if args.budget is not None else spec.budgets[0])
    with tempfile.TemporaryDirectory() as scratch:
        env = ToyEnvironment(spec, spec.editors[0], Cache(Path(scratch)), log=lambda *_: None)
        if args.photos > len(env.sources):
            ap.error(f"--photos {args.photos}: the spec has {len(env.sources)} identities")
        for name in args.methods:  # build each method (its protector or decoys loaded) outside the timing
            env.protect(name, budget, env.sources[:1], spec.seed)
        seconds: dict[str, list[float]] = {name: [] for name in args.methods}
        for i in range(args.photos):
            shift = i % len(args.methods)
            for name in args.methods[shift:] + args.methods[:shift]:
                began = time.perf_counter()
                env.protect(name, budget, env.sources[i : i + 1], spec.seed + i)
                seconds[name].append(time.perf_counter() - began)
                print(f"photo {i}: {name}: {seconds[name][-1]:.3f} s", flush=True)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    first = args.methods[0]
    for name, value in medians.items():
        print(f"{name}: median {value * 1000:.1f} ms a photo ({args.photos} photos)")
    print("ratio to " + first + ": " + ", ".join(f"{n} {medians[first] / v:.0f}x faster" for n, v in medians.items()))
    record = {
        "spec": args.spec,
        "editor": spec.editors[0],
        "budget": budget,
        "photos": args.photos,
        "seconds": seconds,
        "median_seconds": medians,
        "speedup_over_first": {n: medians[first] / v for n, v in medians.items()},
    }
    save_json(args.json, record)
    return record


if __name__ == "__main__":
    main()
