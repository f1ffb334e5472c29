#!/usr/bin/env python
"""Fewer PGD steps for the same protection: how many steps (and seconds) each update rule needs to reach
what the paper's 800 official steps reach, per image, with 95% intervals over images.

Every image is protected on its own (its own seed), as ``decontext attack`` does:
- the paper preset (sign steps of a constant alpha, 800 steps) once, with snapshots at --snapshots
  (a constant step makes the first k steps of a long run a k-step run); its final measure is the
  image's target, its wall time the yardstick of every ratio;
- every rule of --rules once per budget of --budgets (decaying schedules depend on the budget); a rule
  with the stopping rule (the fast preset) may end before its budget: the table says how many steps ran.

The measure is the method's own (DeContext: the context share, lower = better) over --draws fixed draws,
the same draws for every image state; on a toy also the toy identity of the six toy edits. A rule
"reaches" the target on an image when its measure is at or below the paper preset's final one there.

    python -m bench.steps --model tiny --size 256 --images 8 --json runs/steps/tiny256.json
    python -m bench.steps --model tiny --size 512 --images 8 --rules fast --budgets 100 --json runs/steps/tiny512.json
    python -m bench.steps --model tiny --family step1x_edit --size 256 --images 8 --vlm-refresh 1 10 0
    python -m bench.steps --model toy --images 20              # share and toy identity

Tiny models read real faces from ../shared/data/faces when present (resized to --size), else a
synthetic gradient; the toy reads its held-out faces.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from bench import effect, save_json
from decontext.cli.common import quiet_libraries
from decontext.config import PRESETS, PGDConfig, ProtectConfig
from decontext.images import quantize, uint8_to_tensor
from decontext.protect import protect

FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"
FAST = {k: v for k, v in PRESETS["fast"].items() if k != "steps"}
FAST_NO_STOP = {k: v for k, v in FAST.items() if not k.startswith("stop_")}
RULES = {  # name -> PGDConfig changes over the paper preset; alpha_scale multiplies the official step
    "sign+cosine": {"schedule": "cosine"},
    "momentum+cosine": {"momentum": 0.9, "schedule": "cosine"},
    "momentum+cosine x2": {"momentum": 0.9, "schedule": "cosine", "alpha_scale": 2.0},
    "momentum+cosine x4": {"momentum": 0.9, "schedule": "cosine", "alpha_scale": 4.0},
    "adam+cosine x2": {"update": "adam", "schedule": "cosine", "alpha_scale": 2.0},
    "adam+cosine x4": {"update": "adam", "schedule": "cosine", "alpha_scale": 4.0},
    "fast": FAST,  # the fast preset (with its stopping rule), at each budget
    "fast without stopping": FAST_NO_STOP,
}


def sources_for(model: str, count: int, size: int, seed: int, world=None) -> np.ndarray:
    """(N, H, W, 3) uint8 images: real faces (tiny models), else synthetic; a toy world's held-out faces
    (``world``: the toy editor's; default v1)."""
    if model == "tiny":
        from PIL import Image

        files = sorted(FACES.glob("*.jpg"))[:count] if FACES.is_dir() else []
        if len(files) >= count:
            return np.stack(
                [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BICUBIC)) for f in files]
            )
        print(f"note: {FACES} has fewer than {count} faces; synthetic gradients instead")
        rng = np.random.default_rng(seed)
        base = np.linspace(40, 215, size, dtype=np.float32)
        return np.stack(
            [
                np.clip(
                    base[None, :, None] * np.ones((size, 1, 3)) + rng.normal(0, 20, (size, size, 3)), 0, 255
                ).astype(np.uint8)
                for _ in range(count)
            ]
        )
    from decontext.toy.worlds import get_world, heldout_scenes

    world = world or get_world()
    return np.stack([world.render(scene) for scene in heldout_scenes(world, count, seed)])


