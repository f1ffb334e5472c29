"""Baseline methods on the tiny Kontext: each loss moves the way it claims, noise keeps its budget."""

import numpy as np
import pytest
import torch

from decontext.config import ProtectConfig
from decontext.editors.flux_kontext import FluxKontextEditor
from decontext.images import from_array
from decontext.inference import image_to_pil
from decontext.methods import build_method
from decontext.methods.decontext import DeContext
from decontext.pgd import PGDConfig
from decontext.protect import protect
from decontext.runs import image_seed


def _image(seed=0, h=32, w=48):
    return from_array(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _loss(method, editor, pixels, seed=0):
    with torch.no_grad(), method.session(editor):
        return float(method.loss(editor, pixels, (32, 48), 0, [torch.Generator().manual_seed(seed)])[0])


def test_noise_control_uses_the_whole_budget_deterministically():
    editor = FluxKontextEditor.tiny()
    image = _image()
    noise = build_method("noise")
    settings = ProtectConfig(pgd=PGDConfig.for_method(noise, eps=8), resolution="native", measure_draws=0)
    assert settings.pgd.steps == 0 and settings.pgd.start == "sign"
    a = protect(editor, noise, image.pixels, settings, image_seed(0, "x"))
    b = protect(editor, build_method("noise"), image.pixels, settings, image_seed(0, "x"))
    delta = (a.pixels - image.pixels) * 255
    assert torch.equal(a.pixels, b.pixels) and a.history == []
    inside = (image.pixels > 8 / 255) & (image.pixels < 1 - 8 / 255)
    assert torch.allclose(delta.abs()[inside], torch.full_like(delta[inside], 8.0), atol=1e-3)


def test_encoder_and_flow_losses_increase_under_pgd():
    for name in ("encoder", "flow_loss"):
        editor = FluxKontextEditor.tiny(seed=1)
        method = build_method(name, **({"prompts": ["add a hat"]} if name == "flow_loss" else {}))
        image = _image(1)
        settings = ProtectConfig(pgd=PGDConfig(eps=16, alpha=2, steps=8), resolution="native", measure_draws=0)
        outcome = protect(editor, method, image.pixels, settings, image_seed(0, "x"))
        before = _loss(method, editor, image.pixels)
        after = _loss(method, editor, outcome.pixels)
        assert after > before, (name, before, after)
        assert (outcome.pixels - image.pixels).abs().max() <= 16 / 255 + 1e-6


def test_decontext_lowers_measured_share_and_records_history():
    editor = FluxKontextEditor.tiny(seed=2)
    method = DeContext(prompts=["add a hat", "make the person smile"])
    settings = ProtectConfig(pgd=PGDConfig(eps=16, alpha=2, steps=10), resolution="native", measure_draws=2)
    outcome = protect(editor, method, _image(2).pixels, settings, image_seed(0, "x"))
    assert outcome.after["share"] < outcome.before["share"]
    assert len(outcome.history) == 10 and all(0 < h["share"] < 1 for h in outcome.history)
    assert all(abs(h["loss"] - (1 - h["share"])) < 1e-6 for h in outcome.history)


def test_decontext_pass_ends_inside_the_last_probed_block_with_unchanged_shares():
    editor = FluxKontextEditor.tiny(seed=6)
    method = DeContext(prompts=["add a hat"], release_text_encoders=False)
    method.prepare(editor)
    blocks = method._blocks
    calls = []
    handle = editor.blocks[blocks[-1]].module.proj_out.register_forward_hook(lambda *a: calls.append(1))
    pixels = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad(), method.session(editor):
            early = method.shares(editor, pixels, (32, 48), [torch.Generator().manual_seed(1)])
            assert calls == []  # the last probed block stopped right after its probe
            # The same draws as shares() makes (prompt index, sigma, noise), then a full pass.
            g = torch.Generator().manual_seed(1)
            torch.randint(1, (1,), generator=g)
            sigma = 0.98 + 0.02 * torch.rand(1, generator=g)
            condition = editor.condition(pixels, ["add a hat"], (32, 48))
            noise = editor.noise_like(condition, [g])
            full = editor.probed_velocity(noise, sigma, condition, stop_after=None).mean_share(blocks)
    finally:
        handle.remove()
    assert calls == [1]
    assert torch.allclose(early, full, atol=1e-6)


def test_decontext_outside_its_session_says_so():
    editor = FluxKontextEditor.tiny(seed=6)
    method = DeContext(prompts=["add a hat"], release_text_encoders=False)
    with pytest.raises(RuntimeError, match="session"):
        method.loss(editor, torch.rand(1, 3, 32, 48), (32, 48), 0, [torch.Generator()])


def test_t_one_every_uses_sigma_one_on_those_steps():
    editor = FluxKontextEditor.tiny(seed=6)
    method = DeContext(prompts=["add a hat"], t_one_every=10, release_text_encoders=False)
    seen = []
    original = editor.probed_velocity

    def spy(x_t, sigma, condition, stop_after=None):
        seen.append(float(torch.as_tensor(sigma).reshape(-1)[0]))
        return original(x_t, sigma, condition, stop_after)

    editor.probed_velocity = spy
    pixels = torch.rand(1, 3, 32, 48)
    with torch.no_grad(), method.session(editor):
        for step in (0, 1, 10, 11):
            method.loss(editor, pixels, (32, 48), step, [torch.Generator().manual_seed(step)])
    assert seen[0] == 1.0 and seen[2] == 1.0
    assert 0.98 <= seen[1] < 1.0 and 0.98 <= seen[3] < 1.0


def test_editing_after_protection_uses_the_stock_processors():
    editor = FluxKontextEditor.tiny(seed=7)
    image = _image(3)
    reference = editor.edit(image_to_pil(image), ["add a hat"], [0], steps=2, resolution="native")[0]
    method = DeContext(prompts=["add a hat"], release_text_encoders=False)
    protect(
        editor,
        method,
        image.pixels,
        ProtectConfig(pgd=PGDConfig(eps=8, steps=2), resolution="native", measure_draws=0),
        image_seed(0, "x"),
    )
    after = editor.edit(image_to_pil(image), ["add a hat"], [0], steps=2, resolution="native")[0]
    assert np.array_equal(np.asarray(reference), np.asarray(after))
    assert editor._active_probe is None


def test_editor_ensemble_is_the_sum_of_its_members_in_value_and_gradient(tiny_editor):
    """Protecting against a Kontext and an InstructPix2Pix at once (a composition whose terms carry their
    editors): with normalize="none" the loss and its pixel gradient are the weighted sums of each term's
    on its own editor; with "grad" the value is the same and the gradient is the weighted sum of the
    terms' gradients each scaled to unit mean |g|; a term that does not apply is refused."""
    from decontext.methods import build_method
    from decontext.methods.composite import Composite, Term

    kontext, ip2p = tiny_editor("flux_kontext"), tiny_editor("instruct_pix2pix")
    x = torch.rand(1, 3, 64, 64)
    members = [(kontext, build_method("encoder")), (ip2p, build_method("encoder"))]

    def value_and_grad(fn):
        pixels = x.clone().requires_grad_(True)
        value = fn(pixels)
        value.backward()
        return float(value), pixels.grad

    parts = [
        value_and_grad(lambda p, e=e, m=m: m.loss(e, p, (64, 64), 0, [torch.Generator().manual_seed(0)])[0])
        for e, m in members
    ]
    for normalize in ("none", "grad"):
        ensemble = Composite(
            [Term(m, w, e) for (e, m), w in zip(members, [1.0, 0.5], strict=False)], normalize=normalize
        )
        with ensemble.session():
            total, g_total = value_and_grad(
                lambda p, ensemble=ensemble: ensemble.loss(None, p, (64, 64), 0, [torch.Generator().manual_seed(0)])[0]
            )
        assert total == pytest.approx(parts[0][0] + 0.5 * parts[1][0], rel=1e-5)
        scale = [1.0, 1.0] if normalize == "none" else [float(g.abs().mean()) for _, g in parts]
        torch.testing.assert_close(g_total, parts[0][1] / scale[0] + 0.5 * parts[1][1] / scale[1], rtol=1e-4, atol=1e-7)
    assert ensemble.config()["terms"][1]["editor"] == "instruct_pix2pix"
    assert ensemble.name == "encoder@flux_kontext+encoder@instruct_pix2pix"
    with pytest.raises(ValueError, match="does not apply"):
        Composite([Term(build_method("decontext", prompts=["add a hat"]), 1.0, ip2p)])
