"""Several images per PGD step (``protect(seeds=...)``, ``--batch-size``): each image's result equals its
run alone within float tolerance, each keeps its budget, and the per-image stopping rule holds."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from decontext.config import PGDConfig, ProtectConfig
from decontext.editors import load_editor
from decontext.methods import build_method
from decontext.protect import protect


@pytest.fixture(scope="module")
def tiny():
    return load_editor("tiny", "flux_kontext", "cpu", "float32")


def _images(count: int, size=(48, 64)) -> torch.Tensor:
    rng = np.random.default_rng(3)
    return torch.from_numpy(rng.uniform(0.1, 0.9, (count, 3, *size)).astype(np.float32))


@pytest.mark.parametrize("name", ["decontext", "encoder", "flow_loss"])
def test_a_batch_gives_each_image_its_run_alone(tiny, name):
    method = (
        build_method(name, prompts=["make it red", "add a hat", "turn it into a painting"])
        if name != "encoder"
        else build_method(name)
    )
    pgd = PGDConfig.for_method(
        method, steps=6, momentum=0.9, schedule="cosine", start="uniform"
    )  # per-image normalisation and starts matter
    config = ProtectConfig(pgd=pgd, resolution="native", measure_draws=2)
    x, seeds = _images(3), [11, 22, 33]
    together = protect(tiny, method, x, config, seeds=seeds)
    for i, seed in enumerate(seeds):
        alone = protect(tiny, method, x[i : i + 1], config, seed=seed)
        diff = (together.pixels[i : i + 1] - alone.pixels).abs()
        # a sign step can flip where a gradient is ~0, moving a pixel by alpha; everything else equal
        assert float((diff > 1e-5).float().mean()) < 0.01, float((diff > 1e-5).float().mean())
        assert float(diff.max()) <= 2 * pgd.alpha / 255 + 1e-6
        assert float((together.pixels[i] - x[i]).abs().max()) <= pgd.eps / 255 + 1e-6  # each keeps its budget
        for key, value in alone.after.items():
            assert together.images[i].after[key] == pytest.approx(value, rel=1e-3, abs=1e-5)
        assert together.images[i].before == pytest.approx(alone.before, rel=1e-4)
        assert together.images[i].steps_run == alone.steps_run == 6
        assert together.images[i].losses == pytest.approx(alone.images[0].losses, rel=1e-3, abs=1e-5)


def test_methods_that_take_one_image_at_a_time_say_so(tiny):
    method = build_method("danp", prompts=["make it red"])
    with pytest.raises(ValueError, match="one image at a time"):
        protect(
            tiny,
            method,
            _images(2),
            ProtectConfig(pgd=PGDConfig(steps=1), resolution="native", measure_draws=0),
            seeds=[1, 2],
        )


def test_each_image_stops_on_its_own_plateau():
    from decontext.pgd import PGD

    x0 = torch.full((2, 3, 8, 8), 0.5)
    goal = torch.tensor([0.55, 0.7]).reshape(2, 1, 1, 1)  # image 0 reaches its top in ~7 steps, image 1 in ~26

    def loss(x, step, generators):
        assert isinstance(generators, list) and len(generators) == x.shape[0]
        return -(x - goal[: x.shape[0]] if x.shape[0] == 2 else x - goal[1:]).abs().flatten(1).sum(1)

    config = PGDConfig.for_method(
        None,
        preset="fast",
        eps=64,
        alpha=2,
        steps=200,
        momentum=0.0,
        schedule="constant",
        stop_patience=10,
        stop_window=3,
    )
    result = PGD(config=config, progress=False).run(x0, loss, seeds=[1, 2])
    assert result.image_steps[0] < result.image_steps[1] < 200
    assert all(r.startswith("plateau") for r in result.image_reasons)
    assert torch.allclose(result.pixels[1], torch.full_like(x0[1], 0.7), atol=2 / 255 + 1e-6)


def test_cli_batch_size_matches_one_at_a_time(tmp_path):
    from decontext.cli import run

    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(inputs / f"same{k}.png")
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(inputs / "other.png")
    common = [
        "--model",
        "tiny",
        "--input",
        str(inputs),
        "--resolution",
        "native",
        "--steps",
        "5",
        "--measure-draws",
        "1",
        "--no-progress",
    ]
    assert run("attack", [*common, "--output", str(tmp_path / "one")]) == 0
    assert run("attack", [*common, "--output", str(tmp_path / "three"), "--batch-size", "3"]) == 0
    batched = json.loads((tmp_path / "three" / "manifest.json").read_text())["images"]
    assert [batched[f"same{k}.png"].get("batch") for k in range(3)] == [3, 3, 3] and "batch" not in batched["other.png"]
    for name in ("same0.png", "same1.png", "same2.png", "other.png"):
        a = np.asarray(Image.open(tmp_path / "one" / name)).astype(int)
        b = np.asarray(Image.open(tmp_path / "three" / name)).astype(int)
        source = np.asarray(Image.open(inputs / name)).astype(int)
        assert np.abs(b - source).max() <= 12 and batched[name]["max_abs_diff_levels"] == np.abs(b - source).max()
        assert (a != b).mean() < 0.01, (name, (a != b).mean())
    # a re-run with another batch size finds everything done
    assert run("attack", [*common, "--output", str(tmp_path / "three")]) == 0
    refused = run("attack", [*common, "--output", str(tmp_path / "x"), "--batch-size", "2", "--method", "danp"])
    assert refused == 2


def test_compiled_blocks_equal_eager():
    """``--compile`` (regional torch.compile): the loss and its pixel gradient equal eager ones. Compiled with
    the aot_eager backend here (dynamo's tracing and the autograd split, through the hooked processors and
    the forward that stops after the probed blocks) to keep the suite fast; inductor's kernels are compared
    with eager in bench/steps.py --compile."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    method = build_method("decontext", prompts=["make it red", "add a hat"])
    x0, size = _images(1, (64, 64)), (64, 64)

    def step():
        x = x0.clone().requires_grad_(True)
        loss, _ = method.loss(editor, x, size, 0, [torch.Generator().manual_seed(5)])
        (grad,) = torch.autograd.grad(loss, x)
        return loss.detach(), grad

    editor = load_editor("tiny", "flux_kontext", "cpu", "float32")  # its own copy: compiling is in place
    with method.session(editor):
        eager_loss, eager_grad = step()
        torch._dynamo.reset()
        counters.clear()
        assert editor.compile_blocks(backend="aot_eager") == sum(editor.depths.values())  # every block of the model
        loss, grad = step()
    assert counters["stats"]["unique_graphs"] >= 1 and not counters["graph_break"]
    assert float(loss) == pytest.approx(float(eager_loss), rel=1e-6)
    assert torch.allclose(grad, eager_grad, rtol=1e-4, atol=1e-7 * float(eager_grad.abs().max()))
