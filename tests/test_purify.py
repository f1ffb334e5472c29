"""Breakers (decontext/purify.py), their differentiable counterparts, and EOT through the PGD engine."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from decontext import purify
from decontext.cli import purify as purify_cli
from decontext.pgd import PGD, PGDConfig
from decontext.runs import condition_input_dir
from decontext.toy import world

# Stated tolerances: mean |real - differentiable| on toy faces and photos, in 1/255 (docs/ROBUSTNESS.md).
TOLERANCE = {
    "jpeg": 2.5,
    "jpeg:quality=50": 2.5,
    "resize": 1.5,
    "resize:factor=0.25": 1.6,
    "blur": 0.75,
    "blur:sigma=2": 0.75,
}


def faces(n=3):
    return [Image.fromarray(world.render(world.sample_scene(world.eval_identities()[i], seed=i))) for i in range(n)]


def photo(seed=0, size=(80, 96)):
    """A photo-like image: smooth gradients plus texture (odd sizes on purpose)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    base = np.stack([xx / size[1], yy / size[0], (xx + yy) / sum(size)], -1) * 200 + 20
    return Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))


def as_tensor(image):
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]


@pytest.mark.parametrize(
    "spec", ["jpeg", "webp", "resize", "resize:factor=0.3,filter=lanczos", "blur", "noise", "noise_upscale"]
)
def test_breakers_keep_size_and_are_deterministic(spec):
    breaker = purify.parse_breaker(spec)
    image = photo()
    out = breaker(image, seed=3)
    assert out.size == image.size and out.mode == "RGB"
    assert np.array_equal(np.asarray(out), np.asarray(breaker(image, seed=3)))
    assert not np.array_equal(np.asarray(out), np.asarray(image))  # it does something
    if spec.startswith("noise"):
        assert not np.array_equal(np.asarray(out), np.asarray(breaker(image, seed=4)))  # the seed matters


def test_jpeg_really_reencodes():
    image = photo()
    out = purify.jpeg(image, quality=75)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=75)
    assert np.array_equal(np.asarray(out), np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))
    errors = [
        np.abs(np.asarray(purify.jpeg(image, quality=q), dtype=float) - np.asarray(image, dtype=float)).mean()
        for q in (10, 50, 95)
    ]
    assert errors[0] > errors[1] > errors[2] > 0  # lower quality, larger change
    again = purify.jpeg(out, quality=75)  # close to a fixed point
    assert np.abs(np.asarray(again, dtype=float) - np.asarray(out, dtype=float)).mean() < errors[1] / 2


