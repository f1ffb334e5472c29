"""``decontext toy-faces`` and ``decontext toy-eval``: the toy world's held-out faces as PNG, and the
held-out evaluation of a toy editor (docs/TOY.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..toy.worlds import WORLDS


def faces_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="decontext toy-faces", description=faces.__doc__)
    ap.add_argument("--out", required=True, help="folder for the PNG files")
    ap.add_argument(
        "--count", type=int, default=20, help="how many held-out identities (default 20; world v1 has 100, v3 48)"
    )
    ap.add_argument(
        "--world",
        choices=sorted(WORLDS),
        default=None,
        help="toy world: v1 (identity is colour) or v3 (identity is shape) "
        "(default: the world of the default toy editor)",
    )
    ap.add_argument("--seed", type=int, default=42, help="seed of the nuisance (background, position) (default 42)")
    return ap


def faces(argv=None) -> int:
    """``decontext toy-faces --count 20 --out runs/demo/source``: the first held-out identities (never trained
    on), nuisance from ``seed + index``, named ``id<identity index>.png``; existing files are kept."""
    args = faces_parser().parse_args(argv)
    from ..toy.export import export_faces

    try:
        paths = export_faces(args.out, args.count, args.seed, args.world)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(paths)} held-out toy faces in {args.out}")
    return 0


def evaluate_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="decontext toy-eval",
        description="Held-out evaluation of a toy editor (decontext.toy.evaluate): "
        "clean-edit identity and edit success on held-out faces, the VAE ceiling, "
        "and another person as context (chance).",
    )
    ap.add_argument(
        "--model",
        default="toy",
        help="toy editor ('toy' = the default, 'toy-v1', ..., 'toy-ip2p') or a trained editor folder",
    )
    ap.add_argument(
        "--identities",
        type=int,
        default=None,
        help="number of held-out identities (default all of the editor's world: 100 in v1, 48 in v3)",
    )
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the editor folder's)")
    ap.add_argument("--guidance", type=float, default=None, help="guidance (default: the editor folder's)")
    ap.add_argument("--seed", type=int, default=0, help="sampler seed")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--json", help="also write the results to this file")
    return ap


def evaluate(argv=None) -> int:
    """``decontext toy-eval``: clean identity, edit success and chance of a toy editor on held-out faces."""
    args = evaluate_parser().parse_args(argv)
    import torch

    from ..toy.evaluate import evaluate as run_evaluation
    from ..toy.names import is_toy_model, toy_editor_dir

    torch.set_num_threads(args.threads)

    editor_dir = toy_editor_dir(args.model) if is_toy_model(args.model) else Path(args.model)
    res = run_evaluation(args.identities, args.steps, args.guidance, args.seed, editor_dir=editor_dir)
    print(
        f"held-out identities: {res['n_identities']} x 6 edits = {res['n_edits']} edits; "
        f"steps {res['steps']}, guidance {res['guidance']}"
    )
    print(f"VAE PSNR (sources + ground-truth edits): {res['vae_psnr']:.2f} dB")
    for key in ("ground_truth", "vae_ceiling", "clean_edit", "other_person"):
        r = res[key]
        print(f"{key:13s} toy_identity {r['toy_identity']:.3f}  edit_success {r['edit_success']:.3f}")
    print(
        f"other_person pairs share {res['other_person_truth']:.3f} of their attributes in truth "
        "(what taking the whole context person scores)"
    )
    print(
        "per edit (clean_edit): "
        + ", ".join(
            f"{e} {v['toy_identity']:.2f}/{v['edit_success']:.2f}" for e, v in res["clean_edit"]["per_edit"].items()
        )
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    print(
        json.dumps(
            {
                k: (v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items() if kk != "per_edit"})
                for k, v in res.items()
            }
        )
    )
    return 0
