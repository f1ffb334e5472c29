"""A tiny synthetic run folder (docs/RUN_LAYOUT.md) for tests, docs and trying the evaluation.

Built from scikit-image's public-domain astronaut portrait, without any attack or editor:
``protected/`` = source + a small +-eps sign perturbation, clean edits = mild photometric changes and
a painted "hat", protected edits = the same changes on the protected image, except that for the
first image the protected edits are washed out (no face left), as a stand-in for a protection that
worked. Seeded, so it is the same every time.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from decontext.prompts import load_prompts


def _face_crop(size: int) -> np.ndarray:
    from skimage import data

    img = data.astronaut()[0:256, 100:356]  # the face sits in this square
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC))


def _edit(img: np.ndarray, position: int) -> np.ndarray:
    out = img.astype(np.int16)
    if position % 2 == 0:
        out = out + 12  # brighter
    else:
        h, w = out.shape[:2]
        out[: h // 8, w // 4 : 3 * w // 4] = (200, 30, 30)  # a red "cap"
    return np.clip(out, 0, 255).astype(np.uint8)


def _washed_out(img: np.ndarray) -> np.ndarray:
    grey = np.full_like(img, 128)
    return (0.9 * grey + 0.1 * img).astype(np.uint8)


def make_demo_run(
    root: Path,
    size: int = 128,
    prompt_indices: tuple[int, ...] = (0, 10),
    seed: int = 42,
    eps: float = 4 / 255,
    extra_condition: str | None = None,
) -> Path:
    """Write a run folder at ``root`` (created) with stems ``a`` and ``b``; returns ``root``.

    ``extra_condition`` adds a third condition (e.g. "noise") whose input is source + random noise
    and whose edits are the clean edits of that input.
    """
    root = Path(root)
    pool = {p.index: p for p in load_prompts()}
    rng = np.random.default_rng(0)
    base = _face_crop(size)
    sources = {"a": base, "b": base[:, ::-1].copy()}
    conditions = ["clean", "protected"] + ([extra_condition] if extra_condition else [])
    for d in ["source", "protected"] + conditions[2:]:
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "run.json").write_text(json.dumps({"model": "tiny", "editor": "flux_kontext", "demo": True}, indent=2))
    inputs: dict[str, dict[str, np.ndarray]] = {"clean": sources, "protected": {}}
    for stem, img in sources.items():
        Image.fromarray(img).save(root / "source" / f"{stem}.png")
        delta = np.sign(rng.standard_normal(img.shape)) * eps * 255
        prot = np.clip(np.rint(img + delta), 0, 255).astype(np.uint8)
        inputs["protected"][stem] = prot
        Image.fromarray(prot).save(root / "protected" / f"{stem}.png")
    if extra_condition:
        inputs[extra_condition] = {}
        for stem, img in sources.items():
            noisy = np.clip(np.rint(img + rng.uniform(-eps, eps, img.shape) * 255), 0, 255).astype(np.uint8)
            inputs[extra_condition][stem] = noisy
            Image.fromarray(noisy).save(root / extra_condition / f"{stem}.png")
    for cond in conditions:
        records = []
        for stem in sources:
            for position, pi in enumerate(prompt_indices):
                edited = _edit(inputs[cond][stem], position)
                if cond == "protected" and stem == "a":
                    edited = _washed_out(edited)
                rel = Path("edits") / cond / stem / str(pi) / f"seed{seed}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(edited).save(root / rel)
                in_rel = f"source/{stem}.png" if cond == "clean" else f"{cond}/{stem}.png"
                records.append(
                    {
                        "image": stem,
                        "input": in_rel,
                        "prompt": pool[pi].text,
                        "prompt_index": pi,
                        "category": pool[pi].category,
                        "seed": seed,
                        "output": str(rel),
                        "seconds": 0.0,
                    }
                )
        index = {
            "settings": {"model": "tiny", "steps": 2, "guidance": 3.5, "resolution": size, "prompts_file": "default"},
            "edits": records,
        }
        (root / "edits" / cond / "index.json").write_text(json.dumps(index, indent=2))
    return root
