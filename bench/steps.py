#!/usr/bin/env python
"""Fewer PGD steps for the same protection: the method's own measure (DeContext: the context share) and,
on a toy, the toy identity of edits, against the step count, for the official rule and for other update
rules at small step budgets.

The official rule (sign steps of a constant alpha) is run once for the longest budget with snapshots at
every count (a constant step makes the first k steps of a long run a k-step run). Every other rule
depends on its budget (decaying schedules), so it runs once per budget. For each rule, the table says
which budget first reaches what the official rule reaches at its longest run.

    python -m bench.steps --model toy --identities 20               # identity + share, the toy
    python -m bench.steps --model tiny --size 256 --identities 2     # share only, random-weight FLUX architecture
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


from bench import effect
from decontext.cli.common import quiet_libraries
from decontext.images import quantize, uint8_to_tensor
from decontext.config import PGDConfig, ProtectConfig
from decontext.protect import protect

RULES = {  # name -> PGDConfig changes (alpha: the official's unless given as a multiple)
    "sign+linear": {"schedule": "linear"},
    "sign+cosine": {"schedule": "cosine"},
    "momentum+cosine": {"momentum": 0.9, "schedule": "cosine"},
    "adam+cosine": {"update": "adam", "schedule": "cosine"},
    "adam+cosine x2": {"update": "adam", "schedule": "cosine", "alpha_scale": 2.0},
}


def sources_for(args, editor):
    if args.model == "tiny":
        rng = np.random.default_rng(args.seed)
        base = np.linspace(40, 215, args.size, dtype=np.float32)
        images = []
        for _ in range(args.identities):
            img = base[None, :, None] * np.ones((args.size, 1, 3)) + rng.normal(0, 20, (args.size, args.size, 3))
            images.append(np.clip(img, 0, 255).astype(np.uint8))
        return np.stack(images)
    from decontext.toy import world

    identities = world.eval_identities()[: args.identities]
    return np.stack([world.render(world.sample_scene(identity, seed=args.seed + i)) for i, identity in enumerate(identities)])


def run_rule(editor, method, sources, config: PGDConfig, snapshots, seed: int, size) -> dict[int, np.ndarray]:
    """uint8 protected images after each snapshot step count."""
    x0 = torch.cat([uint8_to_tensor(im) for im in sources])
    result = protect(editor, method, x0, ProtectConfig(pgd=config, resolution="native", measure_draws=0), seed=seed, snapshots=snapshots)
    return {k: np.stack([quantize(v[i : i + 1], sources[i], config.eps) for i in range(len(sources))]) for k, v in result.snapshots.items()}


def measure(editor, method, images: np.ndarray, size, draws: int) -> float:
    x = torch.cat([uint8_to_tensor(im) for im in images])
    with method.session(editor):
        values = method.measure(editor, x, size, draws)
    return float(next(iter(values.values()))) if values else float("nan")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toy", help="a toy (identity and share) or 'tiny' (share only)")
    ap.add_argument("--method", default="decontext", choices=[v for v in effect.VARIANTS if v != "noise"])
    ap.add_argument("--identities", type=int, default=20)
    ap.add_argument("--size", type=int, default=256, help="tiny: image side in pixels")
    ap.add_argument("--eps", type=float, default=12.75, help="budget (default the paper's 12.75/255)")
    ap.add_argument("--alpha", type=float, default=0.6375, help="the official step (default the paper's 0.6375/255)")
    ap.add_argument("--official-steps", type=int, default=800)
    ap.add_argument("--budgets", type=int, nargs="+", default=[50, 100, 200])
    ap.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    ap.add_argument("--draws", type=int, default=8, help="fixed draws of the method's measure")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    quiet_libraries()
    torch.manual_seed(0)
    from decontext.editors import load_editor
    from decontext.prompts import load_prompts
    from decontext.toy.names import is_toy_model, toy_family

    toy = is_toy_model(args.model)
    editor = load_editor(args.model, toy_family(args.model) if toy else "flux_kontext", "cpu", "float32")
    if toy:
        from decontext.toy.model import PROMPTS_FILE
        from decontext.toy.reader import ToyReader, edit_name

        pool = load_prompts(PROMPTS_FILE)
        reader = ToyReader.load()
        edit_prompts = [pool[i].text for i in effect.EDIT_PROMPT_INDICES]
        names = [edit_name(pool[i].category) for i in effect.EDIT_PROMPT_INDICES]
        settings = {"steps": int(editor.recommended["num_inference_steps"]), "guidance": float(editor.recommended["guidance_scale"])}
    else:
        pool = load_prompts()
        edit_prompts = []
    attack_prompts = [p.text for p in pool]
    editor.prepare(attack_prompts + edit_prompts, release=False)
    sources = sources_for(args, editor)
    size = sources.shape[1:3]
    method = effect.build(args.method, attack_prompts)
    official = PGDConfig.for_method(method, eps=args.eps, alpha=args.alpha, steps=args.official_steps)
    began = time.perf_counter()

    def identity(images):
        if not toy:
            return float("nan")
        edits = effect.edit_all(editor, images, edit_prompts, args.seed, settings, 50)
        return float(effect.score(reader, sources, edits, names)["toy_identity"].mean())

    rows = {}
    counts = sorted({0, *args.budgets, args.official_steps})
    start = time.perf_counter()
    snaps = run_rule(editor, method, sources, official, counts, args.seed, size)
    official_seconds = time.perf_counter() - start
    for k in counts:
        rows[("official", k)] = {"share": measure(editor, method, snaps[k], size, args.draws), "toy_identity": identity(snaps[k]),
                                 "seconds": official_seconds * k / args.official_steps}
        print(f"official {k:4d} steps: share {rows[('official', k)]['share']:.4f}, identity {rows[('official', k)]['toy_identity']:.3f}", flush=True)
    for rule in args.rules:
        changes = dict(RULES[rule])
        scale = changes.pop("alpha_scale", 1.0)
        for budget in args.budgets:
            config = official.replace(steps=budget, alpha=args.alpha * scale, **changes)
            start = time.perf_counter()
            snap = run_rule(editor, method, sources, config, [budget], args.seed, size)[budget]
            rows[(rule, budget)] = {"share": measure(editor, method, snap, size, args.draws), "toy_identity": identity(snap), "seconds": time.perf_counter() - start}
            print(f"{rule} {budget:4d} steps: share {rows[(rule, budget)]['share']:.4f}, identity {rows[(rule, budget)]['toy_identity']:.3f}", flush=True)

    target = rows[("official", args.official_steps)]
    lines = [f"{args.model}, {len(sources)} images, {args.method} at {args.eps:g}/255, official rule: sign steps of {args.alpha:g}/255 "
             f"(other rules start at that step, x2 where named); share = the method's measure over {args.draws} fixed draws (lower = better)"
             + ("; toy identity of the six toy edits (lower = better)" if toy else ""), "",
             "| rule | " + " | ".join(f"{b} steps" for b in args.budgets) + f" | reaches official@{args.official_steps} at |", "|---|" + "---|" * (len(args.budgets) + 1)]
    def cell(r):
        return f"{r['share']:.4f}" + (f" / {r['toy_identity']:.3f}" if toy else "")
    def reached(rule):
        for b in args.budgets:
            r = rows[(rule, b)]
            if r["share"] <= target["share"] and (not toy or r["toy_identity"] <= target["toy_identity"] + 1e-9):
                return f"{b} steps"
        return f"not within {max(args.budgets)}"
    for rule in ["official", *args.rules]:
        lines.append(f"| {rule} | " + " | ".join(cell(rows[(rule, b)]) for b in args.budgets) + f" | {reached(rule) if rule != 'official' else 'its own ' + str(args.official_steps)} |")
    lines.append(f"| official@{args.official_steps} (target) | {cell(target)} | | |" if len(args.budgets) >= 2 else "")
    lines.append(f"| clean (0 steps) | {cell(rows[('official', 0)])} | | |" if len(args.budgets) >= 2 else "")
    print("\n".join(lines))
    print(f"({time.perf_counter() - began:.0f} s in all; official {args.official_steps} steps {official_seconds:.0f} s)")
    out = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": {f"{r}@{k}": v for (r, k), v in rows.items()}}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
