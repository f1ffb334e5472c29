#!/usr/bin/env python
"""How each protection holds after what happens to photos online, on the trained toy editor.

For each method (and the random-noise control of the same budget), with and without EOT (the protection
optimised through differentiable breakers, ``decontext.purify.EOT``): protect the held-out faces, apply
each breaker (the real one: Pillow's JPEG, resizing, blur, noisy upscaling, the toy's own VAE round
trip ...), edit with the toy pipeline under the six toy edits, and read the results. The cell is the
toy-identity difference against the noise control after the SAME breaker (paired by identity and edit;
95% bootstrap interval over identities): below zero = the protection still works after that breaker.

    python -m bench.robustness --identities 20 --eps 16 --steps 100
    python -m bench.robustness --methods decontext --breakers none jpeg blur --eot jpeg resize blur
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench import effect  # protect_batch, edit_all, score, paired_bootstrap, VARIANTS
from decontext.cli.common import quiet_libraries
from decontext.metrics.pixel import psnr

BREAKERS = ["none", "jpeg", "jpeg:quality=50", "webp", "resize", "blur", "noise_upscale", "vae"]


def apply(breaker, images: np.ndarray, editor, seed: int) -> np.ndarray:
    if breaker is None:
        return images
    return np.stack(
        [np.asarray(breaker(Image.fromarray(im), seed=seed + i, editor=editor)) for i, im in enumerate(images)]
    )


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toy", help="a trained toy editor (toy, toy-v2, ...)")
    ap.add_argument("--identities", type=int, default=20)
    ap.add_argument("--eps", type=float, default=16)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--alpha", type=float, default=None, help="PGD step in 1/255 (default 4 x eps / steps)")
    ap.add_argument(
        "--methods",
        nargs="+",
        default=["decontext", "encoder", "flow_loss", "danp"],
        choices=[v for v in effect.VARIANTS if v != "noise"],
    )
    ap.add_argument("--breakers", nargs="+", default=BREAKERS, help="'none' and decontext.purify specs")
    ap.add_argument(
        "--eot", nargs="+", default=["jpeg", "resize", "blur"], help="breakers of the EOT variants ('' to skip EOT)"
    )
    ap.add_argument("--eot-samples", type=int, default=1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--chunk", type=int, default=50)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    quiet_libraries()
    torch.manual_seed(0)
    from decontext.purify import EOT, parse_breaker, parse_breakers

    editor, reader, prompts, names, settings, sources, attack_prompts = effect.toy_setup(
        args.model, args.identities, args.seed
    )
    breakers = {spec: (None if spec == "none" else parse_breaker(spec)) for spec in args.breakers}
    eot_specs = [s for s in args.eot if s]
    alpha = args.alpha or max(0.25, 4 * args.eps / max(args.steps, 1))
    began = time.perf_counter()

    def identity_after(images: np.ndarray) -> dict[str, np.ndarray]:
        return {
            spec: effect.score(
                reader,
                sources,
                effect.edit_all(editor, apply(b, images, editor, args.seed), prompts, args.seed, settings, args.chunk),
                names,
            )["toy_identity"]
            for spec, b in breakers.items()
        }

    results = {"clean": identity_after(sources)}
    results["another person"] = {
        "none": effect.score(
            reader,
            sources,
            effect.edit_all(editor, np.roll(sources, 1, axis=0), prompts, args.seed, settings, args.chunk),
            names,
        )["toy_identity"]
    }
    way = results["clean"]["none"].mean() - results["another person"]["none"].mean()
    info = {}
    variants = [("noise", False)] + [
        (m, eot) for m in args.methods for eot in ([False, True] if eot_specs else [False])
    ]
    for variant, eot in variants:
        start = time.perf_counter()
        method = effect.build(variant, attack_prompts)
        transform = EOT(parse_breakers(eot_specs), editor) if eot else None
        protected = effect.protect_batch(
            editor,
            method,
            sources,
            args.eps,
            args.steps,
            alpha,
            args.seed,
            args.chunk,
            transform=transform,
            **({"eot_samples": args.eot_samples} if eot else {}),
        )
        protect_seconds = time.perf_counter() - start
        key = f"{variant}{' +EOT' if eot else ''}"
        results[key] = identity_after(protected)
        info[key] = {
            "psnr": float(np.mean([psnr(a, b) for a, b in zip(protected, sources, strict=False)])),
            "protect_s_per_image": protect_seconds / len(sources),
        }
        print(
            f"{key}: "
            + ", ".join(f"{s} {v.mean():.3f}" for s, v in results[key].items())
            + f" ({protect_seconds:.0f}s protect, {time.perf_counter() - start:.0f}s)",
            flush=True,
        )

    header = "| condition | " + " | ".join(breakers) + " | PSNR | s/image |"
    lines = [
        f"Toy {args.model!r}, {len(sources)} held-out identities x {len(prompts)} edits, {args.eps:g}/255, "
        f"PGD {args.steps} steps (alpha {alpha:.2f}/255), "
        f"EOT over {', '.join(eot_specs) or '-'} ({args.eot_samples} draw/step). "
        "Rows clean/noise: mean toy identity after each breaker; "
        "method rows: identity diff vs noise after the same breaker [95% CI], lower = still protecting; "
        f"way (clean - another person) = {way:.3f}.",
        "",
        header,
        "|" + "---|" * (len(breakers) + 3),
    ]
    for key in ["clean", "noise"]:
        lines.append(
            f"| {key} | "
            + " | ".join(f"{results[key][s].mean():.3f}" for s in breakers)
            + f" | {info.get(key, {}).get('psnr', float('nan')):.1f} | |"
        )
    for key in results:
        if key in ("clean", "noise", "another person"):
            continue
        cells = []
        for s in breakers:
            mean, lo, hi = effect.paired_bootstrap(results[key][s], results["noise"][s])
            cells.append(f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        lines.append(
            f"| {key} | " + " | ".join(cells) + f" | {info[key]['psnr']:.1f} | {info[key]['protect_s_per_image']:.1f} |"
        )
    print("\n".join(lines))
    print(f"({time.perf_counter() - began:.0f} s in all)")
    out = {
        "args": vars(args) | {"json": str(args.json)},
        "way": way,
        "info": info,
        "results": {k: {s: v.tolist() for s, v in r.items()} for k, r in results.items()},
    }
    if args.json:
        args.json.write_text(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
