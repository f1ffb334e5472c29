"""Write ``golden_tiny.<capability>.json`` for this CPU with the pre-relayering code (tests/test_golden.py).

The values must come from the OLD code, so this runs inside a checkout of commit f2cd873 (its API: one generator
per loss call), with that checkout's own tests/test_golden.py inputs (cases, pixels, prompts; the seeds below are
its test's) and the suite's torch thread count::

    git worktree add /tmp/old f2cd873
    cd /tmp/old && PYTHONPATH=. OMP_WAIT_POLICY=PASSIVE python /path/to/tests/data/write_golden.py /path/to/tests/data

The toy protections' pixels and the edit_away cases (added later, CPU-independent) stay in golden_tiny.json.
"""

import json
import sys
from pathlib import Path

import torch

import decontext
from decontext.editors import load_editor
from decontext.methods import build_method


def main(folder: Path) -> None:
    if Path.cwd().resolve() not in Path(decontext.__file__).resolve().parents:
        raise SystemExit(f"decontext comes from {decontext.__file__}, not the old checkout here: run with PYTHONPATH=.")
    from tests.test_golden import PROMPTS, _cases, _pixels  # the old checkout's test: the inputs it was written with

    capability = torch.backends.cpu.get_cpu_capability()
    print(f"decontext from {decontext.__file__}; {capability}; {torch.get_num_threads()} torch threads")
    pixels = _pixels()
    values = {}
    for family, name in _cases():
        editor = load_editor("tiny", family, "cpu", "float32")
        method = build_method(name, prompts=PROMPTS) if name != "encoder" else build_method(name)
        size = editor.working_size(48, 80, "native")
        with method.session(editor):
            method.start(editor, pixels, size)
            x = pixels.clone().requires_grad_(True)
            loss, _ = method.loss(editor, x, size, 0, torch.Generator().manual_seed(123))
            (grad,) = torch.autograd.grad(loss, x)
            measure = method.measure(editor, pixels, size, 2)
        values[f"{family}/{name}"] = {
            "grad_abs": float(grad.double().abs().sum()),
            "grad_first": [float(a) for a in grad.flatten()[:5]],
            "grad_sum": float(grad.double().sum()),
            "loss": float(loss.detach()),
            "measure": {k: float(v) for k, v in measure.items()},
        }
        print(family, name, values[f"{family}/{name}"]["loss"], flush=True)
    path = folder / f"golden_tiny.{capability}.json"
    if path.exists():
        raise SystemExit(f"{path} exists: move it away first (this script never overwrites a golden file)")
    path.write_text(json.dumps(values, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path} ({len(values)} cases)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
