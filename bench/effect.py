#!/usr/bin/env python
"""Effect size of the protections on the trained toy editor, on the held-out identities.

For each budget and method: protect every held-out face (batched PGD through the library's engine and
methods, saved-file quantisation within the budget), edit clean and protected faces with the toy
pipeline (FluxKontextPipeline, or InstructPix2Pix for toy-ip2p) under the six toy edits, read the results
with the toy attribute reader, and compare with the random-noise control of the same budget (paired by
identity and edit; 95% bootstrap interval over identities).

    python -m bench.effect                               # 100 identities, eps 8 16 32, all methods
    python -m bench.effect --identities 20 --eps 16 --steps 50 --methods noise decontext
    python -m bench.effect --eps 8 16 32 --json out.json   # also out.svg: identity vs budget, per method
    python -m bench.effect --replot out.json               # redraw out.svg from the saved JSON, no re-run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from decontext.cli.common import quiet_libraries
from decontext.config import PGDConfig, ProtectConfig
from decontext.images import quantize, uint8_to_tensor
from decontext.metrics.bootstrap import ClusterInterval, edits_by_identity_ci
from decontext.metrics.pixel import psnr
from decontext.plots import Chart, color_of
from decontext.protect import protect

EDIT_PROMPT_INDICES = (0, 2, 4, 6, 8, 10)  # one phrasing per toy edit
VARIANTS = {
    # name: (method name, constructor overrides); "a+b" names compose the listed variants (decontext.methods.composite)
    "noise": ("noise", {}),
    "decontext": ("decontext", {}),  # the paper's defaults: t in [0.98, 1), single blocks 0-25/38
    "decontext_all_t": ("decontext", {"t_range": (0.0, 1.0)}),
    "decontext_all_t_all_blocks": ("decontext", {"t_range": (0.0, 1.0), "blocks": "double,single"}),
    "encoder": ("encoder", {}),
    "flow_loss": ("flow_loss", {}),
    "danp": ("danp", {}),
    "tdae": ("tdae", {}),
    "diffusion": ("diffusion", {}),
    "decontext+encoder": ("decontext+encoder", {}),
    "encoder+danp": ("encoder+danp", {}),
    "encoder+flow_loss": ("encoder+flow_loss", {}),
    "encoder+diffusion": ("encoder+diffusion", {}),
    # the trained protector alone (one forward pass, no PGD), at its own budget only (--protector)
    "amortized": ("amortized", {}),
}
DEFAULT_PROTECTORS = {"toy-v1": "toy-decontext"}  # the shipped protector trained on each toy editor
PROMPTED = {"decontext", "flow_loss", "danp", "tdae", "diffusion"}  # methods that take the prompt pool


def toy_setup(model: str, identities: int, seed: int):
    """What every toy bench starts from: the toy editor ``model`` (its attack and edit prompts encoded),
    its reader, the six edit prompts and their names, the editor's sampling settings, the first
    ``identities`` held-out faces rendered from ``seed`` (uint8, N x 64 x 64 x 3), and the attack prompts
    (the whole pool)."""
    from decontext.editors import load_editor
    from decontext.prompts import load_prompts
    from decontext.toy.model import PROMPTS_FILE
    from decontext.toy.names import toy_family
    from decontext.toy.reader import ToyReader, edit_name

    editor = load_editor(model, toy_family(model), "cpu", "float32")
    pool = load_prompts(PROMPTS_FILE)
    prompts = [pool[i].text for i in EDIT_PROMPT_INDICES]
    names = [edit_name(pool[i].category) for i in EDIT_PROMPT_INDICES]
    settings = {
        "steps": int(editor.recommended["num_inference_steps"]),
        "guidance": float(editor.recommended["guidance_scale"]),
    }
    attack_prompts = [p.text for p in pool]
    editor.prepare(attack_prompts + prompts, release=False)
    reader = ToyReader.for_editor(model, toy_family(model))  # it reads the editor's own world
    from decontext.toy.worlds import heldout_scenes

    world = reader.world
    sources = np.stack([world.render(scene) for scene in heldout_scenes(world, identities, seed)])
    return editor, reader, prompts, names, settings, sources, attack_prompts


def build(variant: str, prompts: list[str], protector: str | None = None):
    from decontext.methods import build_method, compose, method_names

    kind, overrides = VARIANTS[variant]
    if kind == "amortized":
        return build_method("amortized", protector=protector)
    names = method_names(kind)
    methods = []
    for name in names:
        options = dict(overrides) if len(names) == 1 else {}
        if name in PROMPTED:
            options.update(prompts=prompts, release_text_encoders=False)
        methods.append(build_method(name, **options))
    return compose(methods)


def protect_batch(
    editor,
    method,
    sources: np.ndarray,
    eps: float,
    steps: int,
    alpha: float,
    seed: int,
    chunk: int,
    transform=None,
    **pgd_options,
) -> np.ndarray:
    """Protected uint8 images (N, H, W, 3), each within floor(eps) levels of its source (and, with a
    ``psnr_floor`` among ``pgd_options``, at or above that PSNR). ``transform``: an EOT transform
    (``decontext.purify.EOT``), with ``eot_samples`` among ``pgd_options``."""
    out = []
    steps = steps if method.optimises else None  # the noise control is its start alone
    chunk = chunk if method.batched else 1  # image i's seed is seed + i either way: chunks only batch for speed
    config = ProtectConfig(
        pgd=PGDConfig.for_method(method, eps=eps, alpha=alpha, steps=steps, **pgd_options),
        resolution="native",
        measure_draws=0,
    )
    for start in range(0, len(sources), chunk):
        part = sources[start : start + chunk]
        x0 = torch.cat([uint8_to_tensor(im) for im in part])
        adv = protect(editor, method, x0, config, seed=seed + start, transform=transform).pixels
        out.extend(quantize(adv[i : i + 1], part[i], eps) for i in range(len(part)))
    return np.stack(out)


def pgd_options(args) -> dict:
    """The PGD choices a bench run sets on the command line (None: each method's own default)."""
    return {"psnr_floor": args.psnr_floor, "update": args.update, "schedule": args.schedule, "start": args.start}


def edit_all(editor, images: np.ndarray, prompts: list[str], seed: int, settings: dict, chunk: int) -> np.ndarray:
    """Edits (E, N, H, W, 3) of every image under every prompt (seed fixed per image)."""
    edits = []
    for prompt in prompts:
        row = []
        for start in range(0, len(images), chunk):
            part = [Image.fromarray(im) for im in images[start : start + chunk]]
            row.extend(
                np.asarray(im)
                for im in editor.edit(
                    part,
                    [prompt] * len(part),
                    [seed + start + i for i in range(len(part))],
                    steps=settings["steps"],
                    guidance=settings["guidance"],
                    resolution="native",
                )
            )
        edits.append(np.stack(row))
    return np.stack(edits)


def score(reader, sources: np.ndarray, edits: np.ndarray, edit_names: list[str]) -> dict[str, np.ndarray]:
    """Per (edit, identity): toy identity score and edit success."""
    from decontext.toy.reader import score_reads

    src = reader.read(list(sources))
    identity = np.zeros(edits.shape[:2])
    success = np.zeros(edits.shape[:2])
    for e, name in enumerate(edit_names):
        reads = reader.read(list(edits[e]))
        for i in range(edits.shape[1]):
            result = score_reads(
                {k: v[i] for k, v in src.items()}, {k: v[i] for k, v in reads.items()}, name, reader.attributes
            )
            identity[e, i], success[e, i] = result["toy_identity"], result["edit_success"]
    return {"toy_identity": identity, "edit_success": success}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, draws: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b (arrays (edits, identities)) with a 95% percentile interval over identities: the
    benchmark leaderboard's interval (``decontext.metrics.bootstrap.edits_by_identity_ci``)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    ci = edits_by_identity_ci(diff, n_boot=draws, seed=seed)
    return ci.mean, ci.low, ci.high


def budget_series(results: dict, metric: str = "toy_identity") -> dict[str, list[tuple[float, ClusterInterval]]]:
    """Per method, its (budget, interval) points in budget order, from result keys ``method@eps``."""
    series: dict[str, list[tuple[float, ClusterInterval]]] = {}
    for key, r in results.items():
        method, at, eps = key.rpartition("@")
        if at and metric in r:
            series.setdefault(method, []).append((float(eps), edits_by_identity_ci(r[metric])))
    return {m: sorted(points, key=lambda p: p[0]) for m, points in series.items()}


def plot_svg(results: dict, title: str, metric: str = "toy_identity") -> str:
    """``metric`` against the budget: one line per method, one 95% interval bar (over identities) per
    point, methods nudged apart at a shared budget; dashed lines mark clean and another person's photo
    (no protection, and the floor a protection could reach)."""
    series = budget_series(results, metric)
    refs = {
        name: edits_by_identity_ci(results[name][metric]) for name in ("clean", "another person") if name in results
    }
    ys = [v for points in series.values() for _, ci in points for v in (ci.mean, ci.low, ci.high)] + [
        ci.mean for ci in refs.values()
    ]
    chart = Chart(
        title,
        sorted({eps for points in series.values() for eps, _ in points}),
        ys,
        x_label="budget eps (/255)",
        y_label=f"{metric} (lower = better protection)",
        width=680,
        height=380,
        margins=(62, 190, 30, 50),
    )
    for name, ci in refs.items():
        chart.reference(ci.mean, color_of(name), f"{name} {ci.mean:.3f}")
    for k, (method, points) in enumerate(series.items()):
        color, dx = color_of(method), 5.0 * (k - (len(series) - 1) / 2)
        chart.line([(eps, ci.mean) for eps, ci in points], color, dx=dx, name=method)
        for eps, ci in points:
            chart.error_bar(eps, ci.low, ci.high, color, dx=dx)
            chart.marker(
                eps,
                ci.mean,
                color,
                label=f"{method}@{eps:g}: {ci.mean:.3f} [{ci.low:.3f}, {ci.high:.3f}] (n={ci.n})",
                dx=dx,
                radius=3,
            )
    return chart.svg()


def write_plot(results: dict, path: Path, title: str) -> Path:
    path.write_text(plot_svg(results, title), encoding="utf-8")
    print(f"plot: {path}")
    return path


def table(results: dict, extra: dict, way: float) -> list[str]:
    """The bench's markdown table, one line each: a row per condition, its identity difference against the noise
    control of its budget (``paired_bootstrap``) and its share of ``way``. The run prints it, and
    ``bench.evidence_tables`` renders the committed tables of docs/EVIDENCE.md from a saved ``--json`` with it."""
    lines = [
        "| condition | toy_identity | edit_success | identity diff vs noise [95% CI] | share of the way "
        "| PSNR (dB) | s/image |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in results.items():
        diff = share = ""
        if "@" in key and not key.startswith("noise@") and f"noise@{key.split('@')[1]}" in results:
            mean, lo, hi = paired_bootstrap(r["toy_identity"], results[f"noise@{key.split('@')[1]}"]["toy_identity"])
            diff, share = f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]", f"{-mean / way:.0%}"
        info = extra.get(key, {})
        psnr_text = f"{info['psnr']:.1f}" if info else ""
        seconds_text = f"{info['seconds_per_image']:.1f}" if info else ""
        lines.append(
            f"| {key} | {np.mean(r['toy_identity']):.3f} | {np.mean(r['edit_success']):.3f} "
            f"| {diff} | {share} | {psnr_text} | {seconds_text} |"
        )
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        default="toy",
        help="a trained toy editor: 'toy' (the default version) or a name such as 'toy-v1' or 'toy-ip2p'",
    )
    parser.add_argument("--identities", type=int, default=100)
    parser.add_argument("--eps", type=float, nargs="+", default=[8, 16, 32])
    parser.add_argument("--methods", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--variants-at", type=float, default=16, help="run the decontext_* variants only at this eps")
    parser.add_argument("--steps", type=int, default=200, help="PGD steps (the paper uses 800)")
    parser.add_argument(
        "--alpha", type=float, default=None, help="PGD step in 1/255 (default eps/steps*4, at least 0.25)"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--psnr-floor",
        type=float,
        default=None,
        help="PGD also keeps every protected input at or above this PSNR (dB); the noise control too",
    )
    parser.add_argument(
        "--update",
        default=None,
        choices=("sign", "l2", "adam"),
        help="PGD update rule (default: the method's, else sign)",
    )
    parser.add_argument(
        "--schedule",
        default=None,
        choices=("constant", "linear", "cosine"),
        help="PGD step-size schedule (default: the method's, else constant)",
    )
    parser.add_argument(
        "--start",
        default=None,
        choices=("clean", "uniform", "sign"),
        help="where PGD starts (default: the method's, else clean)",
    )
    parser.add_argument(
        "--protector",
        default=None,
        help="the protector of the amortized row (shipped name or folder; "
        "default: the one trained on --model, toy-decontext for toy-v1)",
    )
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--json", type=Path, default=None, help="also write the raw table here")
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="SVG plot of identity vs budget per method (default: next to --json, .svg)",
    )
    parser.add_argument(
        "--replot",
        type=Path,
        default=None,
        metavar="JSON",
        help="only redraw the plot from a saved --json file (no protection, no edits)",
    )
    args = parser.parse_args(argv)
    if args.replot is not None:
        results = json.loads(args.replot.read_text())
        edits, n = np.shape(results["clean"]["toy_identity"])
        write_plot(
            results,
            args.plot or args.replot.with_suffix(".svg"),
            f"{args.replot.stem}: toy identity vs budget ({n} identities x {edits} edits)",
        )
        return 0
    quiet_libraries()
    torch.manual_seed(0)

    from decontext.toy.names import is_toy_model

    if not is_toy_model(args.model):
        parser.error(
            f"--model {args.model!r}: the effect bench needs a trained toy editor (its reader scores the edits)"
        )
    protector = None
    if "amortized" in args.methods:
        from decontext.methods.amortized import read_config
        from decontext.toy.names import TOY_DEFAULTS, toy_family

        resolved = TOY_DEFAULTS.get(toy_family(args.model), args.model) if args.model == "toy" else args.model
        protector = args.protector or DEFAULT_PROTECTORS.get(resolved)
        if protector is None:
            parser.error(
                f"--methods amortized: no shipped protector was trained on {args.model}; give --protector NAME|FOLDER"
            )
        read_config(protector)  # a missing or broken protector fails here, before anything loads
    editor, reader, prompts, names, settings, sources, attack_prompts = toy_setup(
        args.model, args.identities, args.seed
    )
    started = time.perf_counter()
    results: dict[str, dict] = {
        "clean": score(reader, sources, edit_all(editor, sources, prompts, args.seed, settings, args.chunk), names)
    }
    print(
        f"clean: identity {results['clean']['toy_identity'].mean():.3f}, "
        f"edit success {results['clean']['edit_success'].mean():.3f} "
        f"({time.perf_counter() - started:.0f}s)",
        flush=True,
    )
    # Chance: another person's photo as the context, read against this identity (the floor of "the way").
    results["another person"] = score(
        reader, sources, edit_all(editor, np.roll(sources, 1, axis=0), prompts, args.seed, settings, args.chunk), names
    )
    way = results["clean"]["toy_identity"].mean() - results["another person"]["toy_identity"].mean()
    extra: dict[str, dict] = {}
    for eps in args.eps:
        for variant in args.methods:
            if variant.startswith("decontext_") and eps != args.variants_at:
                continue
            began = time.perf_counter()
            method = build(variant, attack_prompts, protector)
            if variant == "amortized" and float(method.trained["eps"]) != eps:
                print(
                    f"{variant}@{eps:g}: the protector was trained for {method.trained['eps']:g}/255 (skipped)",
                    flush=True,
                )
                continue
            if not method.applies_to(editor):
                print(f"{variant}@{eps:g}: does not apply to {editor.family} (skipped)", flush=True)
                continue
            alpha = args.alpha or max(0.25, 4 * eps / max(args.steps, 1))
            protected = protect_batch(
                editor, method, sources, eps, args.steps, alpha, args.seed, args.chunk, **pgd_options(args)
            )
            seconds = time.perf_counter() - began
            edits = edit_all(editor, protected, prompts, args.seed, settings, args.chunk)
            key = f"{variant}@{eps:g}"
            results[key] = score(reader, sources, edits, names)
            extra[key] = {
                "psnr": float(np.mean([psnr(a, b) for a, b in zip(protected, sources, strict=False)])),
                "seconds_per_image": seconds / len(sources),
            }
            r = results[key]
            print(
                f"{key}: identity {r['toy_identity'].mean():.3f}, edit success {r['edit_success'].mean():.3f}, "
                f"PSNR {extra[key]['psnr']:.1f} dB ({seconds:.0f}s protect, {time.perf_counter() - began:.0f}s in all)",
                flush=True,
            )

    lines = [
        f"Toy editor {args.model!r}, {len(sources)} held-out identities x {len(prompts)} edits, PGD {args.steps} steps "
        f"({', '.join(f'{k} {v}' for k, v in pgd_options(args).items() if v is not None) or 'each method its own rule'}"
        "); toy_identity: lower = better protection; "
        "diff = condition - noise at the same eps (paired, 95% bootstrap CI over identities); "
        f"way = -diff / (clean - another person) = {way:.3f}; PSNR of the saved protected input; "
        "protect time per image on this machine",
        "",
        *table(results, extra, way),
    ]
    print("\n".join(lines))
    if args.json:
        args.json.write_text(
            json.dumps({k: {**{m: v.tolist() for m, v in r.items()}, **extra.get(k, {})} for k, r in results.items()})
        )
    plot = args.plot or (args.json.with_suffix(".svg") if args.json else None)
    if plot is not None:
        write_plot(
            results,
            plot,
            f"{args.model}: toy identity vs budget "
            f"({len(sources)} identities x {len(prompts)} edits, PGD {args.steps} steps)",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