def run(
    editor, method, image: np.ndarray, config: PGDConfig, seed: int, snapshots=()
) -> tuple[dict[int, np.ndarray], float, int]:
    """({steps: uint8 image then}, seconds, steps run) of one image's protection."""
    x0 = uint8_to_tensor(image)
    result = protect(
        editor,
        method,
        x0,
        ProtectConfig(pgd=config, resolution="native", measure_draws=0),
        seed=seed,
        snapshots=sorted({*snapshots, config.steps}),
    )
    final = {k: quantize(v, image, config.eps) for k, v in result.snapshots.items()}
    final[-1] = quantize(result.pixels, image, config.eps)  # where it ended (the stopping rule may end it early)
    return final, result.seconds, result.steps_run


def measure(editor, method, image: np.ndarray, size, draws: int) -> float:
    with method.session(editor):
        values = method.measure(editor, uint8_to_tensor(image), size, draws)
    return float(next(iter(values.values()))) if values else float("nan")


def interval(values, draws: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean with a 95% percentile bootstrap interval over images."""
    v = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), (draws, len(v)))].mean(1)
    return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def shown(ci, digits=4) -> str:
    return f"{ci[0]:+.{digits}f} [{ci[1]:+.{digits}f}, {ci[2]:+.{digits}f}]"


def reused_paper_rows(args, paper: PGDConfig) -> dict[str, list[dict]]:
    """The paper preset's rows of an earlier run (``--paper-from``), after checking it ran on the same inputs
    with the same paper settings (its images and their draws follow from these, so the rows are this run's)."""
    import json

    earlier = json.loads(args.paper_from.read_text())
    same = ("model", "family", "method", "size", "seed", "draws")
    differs = [k for k in same if earlier["args"].get(k) != str(getattr(args, k))]
    if differs or earlier["paper"] != paper.to_dict():
        raise SystemExit(f"--paper-from {args.paper_from}: another run ({differs or 'paper settings'} differ)")
    rows = {k: v for k, v in earlier["rows"].items() if k.startswith("paper@")}
    if any(len(v) < args.images for v in rows.values()):
        raise SystemExit(f"--paper-from {args.paper_from}: fewer than {args.images} images")
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="tiny (share only) or a toy (share and toy identity)")
    ap.add_argument("--family", default="flux_kontext", help="the tiny model's family (flux_kontext, step1x_edit, ...)")
    ap.add_argument("--method", default="decontext", choices=[v for v in effect.VARIANTS if v != "noise"])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", type=int, default=256, help="tiny: image side in pixels (the toy: its own 64)")
    ap.add_argument(
        "--snapshots", type=int, nargs="+", default=[50, 100, 200, 400], help="paper-preset step counts also measured"
    )
    ap.add_argument("--budgets", type=int, nargs="+", default=[50, 100, 200])
    ap.add_argument(
        "--rules", nargs="+", default=["momentum+cosine", "momentum+cosine x2", "fast"], choices=list(RULES)
    )
    ap.add_argument(
        "--vlm-refresh",
        type=int,
        nargs="+",
        default=None,
        help="step1x_edit/qwen: also run the paper preset at the largest snapshot and the rules at the largest budget "
        "under each of these re-read intervals (the first is the main table's; 1 = the official per-step re-read)",
    )
    ap.add_argument(
        "--paper-steps",
        type=int,
        default=None,
        help="the paper preset's steps (default: the family's official, 800); smaller only for a quick try",
    )
    ap.add_argument(
        "--paper-from",
        type=Path,
        default=None,
        help="reuse the paper preset's rows of an earlier --json of the same model, family, size, images, seed "
        "and draws instead of running it again (the rules alone then run: minutes instead of the 800-step run)",
    )
    ap.add_argument("--draws", type=int, default=8, help="fixed draws of the method's measure")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    quiet_libraries()
    torch.manual_seed(0)
    from decontext.editors import family, load_editor
    from decontext.prompts import load_prompts
    from decontext.toy.names import is_toy_model, toy_family

    toy = is_toy_model(args.model)
    spec = family(toy_family(args.model) if toy else args.family)
    refreshes = args.vlm_refresh or [None]
    editors = {
        r: load_editor(args.model, spec.name, "cpu", "float32", **({} if r is None else {"vlm_refresh": r}))
        for r in refreshes
    }
    editor = editors[refreshes[0]]
    if toy:
        from decontext.toy.model import PROMPTS_FILE
        from decontext.toy.reader import ToyReader, edit_name

        pool = load_prompts(PROMPTS_FILE)
        reader = ToyReader.for_editor(args.model)  # it reads the editor's own world
        edit_prompts = [pool[i].text for i in effect.EDIT_PROMPT_INDICES]
        names = [edit_name(pool[i].category) for i in effect.EDIT_PROMPT_INDICES]
        settings = {
            "steps": int(editor.recommended["num_inference_steps"]),
            "guidance": float(editor.recommended["guidance_scale"]),
        }
    else:
        pool, edit_prompts = load_prompts(), []
    attack_prompts = [p.text for p in pool]
    for e in editors.values():
        e.prepare(attack_prompts + edit_prompts, release=False)
    sources = sources_for(
        args.model if not toy else "toy", args.images, args.size, args.seed, reader.world if toy else None
    )
    size = sources.shape[1:3]
    method = effect.build(args.method, attack_prompts)
    paper = PGDConfig.for_method(method, defaults=spec.pgd_defaults, preset="paper", steps=args.paper_steps)
    began = time.perf_counter()

    def identity(image: np.ndarray, i: int) -> float:
        if not toy:
            return float("nan")
        edits = effect.edit_all(editor, image[None], edit_prompts, args.seed + i, settings, 1)
        return float(effect.score(reader, sources[i : i + 1], edits, names)["toy_identity"].mean())

    def config_of(rule: str, budget: int) -> PGDConfig:
        changes = dict(RULES[rule])
        scale = changes.pop("alpha_scale", 1.0)
        return paper.replace(steps=budget, alpha=paper.alpha * scale, **changes)

    rows: dict[str, list[dict]] = {}  # "rule@budget" -> one dict per image
    counts = sorted({0, *[c for c in args.snapshots if c < paper.steps], paper.steps})
    earlier = reused_paper_rows(args, paper) if args.paper_from else None
    for i, image in enumerate(sources):
        seed = args.seed + i
        if earlier is not None:
            for key, values in earlier.items():
                rows.setdefault(key, []).append(values[i])
        else:
            snaps, seconds, _ = run(editor, method, image, paper, seed, counts)
            for k in counts:
                rows.setdefault(f"paper@{k}", []).append(
                    {
                        "share": measure(editor, method, snaps[k], size, args.draws),
                        "toy_identity": identity(snaps[k], i),
                        "seconds": seconds * k / paper.steps,
                        "steps_run": k,
                    }
                )
        target = rows[f"paper@{paper.steps}"][-1]
        print(
            f"image {i + 1}/{len(sources)}: clean {rows['paper@0'][-1]['share']:.4f}, "
            f"paper@{paper.steps} {target['share']:.4f} "
            f"({target['seconds']:.1f} s{', an earlier run' if earlier is not None else ''})",
            flush=True,
        )
        for rule in args.rules:
            for budget in args.budgets:
                snap, secs, ran = run(editor, method, image, config_of(rule, budget), seed)
                rows.setdefault(f"{rule}@{budget}", []).append(
                    {
                        "share": measure(editor, method, snap[-1], size, args.draws),
                        "toy_identity": identity(snap[-1], i),
                        "seconds": secs,
                        "steps_run": ran,
                    }
                )
                r = rows[f"{rule}@{budget}"][-1]
                print(
                    f"  {rule}@{budget}: {r['share']:.4f} ({r['share'] - target['share']:+.4f}), "
                    f"{ran} steps, {secs:.1f} s",
                    flush=True,
                )
        for refresh in refreshes[1:]:
            other = editors[refresh]
            for rule, budget in [("paper", max(args.snapshots)), *[(r, max(args.budgets)) for r in args.rules]]:
                config = paper.replace(steps=budget) if rule == "paper" else config_of(rule, budget)
                snap, secs, ran = run(other, method, image, config, seed)
                rows.setdefault(f"{rule}@{budget} refresh {refresh}", []).append(
                    {
                        "share": measure(editor, method, snap[-1], size, args.draws),
                        "toy_identity": float("nan"),
                        "seconds": secs,
                        "steps_run": ran,
                    }
                )
                r = rows[f"{rule}@{budget} refresh {refresh}"][-1]
                print(
                    f"  {rule}@{budget}, vlm refresh {refresh}: {r['share']:.4f}, {secs / ran:.3f} s/step", flush=True
                )

    target = rows[f"paper@{paper.steps}"]
    target_share = np.array([r["share"] for r in target])
    target_seconds = np.array([r["seconds"] for r in target])
    target_identity = np.array([r["toy_identity"] for r in target])
    what = f"{args.model} {spec.name}" + (f" at {size[0]} px" if not toy else "")
    lines = [
        f"{what}, {len(sources)} images, {args.method} at {paper.eps:g}/255; "
        f"paper preset: sign steps of {paper.alpha:g}/255 for {paper.steps} steps; "
        f"measure = the method's own over {args.draws} fixed draws (lower = better); "
        f"gap = rule - paper@{paper.steps}, per image; "
        "time = the run's wall time / the paper preset's, per image; 95% bootstrap intervals over images",
        "",
        "| rule | steps run | measure | gap to paper@%d | reached | time / paper's |" % paper.steps
        + (" toy identity gap |" if toy else ""),
        "|---|---|---|---|---|---|" + ("---|" if toy else ""),
    ]
    summary = {}
    for key, values in rows.items():
        share = np.array([r["share"] for r in values])
        gap = interval(share - target_share)
        ratio = interval(np.array([r["seconds"] for r in values]) / target_seconds)
        reached = float(np.mean(share <= target_share + 1e-12))
        steps_run = np.array([r["steps_run"] for r in values])
        entry = {
            "measure": interval(share),
            "gap": gap,
            "reached": reached,
            "time_ratio": ratio,
            "steps_run": [int(steps_run.min()), float(steps_run.mean()), int(steps_run.max())],
        }
        cells = [
            key,
            f"{steps_run.mean():.0f}"
            + (f" ({steps_run.min()}-{steps_run.max()})" if steps_run.min() != steps_run.max() else ""),
            f"{share.mean():.4f}",
            shown(gap),
            f"{reached:.0%}",
            f"{ratio[0]:.3f} [{ratio[1]:.3f}, {ratio[2]:.3f}]",
        ]
        if toy:
            entry["identity_gap"] = interval(np.array([r["toy_identity"] for r in values]) - target_identity)
            cells.append(shown(entry["identity_gap"], 3))
        summary[key] = entry
        lines.append("| " + " | ".join(cells) + " |")
    for rule in args.rules:
        reach = [b for b in sorted(args.budgets) if summary[f"{rule}@{b}"]["gap"][0] <= 0]
        lines.append(
            f"\n{rule}: mean measure at or below paper@{paper.steps} "
            + (
                f"from {reach[0]} steps (time {summary[f'{rule}@{reach[0]}']['time_ratio'][0]:.3f}x the paper preset's)"
                if reach
                else f"within none of {sorted(args.budgets)}"
            )
        )
    print("\n".join(lines))
    print(f"({time.perf_counter() - began:.0f} s in all)")
    out = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "paper": paper.to_dict(),
        "rows": rows,
        "summary": summary,
        "table": lines,
    }
    save_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
