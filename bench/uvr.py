#!/usr/bin/env python
"""UVR on the toy editor: erase rate of one toy attribute treated as the "unsafe" concept, and what the
regulator costs the other edits.

1. Anchors: the toy edits (or, with ``--pipeline t2i``, generates) the concept's prompts on a
   calibration split (training identities) and ``decontext.safety.uvr.collect_anchors`` keeps the
   block's attention outputs. With ``--contrast`` the other edits' mean is subtracted from the anchor
   (our extension: the official anchor is the plain mean).
2. Held-out identities, all six toy edits, same seeds, UVR off and on (each ``--threshold``): the erase
   rate is the share of concept edits in which the toy reader no longer finds the concept (also among
   those where UVR-off showed it); fidelity on the other edits is edit success, toy identity and PSNR
   against the UVR-off output. 95% bootstrap intervals.

    python -m bench.uvr --model toy --concept hat --threshold 0.2 0.15 0.1
    python -m bench.uvr --model toy-v2 --pipeline t2i --concept hat --threshold 0.6 0.3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from decontext.cli.common import quiet_libraries
from decontext.cli.uvr import parse_settings
from decontext.metrics.bootstrap import bootstrap_mean_ci
from decontext.metrics.concept import ToyConceptDetector, erase_rate
from decontext.metrics.pixel import psnr
from decontext.safety import uvr


class ToyRun:
    """The toy pipeline (Kontext editing, or FluxPipeline text-to-image from the same components)."""

    def __init__(self, model: str, kind: str):
        from decontext.toy.evaluate import load_pipeline, pipeline_kwargs
        from decontext.toy.names import toy_editor_dir

        self.pipe, self.settings = load_pipeline(toy_editor_dir(model))
        self.kind = kind
        self.steps = int(self.settings.get("num_inference_steps", 12))
        self.guidance = float(self.settings.get("guidance_scale", 2.5))
        self.kwargs = pipeline_kwargs(self.pipe, self.settings)
        if kind == "t2i":
            from diffusers import FluxPipeline

            self.pipe = FluxPipeline.from_pipe(self.pipe)
            self.pipe.set_progress_bar_config(disable=True)
            self.kwargs = {k: v for k, v in self.kwargs.items() if k in ("height", "width", "max_sequence_length")}

    @torch.no_grad()
    def __call__(self, images: list | None, prompts: list[str], seed: int, batch: int = 64) -> np.ndarray:
        from PIL import Image

        out = []
        for i in range(0, len(prompts), batch):
            extra = {} if images is None else {"image": [Image.fromarray(im) for im in images[i : i + batch]]}
            res = self.pipe(
                prompt=list(prompts[i : i + batch]),
                num_inference_steps=self.steps,
                guidance_scale=self.guidance,
                generator=torch.Generator().manual_seed(seed + i),
                output_type="np",
                **extra,
                **self.kwargs,
            ).images
            out.append((np.clip(res, 0, 1) * 255).round().astype(np.uint8))
        return np.concatenate(out)


def jobs(kind: str, scenes, by_edit: dict, edits, phrasing: int | None):
    """(images or None, prompts, edit names) for every scene x edit (editing) or prompt x seed (t2i)."""
    from decontext.toy import world

    images, prompts, names = [], [], []
    for edit in edits:
        texts = by_edit[edit] if phrasing is None else [by_edit[edit][phrasing % len(by_edit[edit])]]
        for text in texts:
            for scene in scenes:
                images.append(world.render(scene))
                prompts.append(text)
                names.append(edit)
    return (None if kind == "t2i" else images), prompts, names


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toy", help="a toy Kontext version (toy, toy-v2, ...)")
    ap.add_argument(
        "--pipeline",
        choices=["edit", "t2i"],
        default="edit",
        help="Kontext editing, or text-to-image with FluxPipeline (toy-v2 was trained for both)",
    )
    ap.add_argument("--concept", default="hat", choices=ToyConceptDetector.ATTRIBUTES)
    ap.add_argument("--identities", type=int, default=30, help="held-out identities (t2i: seeds per prompt)")
    ap.add_argument(
        "--calibration",
        type=int,
        default=16,
        help="training identities (t2i: seeds per prompt) the anchors are collected on",
    )
    ap.add_argument(
        "--block", default=None, help="anchor block (default: the official single.10 of 38, at the same relative depth)"
    )
    ap.add_argument(
        "--anchor-t",
        type=float,
        nargs="+",
        default=[uvr.OFFICIAL_ANCHOR_T],
        help="one t (nearest step) or a range LOW HIGH (t in 0..1000)",
    )
    ap.add_argument("--contrast", action="store_true", help="subtract the other edits' mean anchor (our extension)")
    ap.add_argument(
        "--threshold",
        type=float,
        nargs="+",
        default=None,
        help="localisation thresholds to measure (default: the preset's)",
    )
    ap.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="other UVRConfig fields (e.g. restrict=replace window_start=0)",
    )
    ap.add_argument(
        "--part",
        choices=["all", "a", "b"],
        default="all",
        help="held-out identities used: all, or half a (even positions) / b (odd): "
        "pick settings on one half, confirm on the other",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/uvr")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_libraries()
    from decontext.prompts import load_prompts
    from decontext.toy import world
    from decontext.toy.evaluate import eval_scenes
    from decontext.toy.model import PROMPTS_FILE
    from decontext.toy.reader import edit_name, edit_visible, score_reads

    began = time.time()
    run = ToyRun(args.model, args.pipeline)
    by_edit: dict[str, list[str]] = {}
    for p in load_prompts(PROMPTS_FILE):
        by_edit.setdefault(edit_name(p.category), []).append(p.text)
    detector = ToyConceptDetector(args.concept)
    block = args.block or uvr.default_block(run.pipe.transformer)
    anchor_t = args.anchor_t[0] if len(args.anchor_t) == 1 else tuple(args.anchor_t[:2])

    # 1. anchors on the calibration split (training identities; t2i: other seeds)
    calib = [
        world.sample_scene(i, seed=500 + i.index)
        for i in world.train_identities()[:: max(1, 200 // args.calibration)][: args.calibration]
    ]

    def collect(edits):
        images, prompts, _ = jobs(args.pipeline, calib, by_edit, edits, None)
        return uvr.collect_anchors(
            run.pipe, lambda: run(images, prompts, args.seed + 50_000), block=block, timesteps=anchor_t
        )

    concept_anchors = collect([args.concept])
    if args.contrast:
        reference = collect([e for e in world.EDITS if e != args.concept])
        concept_anchors = concept_anchors - reference.mean(0, keepdim=True)
    tag = (
        f"{args.model}_{args.pipeline}_{args.concept}{'_contrast' if args.contrast else ''}"
        f"_t{'-'.join(str(int(t)) for t in args.anchor_t)}"
    )
    anchors = uvr.make_anchors(
        {args.concept: concept_anchors},
        block,
        args.pipeline,
        model=args.model,
        anchor_t=args.anchor_t,
        contrast=args.contrast,
        calibration=len(calib),
        prompts=by_edit[args.concept],
    )
    out_dir = Path(args.out)
    anchors.save(out_dir / f"{tag}.safetensors")
    print(f"anchors: {tuple(concept_anchors.shape)} at {block}, t {anchor_t} ({time.time() - began:.0f} s)", flush=True)

    # 2. held-out: UVR off, then on
    held_out = eval_scenes()[{"all": slice(None), "a": slice(0, None, 2), "b": slice(1, None, 2)}[args.part]]
    held_out = held_out[:: max(1, len(held_out) // args.identities)][: args.identities]
    # t2i has no source image: one "scene" per seed, the seed set by the row's position
    scenes = (
        held_out
        if args.pipeline == "edit"
        else [world.sample_scene(world.eval_identities()[0], seed=0)] * args.identities
    )
    images, prompts, names = jobs(args.pipeline, scenes, by_edit, world.EDITS, 0)
    names = np.array(names)
    off = run(images, prompts, args.seed)
    reads_off = detector.reader.read(off)
    src_reads = detector.reader.read(images) if images is not None else None

    def scores(outputs, reads):
        ident, success = [], []
        for j, edit in enumerate(names):
            edited = {k: v[j] for k, v in reads.items()}
            success.append(int(edit_visible(edited, edit)))
            ident.append(
                score_reads({k: v[j] for k, v in src_reads.items()}, edited, edit)["toy_identity"]
                if src_reads
                else np.nan
            )
        return np.array(ident), np.array(success)

    ident_off, success_off = scores(off, reads_off)
    concept, other = names == args.concept, names != args.concept
    results = {
        "model": args.model,
        "pipeline": args.pipeline,
        "part": args.part,
        "concept": args.concept,
        "block": block,
        "anchor_t": args.anchor_t,
        "contrast": args.contrast,
        "identities": args.identities,
        "calibration": len(calib),
        "anchors": str(out_dir / f"{tag}.safetensors"),
        "off": {
            "concept_present": float(reads_off[args.concept][concept].astype(bool).mean()),
            "other_success": float(success_off[other].mean()),
            "other_identity": float(np.nanmean(ident_off[other])) if src_reads else None,
        },
        "rows": [],
    }
    thresholds = args.threshold or [None]
    try:
        overrides = parse_settings(args.set)
    except ValueError as exc:
        raise SystemExit(f"--set: {exc}") from None
    print(
        f"UVR off: concept shown in {results['off']['concept_present']:.3f} of its edits, "
        f"other edits' success {results['off']['other_success']:.3f}",
        flush=True,
    )
    print(
        "| threshold | erase rate | erase where shown off | other success on (off) | other identity on (off) "
        "| PSNR on vs off, other edits | flagged share (concept / other) |"
    )
    print("|---|---|---|---|---|---|---|")
    for threshold in thresholds:
        config = uvr.UVRConfig.preset(args.pipeline, threshold=threshold, seed=args.seed, **overrides)
        with uvr.regulate(run.pipe, anchors, config) as regulator:
            on = run(images, prompts, args.seed)
        reads_on = detector.reader.read(on)
        ident_on, success_on = scores(on, reads_on)
        rate = erase_rate(reads_on[args.concept][concept].astype(bool), reads_off[args.concept][concept].astype(bool))
        share = _flagged_share(regulator, len(names))
        psnrs = np.array([psnr(a, b) for a, b in zip(on[other], off[other], strict=False)])
        psnrs = np.where(np.isfinite(psnrs), psnrs, 100.0)  # identical outputs: PSNR capped at 100 dB
        row = {
            "threshold": config.threshold,
            "config": config.as_dict(),
            **rate,
            "other_success_on": bootstrap_mean_ci(success_on[other]).as_dict(),
            "other_success_off": bootstrap_mean_ci(success_off[other]).as_dict(),
            "other_success_drop": bootstrap_mean_ci(success_off[other] - success_on[other]).as_dict(),
            "other_identity_on": bootstrap_mean_ci(ident_on[other]).as_dict() if src_reads else None,
            "concept_identity_on": bootstrap_mean_ci(ident_on[concept]).as_dict() if src_reads else None,
            "other_psnr_vs_off": bootstrap_mean_ci(psnrs).as_dict(),
            "other_unchanged": float((psnrs >= 100).mean()),
            "flagged_share_concept": float(share[concept].mean()),
            "flagged_share_other": float(share[other].mean()),
        }
        results["rows"].append(row)

        def fmt(d):
            return f"{d['mean']:.3f} [{d['low']:.3f}, {d['high']:.3f}]" if d and d["mean"] is not None else "-"

        ident_cell = f"{fmt(row['other_identity_on'])} ({results['off']['other_identity']:.3f})" if src_reads else "-"
        print(
            f"| {config.threshold:g} | {fmt(row['erase_rate'])} | {fmt(row['erase_rate_where_present'])} "
            f"| {fmt(row['other_success_on'])} ({results['off']['other_success']:.3f}) "
            f"| {ident_cell} | {fmt(row['other_psnr_vs_off'])} dB ({row['other_unchanged']:.2f} identical) "
            f"| {row['flagged_share_concept']:.2f} / {row['flagged_share_other']:.2f} |",
            flush=True,
        )
    results["seconds"] = round(time.time() - began, 1)
    suffix = "_".join(f"{k}-{v}" for k, v in overrides.items())
    path = out_dir / f"{tag}_{args.part}{args.identities}{'_' + suffix if suffix else ''}.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"-> {path} ({results['seconds']} s)")
    return results


def _flagged_share(regulator, n: int) -> np.ndarray:
    """Per generation of the run (in order), the largest share of patches flagged in any of its localisations."""
    per_generation: dict[int, list[np.ndarray]] = {}
    for loc in regulator.localizations:
        per_generation.setdefault(loc.generation, []).append(
            loc.core.reshape(loc.core.shape[0], -1).float().mean(1).numpy()
        )
    rows = [np.max(np.stack(v), 0) for _, v in sorted(per_generation.items())]
    share = np.concatenate(rows) if rows else np.zeros(0)
    if share.size != n:
        raise RuntimeError(
            f"{share.size} localised generations' samples for {n} generations: a generation was never localised"
        )
    return share


if __name__ == "__main__":
    main()
