#!/usr/bin/env python
"""Amortized protection on the toy (docs/EVIDENCE.md, "Amortized protection"): a trained protector alone,
the protector + K PGD steps (``--init``), and PGD-K / PGD-N from the clean image, on the held-out
identities, at the protector's budget, in one run.

Per condition: the method's own measure (the objective the protector was trained on, over fixed draws),
toy identity and edit success of the six toy edits, the identity difference against the random-noise
control (paired, 95% bootstrap interval over identities), PSNR of the saved file, and milliseconds per
image of the protection itself. PGD runs the effect bench's rule (sign steps of max(0.25, 4 eps / steps)
per 255 from the clean image; the noise control is its own start). Transfer: the protector applied alone
to other toy editors (--transfer), against their own noise control.

    python -m bench.amortized --protector toy-decontext --json runs/amortized/toy-decontext.json
    python -m bench.amortized --protector toy-encoder --transfer
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from bench import effect, save_json
from decontext.cli.common import quiet_libraries
from decontext.config import PGDConfig, ProtectConfig
from decontext.images import quantize, uint8_to_tensor
from decontext.metrics.pixel import psnr
from decontext.protect import protect


def run_protection(
    editor, method, sources: np.ndarray, config: ProtectConfig, seed: int, chunk: int
) -> tuple[np.ndarray, float]:
    """(saved uint8 images, milliseconds per image) of ``method`` under ``config`` (its init, its steps)."""
    out, began = [], time.perf_counter()
    for start in range(0, len(sources), chunk):
        part = sources[start : start + chunk]
        x0 = torch.cat([uint8_to_tensor(im) for im in part])
        pixels = protect(editor, method, x0, config, seed=seed + start).pixels
        out.extend(quantize(pixels[i : i + 1], part[i], config.pgd.eps) for i in range(len(part)))
    return np.stack(out), 1000 * (time.perf_counter() - began) / len(sources)


def measure_each(editor, method, images: np.ndarray, draws: int) -> np.ndarray:
    """The method's measure of each image (its first value), over fixed draws."""
    size = images.shape[1:3]
    values = []
    with method.session(editor):
        for image in images:
            measured = method.measure(editor, uint8_to_tensor(image), size, draws)
            values.append(next(iter(measured.values())))
    return np.array(values)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--protector", default="toy-decontext", help="a protector trained on a toy editor (shipped name or folder)"
    )
    ap.add_argument("--identities", type=int, default=100)
    ap.add_argument(
        "--k", type=int, nargs="+", default=[5, 10, 20], help="PGD steps after the protector (and from the clean image)"
    )
    ap.add_argument("--pgd-steps", type=int, default=200, help="the long PGD run from the clean image")
    ap.add_argument("--draws", type=int, default=4, help="fixed draws of the method's measure")
    ap.add_argument(
        "--transfer",
        nargs="*",
        default=None,
        metavar="MODEL",
        help="also apply the protector alone to these toy editors (default with the flag: toy-v2 toy-ip2p)",
    )
    ap.add_argument("--chunk", type=int, default=25)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    quiet_libraries()
    torch.manual_seed(0)
    from decontext.editors import load_editor
    from decontext.methods import build_method
    from decontext.methods.amortized import load_protector, protected_start, read_config
    from decontext.toy.names import toy_family

    trained = read_config(args.protector)
    eps = float(trained["eps"])
    model = trained["editor"]["model"]
    editor, reader, prompts, names, settings, sources, _ = effect.toy_setup(model, args.identities, args.seed)
    options = dict(trained["method"].get("options", {}))
    objective_name = trained["method"]["method"]
    objective = build_method(objective_name, **options)  # exactly what the protector was trained on
    load_protector(args.protector)  # loaded once, outside the timed protection

    def pgd(steps: int, init: str | None = None) -> ProtectConfig:
        # From the clean image, the effect bench's rule (4 eps over the run). From the protector, a quarter of
        # that (one crossing of the ball over the run): 4 eps / K sign steps would throw the start away in two.
        alpha = max(0.25, (eps if init else 4 * eps) / max(steps, 1))
        return ProtectConfig(
            pgd=PGDConfig.for_method(objective, eps=eps, alpha=alpha, steps=steps),
            resolution="native",
            measure_draws=0,
            init=init,
        )

    noise = build_method("noise")
    conditions = {
        "noise": (noise, ProtectConfig(pgd=PGDConfig.for_method(noise, eps=eps), resolution="native", measure_draws=0)),
        "protector": (
            build_method("amortized", protector=args.protector),
            ProtectConfig(pgd=PGDConfig(eps=eps, steps=0), resolution="native", measure_draws=0),
        ),
    }
    for k in args.k:
        conditions[f"protector + {k} steps"] = (objective, pgd(k, init=args.protector))
    for k in [*args.k, args.pgd_steps]:
        conditions[f"PGD-{k}"] = (objective, pgd(k))
    began = time.perf_counter()
    results = {
        "clean": {
            **effect.score(
                reader, sources, effect.edit_all(editor, sources, prompts, args.seed, settings, args.chunk), names
            ),
            "measure": measure_each(editor, objective, sources, args.draws),
        }
    }
    extra: dict[str, dict] = {}
    for name, (method, config) in conditions.items():
        protected, ms = run_protection(editor, method, sources, config, args.seed, args.chunk)
        edits = effect.edit_all(editor, protected, prompts, args.seed, settings, args.chunk)
        results[name] = {
            **effect.score(reader, sources, edits, names),
            "measure": measure_each(editor, objective, protected, args.draws),
        }
        extra[name] = {
            "psnr": float(np.mean([psnr(a, b) for a, b in zip(protected, sources, strict=False)])),
            "ms_per_image": ms,
            "max_levels": int(np.abs(protected.astype(int) - sources.astype(int)).max()),
        }
        print(
            f"{name}: identity {results[name]['toy_identity'].mean():.3f}, "
            f"measure {results[name]['measure'].mean():.4f}, "
            f"{ms:.1f} ms/image ({time.perf_counter() - began:.0f} s)",
            flush=True,
        )
    # The protector's forward pass alone (batched, what a service runs), beside the library call's time above.
    protector = load_protector(args.protector)
    x_all = torch.cat([uint8_to_tensor(im) for im in sources])
    protected_start(protector, editor, x_all[: args.chunk], "native", eps)  # warm-up
    began_forward = time.perf_counter()
    for start in range(0, len(sources), args.chunk):
        part = protected_start(protector, editor, x_all[start : start + args.chunk], "native", eps)
        [quantize(part[i : i + 1], sources[start + i], eps) for i in range(len(part))]
    extra["protector"]["forward_ms_per_image"] = 1000 * (time.perf_counter() - began_forward) / len(sources)
    print(f"protector forward alone: {extra['protector']['forward_ms_per_image']:.2f} ms/image", flush=True)
    transfer = {}
    if args.transfer is not None:
        for other in args.transfer or ["toy-v2", "toy-ip2p"]:
            editor2 = load_editor(other, toy_family(other), "cpu", "float32")
            editor2.prepare(prompts, release=False)
            settings2 = {
                "steps": int(editor2.recommended["num_inference_steps"]),
                "guidance": float(editor2.recommended["guidance_scale"]),
            }
            x0 = torch.cat([uint8_to_tensor(im) for im in sources])
            shielded = np.stack(
                [
                    quantize(p[None], s, eps)
                    for p, s in zip(protected_start(protector, editor2, x0, "native"), sources, strict=False)
                ]
            )
            noised, _ = run_protection(editor2, noise, sources, conditions["noise"][1], args.seed, args.chunk)
            rows = {
                name: effect.score(
                    reader, sources, effect.edit_all(editor2, images, prompts, args.seed, settings2, args.chunk), names
                )
                for name, images in (("noise", noised), ("protector", shielded))
            }
            transfer[other] = {
                "diff": effect.paired_bootstrap(rows["protector"]["toy_identity"], rows["noise"]["toy_identity"]),
                "identity": float(rows["protector"]["toy_identity"].mean()),
                "noise": float(rows["noise"]["toy_identity"].mean()),
            }
            print(f"transfer to {other}: identity diff vs noise {transfer[other]['diff']}", flush=True)

    lines = [
        f"Protector {args.protector} ({objective_name} objective, eps {eps:g}/255, "
        f"{trained.get('steps')} training steps) on {model}, "
        f"{len(sources)} held-out identities x {len(prompts)} edits; "
        f"measure = the {objective_name} measure over {args.draws} fixed draws; "
        "diff = condition - noise (paired, 95% bootstrap CI over identities); "
        "ms = protection time per image on this CPU",
        "",
        "| condition | measure | toy_identity | edit_success | identity diff vs noise [95% CI] "
        "| PSNR (dB) | ms/image |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        diff = ""
        if name not in ("clean", "noise"):
            mean, lo, hi = effect.paired_bootstrap(r["toy_identity"], results["noise"]["toy_identity"])
            diff = f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        info = extra.get(name, {})
        lines.append(
            f"| {name} | {r['measure'].mean():.4f} | {r['toy_identity'].mean():.3f} "
            f"| {r['edit_success'].mean():.3f} | {diff} | "
            f"{info.get('psnr', float('nan')):.1f} | {info.get('ms_per_image', float('nan')):.1f} |"
        )
    long = f"PGD-{args.pgd_steps}"
    effect_of = lambda name, key: results[name][key].mean() - results["noise"][key].mean()  # noqa: E731
    goals = {
        "speedup_vs_pgd": extra[long]["ms_per_image"] / extra["protector"]["ms_per_image"],
        "speedup_vs_pgd_forward": extra[long]["ms_per_image"] / extra["protector"]["forward_ms_per_image"],
        "measure_share_of_pgd": effect_of("protector", "measure") / effect_of(long, "measure"),
        "identity_share_of_pgd": effect_of("protector", "toy_identity") / effect_of(long, "toy_identity"),
        "protector+20_minus_pgd_identity": float(
            results.get("protector + 20 steps", results["protector"])["toy_identity"].mean()
            - results[long]["toy_identity"].mean()
        ),
    }
    lines += [
        "",
        f"protector vs {long}: {goals['speedup_vs_pgd']:.0f}x faster per image through the library call, "
        f"{goals['speedup_vs_pgd_forward']:.0f}x by its forward pass alone "
        f"({extra['protector']['forward_ms_per_image']:.2f} ms/image); "
        f"{goals['measure_share_of_pgd']:.0%} of its effect on the measure "
        f"and {goals['identity_share_of_pgd']:.0%} on identity (both against noise); "
        f"protector + 20 steps minus {long} in identity: "
        f"{goals['protector+20_minus_pgd_identity']:+.3f} (negative = better)",
    ]
    for other, t in transfer.items():
        lines.append(
            f"transfer to {other}: identity {t['identity']:.3f} vs noise {t['noise']:.3f}, "
            f"diff {t['diff'][0]:+.3f} [{t['diff'][1]:+.3f}, {t['diff'][2]:+.3f}]"
        )
    print("\n".join(lines))
    out = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "results": {k: {m: np.asarray(v).tolist() for m, v in r.items()} for k, r in results.items()},
        "extra": extra,
        "goals": goals,
        "transfer": transfer,
        "table": lines,
    }
    save_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
