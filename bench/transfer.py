#!/usr/bin/env python
"""Transfer matrix: protections made against one toy editor, edited with another.

Every method x protect-on {toy Kontext, toy InstructPix2Pix, both at once (the sum of the per-editor
losses)} x edit-with {toy Kontext, toy InstructPix2Pix}, on held-out faces, at one or more budgets.
Each cell is the toy identity of the edits of the protected faces minus that of the equal-budget
random-noise control edited by the same editor (paired by identity and edit, 95% bootstrap interval
over identities); lower = better protection. A method is only run against the editors it applies to
(DeContext needs a joint-attention context, so not InstructPix2Pix).

    python -m bench.transfer                                   # 30 identities, eps 16, all methods
    python -m bench.transfer --identities 8 --steps 20         # quick
    python -m bench.transfer --kontext toy-v2 --eps 8 16 32 --json runs/transfer.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.effect import (
    EDIT_PROMPT_INDICES,
    VARIANTS,
    build,
    edit_all,
    paired_bootstrap,
    pgd_options,
    protect_batch,
    score,
)
from decontext.cli.common import quiet_libraries

METHODS = (
    "noise",
    "decontext",
    "encoder",
    "flow_loss",
)  # the default columns (any bench/effect.py variant may be named)
EDITOR_FAMILIES = {"kontext": "flux_kontext", "ip2p": "instruct_pix2pix"}
TARGETS = ("kontext", "ip2p", "kontext+ip2p")  # protect-on; "+" = an ensemble


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--kontext", default="toy", help="the toy Kontext editor ('toy' = the default version, or a version name)"
    )
    parser.add_argument("--ip2p", default="toy-ip2p", help="the toy InstructPix2Pix editor")
    parser.add_argument("--identities", type=int, default=30)
    parser.add_argument("--eps", type=float, nargs="+", default=[16])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(VARIANTS))
    parser.add_argument(
        "--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS), help="editors to protect against"
    )
    parser.add_argument("--steps", type=int, default=200, help="PGD steps")
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
        "--update", default=None, choices=("sign", "l2"), help="PGD update rule (default: the method's, else sign)"
    )
    parser.add_argument(
        "--schedule",
        default=None,
        choices=("constant", "linear", "cosine"),
        help="PGD step-size schedule (default: the method's, else constant)",
    )
    parser.add_argument(
        "--random-start",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="PGD random start (default: the method's, else no)",
    )
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write every score here")
    parser.add_argument(
        "--ensemble-norm",
        default="none",
        choices=("none", "grad"),
        help="how a '+' target combines its editors' losses (decontext.methods.composite): "
        "none = plain sum (the published tables), grad = per-editor unit-gradient",
    )
    args = parser.parse_args(argv)
    args.methods = ["noise"] + [m for m in args.methods if m != "noise"]  # every cell is compared with it
    torch.set_num_threads(args.threads)
    quiet_libraries()

    from decontext.editors import load_editor
    from decontext.methods.composite import Composite, Term
    from decontext.prompts import load_prompts
    from decontext.toy import world
    from decontext.toy.model import PROMPTS_FILE
    from decontext.toy.reader import ToyReader, edit_name

    started = time.perf_counter()
    editors = {
        "kontext": load_editor(args.kontext, "flux_kontext", "cpu", "float32"),
        "ip2p": load_editor(args.ip2p, "instruct_pix2pix", "cpu", "float32"),
    }
    reader = ToyReader.load()
    pool = load_prompts(PROMPTS_FILE)
    prompts = [pool[i].text for i in EDIT_PROMPT_INDICES]
    names = [edit_name(pool[i].category) for i in EDIT_PROMPT_INDICES]
    attack_prompts = [p.text for p in pool]
    settings = {}
    for key, editor in editors.items():
        editor.prepare(attack_prompts + prompts, release=False)
        settings[key] = {
            "steps": int(editor.recommended["num_inference_steps"]),
            "guidance": float(editor.recommended["guidance_scale"]),
        }

    identities = world.eval_identities()[: args.identities]
    sources = np.stack(
        [world.render(world.sample_scene(identity, seed=args.seed + i)) for i, identity in enumerate(identities)]
    )
    scores: dict[str, dict] = {}

    def edit_and_score(label: str, images: np.ndarray) -> None:
        for key, editor in editors.items():
            r = score(reader, sources, edit_all(editor, images, prompts, args.seed, settings[key], args.chunk), names)
            scores[f"{label}|{key}"] = r
            print(
                f"  {label} edited with {key}: identity {r['toy_identity'].mean():.3f}, "
                f"edit success {r['edit_success'].mean():.3f}",
                flush=True,
            )

    t = time.perf_counter()
    edit_and_score("clean", sources)
    print(f"clean ({time.perf_counter() - t:.0f}s)", flush=True)
    cells = []
    for eps in args.eps:
        alpha = args.alpha or max(0.25, 4 * eps / max(args.steps, 1))
        for name in args.methods:
            targets = ["-"] if name == "noise" else args.targets
            for target in targets:
                members = [] if name == "noise" else [editors[k] for k in target.split("+")]
                method = build(name, attack_prompts)
                if not all(method.applies_to(e) for e in members):
                    print(f"{name} against {target}: does not apply (skipped)", flush=True)
                    continue
                t = time.perf_counter()
                on = members[0] if members else editors["kontext"]
                if len(members) > 1:  # one instance per editor: a method keeps per-editor state (blocks, prompts)
                    method = Composite(
                        [Term(build(name, attack_prompts), 1.0, e) for e in members], normalize=args.ensemble_norm
                    )
                protected = protect_batch(
                    on, method, sources, eps, args.steps, alpha, args.seed, args.chunk, **pgd_options(args)
                )
                label = f"{name}@{eps:g}" + ("" if name == "noise" else f" on {target}")
                print(f"{label}: protected ({time.perf_counter() - t:.0f}s)", flush=True)
                edit_and_score(label, protected)
                cells.append((eps, name, target, label))

    lines = [
        f"Toy Kontext {args.kontext!r} and toy InstructPix2Pix {args.ip2p!r}; "
        f"{len(identities)} held-out identities x {len(prompts)} edits; "
        f"PGD {args.steps} steps. "
        "Cells: toy_identity of the edits minus that of equal-budget noise edited by the same editor "
        "(paired, 95% bootstrap CI over identities); lower = better protection.",
        "",
        "| eps | method | protected against | edited with toy Kontext | edited with toy IP2P |",
        "|---|---|---|---|---|",
    ]
    absolute = lambda r: f"identity {r['toy_identity'].mean():.3f}, edit success {r['edit_success'].mean():.3f}"  # noqa: E731
    lines.append(
        "| - | clean (no protection) | - | " + " | ".join(absolute(scores[f"clean|{k}"]) for k in editors) + " |"
    )
    for eps, name, target, label in cells:
        row = [f"{eps:g}", name, target]
        for key in editors:
            r = scores[f"{label}|{key}"]
            if name == "noise":
                row.append(absolute(r))
                continue
            mean, lo, hi = paired_bootstrap(r["toy_identity"], scores[f"noise@{eps:g}|{key}"]["toy_identity"])
            row.append(f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        lines.append("| " + " | ".join(row) + " |")
    print("\n".join(lines))
    print(f"wall time {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({k: {m: v.tolist() for m, v in r.items()} for k, r in scores.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
