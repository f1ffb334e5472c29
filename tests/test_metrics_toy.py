"""The toy metric backend, with each run's own toy reader (v1's for toy, v3's for toy-v3), on
ground-truth edits and on another person."""

import json

import numpy as np
import pytest
from PIL import Image

from decontext.metrics.base import registered
from decontext.metrics.evaluate import evaluate_run
from decontext.metrics.run import RunInfo, load_run
from decontext.metrics.toy import ToyBackend
from decontext.prompts import load_prompts
from decontext.toy import world, world3
from decontext.toy.model import PROMPTS_FILE


def _save(array, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.mark.parametrize("model,w", [("toy-v1", world), ("toy-v3", world3)], ids=["v1", "v3"])
def test_toy_backend_scores_ground_truth_edits_and_another_person(tmp_path, model, w):
    run = tmp_path / "run"
    pool = load_prompts(PROMPTS_FILE)
    identities = w.eval_identities()[:3]
    records = {"clean": [], "other": []}
    for n, identity in enumerate(identities):
        scene = w.sample_scene(identity, seed=n)
        stem = f"id{identity.index:03d}"
        _save(w.render(scene), run / "source" / f"{stem}.png")
        _save(w.render(scene), run / "other" / f"{stem}.png")
        stranger = w.sample_scene(w.eval_identities()[-10 - 11 * n], seed=n)
        for prompt in pool[::2]:  # one phrasing per edit
            for condition, base in (("clean", scene), ("other", stranger)):
                out = f"edits/{condition}/{stem}/{prompt.index}/seed0.png"
                _save(w.render(w.apply_edit(base, prompt.category)), run / out)
                records[condition].append(
                    {
                        "image": stem,
                        "input": f"source/{stem}.png",
                        "prompt": prompt.text,
                        "prompt_index": prompt.index,
                        "category": prompt.category,
                        "seed": 0,
                        "output": out,
                    }
                )
    for condition, edits in records.items():
        (run / "edits" / condition / "index.json").write_text(json.dumps({"settings": {}, "edits": edits}))
    (run / "run.json").write_text(json.dumps({"model": model, "editor": "flux_kontext"}))

    data = load_run(run)
    assert any(e.name == "toy" and e.applies(data.info) for e in registered())
    assert not [e for e in registered() if e.name == "toy"][0].applies(RunInfo(None, {"model": "tiny"}))
    result = evaluate_run(data, [ToyBackend()], progress=False)
    assert not result.unavailable, result.unavailable
    rows = {c: [r for r in result.edit_rows if r["condition"] == c] for c in ("clean", "other")}
    assert len(rows["clean"]) == len(rows["other"]) == 3 * 6
    # Ground-truth edits keep the person: the reader recovers (nearly) every attribute and sees the edit.
    assert np.mean([r["toy_identity"] for r in rows["clean"]]) >= 0.95
    assert np.mean([r["edit_success"] for r in rows["clean"]]) >= 0.95
    # Edits of somebody else: the edit is there, the identity is not.
    assert np.mean([r["toy_identity"] for r in rows["other"]]) <= 0.6
    assert np.mean([r["edit_success"] for r in rows["other"]]) >= 0.95