def test_resize_and_blur_remove_fine_detail_and_noise_has_its_sigma():
    checker = Image.fromarray(((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8).repeat(3).reshape(64, 64, 3))
    assert np.asarray(purify.resize(checker, 0.5)).std() < 0.2 * np.asarray(checker).std()
    assert np.asarray(purify.blur(checker, 1.0)).std() < 0.2 * np.asarray(checker).std()
    flat = Image.new("RGB", (128, 128), (128, 128, 128))
    residual = np.asarray(purify.noise(flat, sigma=8.0), dtype=float) - 128
    assert abs(residual.std() - 8.0) < 0.3 and abs(residual.mean()) < 0.2


@pytest.mark.parametrize("spec", sorted(TOLERANCE))
def test_differentiable_breakers_match_the_real_ones(spec):
    breaker = purify.parse_breaker(spec)
    transform = breaker.differentiable()
    for image in faces() + [photo(1), photo(2, (64, 64))]:
        real = np.asarray(breaker(image), dtype=np.float32) / 255
        smooth = transform(as_tensor(image), torch.Generator().manual_seed(0))[0].permute(1, 2, 0).numpy()
        assert np.abs(real - smooth).mean() * 255 <= TOLERANCE[spec], spec


def test_differentiable_noise_matches_in_distribution():
    flat = torch.full((1, 3, 96, 96), 0.5)
    for spec in ("noise", "noise_upscale"):
        transform = purify.parse_breaker(spec).differentiable()
        real = (
            np.asarray(purify.parse_breaker(spec)(Image.new("RGB", (96, 96), (128, 128, 128))), dtype=np.float32) / 255
            - 128 / 255
        )
        smooth = (transform(flat, torch.Generator().manual_seed(0)) - 0.5).numpy()
        assert abs(real.std() - smooth.std()) * 255 < 0.6, spec


@pytest.mark.parametrize("spec", ["jpeg", "resize", "blur", "noise", "noise_upscale"])
def test_differentiable_breakers_have_gradients(spec):
    x = as_tensor(photo()).requires_grad_(True)
    out = purify.parse_breaker(spec).differentiable()(x, torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad((out * torch.linspace(0, 1, out.numel()).reshape(out.shape)).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("spec", ["resize", "blur:sigma=1.5"])
def test_linear_breakers_gradient_matches_finite_differences(spec):
    transform = purify.parse_breaker(spec).differentiable()
    x = torch.rand(1, 3, 24, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.6 + 0.2
    weights = torch.rand(1, 3, 24, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def loss(v):
        return (transform(v, torch.Generator()) * weights).sum()

    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(xg), xg)
    for index in [(0, 0, 5, 7), (0, 2, 23, 0), (0, 1, 12, 12)]:
        e = torch.zeros_like(x)
        e[index] = 1e-6
        numeric = (loss(x + e) - loss(x - e)) / 2e-6
        assert float(grad[index]) == pytest.approx(float(numeric), rel=1e-5, abs=1e-8)


def test_vae_roundtrip_through_an_editors_autoencoder():
    from decontext.editors.flux_kontext import FluxKontextEditor

    editor = FluxKontextEditor.tiny(seed=2)
    breaker = purify.parse_breaker("vae")
    image = photo(size=(60, 70))
    out = breaker(image, editor=editor)
    assert out.size == image.size
    with pytest.raises(ValueError, match="needs an editor"):
        breaker(image)
    x = as_tensor(image).requires_grad_(True)
    (grad,) = torch.autograd.grad(breaker.differentiable(editor)(x, torch.Generator()).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_specs_and_their_errors():
    assert purify.parse_breaker("jpeg:quality=50").params == {"quality": 50}
    assert purify.parse_breaker("resize:factor=0.25,filter=bilinear").label == "resize_factor0.25_filterbilinear"
    assert [b.kind for b in purify.parse_breakers(["jpeg,resize", "blur:sigma=2;noise"])] == [
        "jpeg",
        "resize",
        "blur",
        "noise",
    ]
    with pytest.raises(ValueError, match="unknown breaker 'gif'"):
        purify.parse_breaker("gif")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        purify.parse_breaker("jpeg:q=50")
    with pytest.raises(ValueError, match="takes a int"):
        purify.parse_breaker("jpeg:quality=high")
    with pytest.raises(ValueError, match="unknown filter"):
        purify.parse_breaker("resize:filter=sinc")
    with pytest.raises(ValueError, match="quality must be in 1..100"):
        purify.jpeg(photo(), quality=0)
    with pytest.raises(ValueError, match="no differentiable version"):
        purify.parse_breaker("webp").differentiable()


def test_pgd_averages_eot_draws():
    """Each step draws the transform eot_samples times; the logged loss is the mean over the draws."""
    factors = iter([1.0, 3.0] * 10)
    drawn = []

    def transform(x, generator):
        drawn.append(next(factors))
        return x * drawn[-1]

    x0 = torch.full((1, 3, 4, 4), 0.5)
    result = PGD(config=PGDConfig(eps=8, alpha=1, steps=3, eot_samples=2), transform=transform, progress=False).run(
        x0, lambda x, step, gen: x.sum()
    )
    assert len(drawn) == 6
    first = result.history[0]["loss"]
    assert first == pytest.approx(2.0 * 0.5 * 48)  # mean of 1x and 3x the clean sum
    with pytest.raises(ValueError, match="eot_samples"):
        PGDConfig(eot_samples=0)
    # without a transform, eot_samples changes nothing: bit-identical to one draw
    plain = PGD(config=PGDConfig(eps=8, alpha=1, steps=3), progress=False).run(x0, lambda x, step, gen: (x**2).sum())
    many = PGD(config=PGDConfig(eps=8, alpha=1, steps=3, eot_samples=4), progress=False).run(
        x0, lambda x, step, gen: (x**2).sum()
    )
    assert torch.equal(plain.pixels, many.pixels)


def test_eot_draws_every_breaker_with_the_engine_generator():
    eot = purify.EOT(purify.parse_breakers("jpeg,resize,blur"))
    gen = torch.Generator().manual_seed(0)
    x = as_tensor(photo())
    for _ in range(30):
        eot(x, gen)
    assert set(eot.drawn) == {"jpeg_quality75", "resize_factor0.5_filterbicubic", "blur_sigma1.0"}
    with pytest.raises(ValueError, match="no differentiable version"):
        purify.EOT(purify.parse_breakers("webp"))


def test_attack_with_eot_on_the_tiny_model_stays_in_budget(tmp_path):
    import json

    from decontext.cli.attack import main as attack_main
    from decontext.images import load_image, max_level_diff

    source = tmp_path / "in.png"
    photo(size=(64, 64)).save(source)
    out = tmp_path / "out"
    args = [
        "--model",
        "tiny",
        "--input",
        str(source),
        "--output",
        str(out),
        "--steps",
        "2",
        "--eps",
        "8",
        "--alpha",
        "2",
        "--resolution",
        "64",
        "--measure-draws",
        "0",
        "--no-progress",
        "--eot",
        "jpeg",
        "resize",
        "blur",
        "--eot-samples",
        "2",
    ]
    assert attack_main(family="flux_kontext", argv=args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["eot"] == ["jpeg", "resize", "blur"] and manifest["pgd"]["eot_samples"] == 2
    assert max_level_diff(load_image(source).rgb8, load_image(out / "in.png").rgb8) <= 8
    assert attack_main(family="flux_kontext", argv=args[:-6] + ["--eot", "webp"]) == 2  # no differentiable WebP
    assert attack_main(family="flux_kontext", argv=args[:-6] + ["--eot-samples", "2"]) == 2  # samples without breakers


def test_run_folder_stage_purifies_and_metrics_report_each_breaker(tmp_path, capsys):
    """purified/<breaker>/<condition>/ copies, resumable; edits/<condition>@<breaker> are scored as their
    own condition beside the unpurified ones, against the clean edits."""
    import csv
    import json
    import shutil

    from decontext.cli.evaluate import main as metrics_main
    from tests.demo_run import make_demo_run

    run = make_demo_run(tmp_path / "run")
    (run / "protected" / "junk.png").write_bytes(b"not an image")
    assert (
        purify_cli.main(["--run", str(run), "--breakers", "jpeg:quality=50", "blur", "--no-progress"]) == 1
    )  # junk.png reported
    copy = run / "purified" / "jpeg_quality50" / "protected" / "a.png"
    assert copy.is_file() and (run / "purified" / "blur_sigma1.0" / "protected" / "b.png").is_file()
    expected = purify.jpeg(Image.open(run / "protected" / "a.png"), quality=50)
    assert np.array_equal(np.asarray(Image.open(copy)), np.asarray(expected))
    stamp = copy.stat().st_mtime_ns
    (run / "protected" / "junk.png").unlink()
    assert purify_cli.main(["--run", str(run), "--breakers", "jpeg:quality=50", "blur", "--no-progress"]) == 0
    assert copy.stat().st_mtime_ns == stamp  # kept, not rewritten
    assert "kept 4" in capsys.readouterr().out
    assert purify_cli.main(["--run", str(run), "--breakers", "jpeg", "--conditions", "noise"]) == 2  # no such condition
    assert purify_cli.main(["--run", str(run), "--breakers", "gif"]) == 2

    # stand-in edits of the purified condition (the real ones come from inference/kontext_inference.py)
    shutil.copytree(run / "edits" / "protected", run / "edits" / "protected@jpeg_quality50")
    index = run / "edits" / "protected@jpeg_quality50" / "index.json"
    index.write_text(index.read_text().replace("edits/protected/", "edits/protected@jpeg_quality50/"))
    assert condition_input_dir(run, "protected@jpeg_quality50") == run / "purified" / "jpeg_quality50" / "protected"
    assert metrics_main(["--run", str(run), "--metrics", "pixel", "--no-progress"]) == 0
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    conditions = {r["condition"] for r in rows}
    assert conditions == {"clean", "protected", "protected@jpeg_quality50"}
    summary = json.loads((run / "summary.json").read_text())
    assert "protected@jpeg_quality50" in summary and not summary.get("_errors")
    assert "protected@jpeg_quality50" in (run / "report.html").read_text()
