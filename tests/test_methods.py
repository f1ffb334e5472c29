"""Baseline methods on the tiny Kontext: each loss moves the way it claims, noise keeps its budget."""

import torch

from decontext.editors.flux_kontext import FluxKontextEditor
from decontext.images import from_array
from decontext.methods import build_method
from decontext.methods.decontext import DeContext
from decontext.inference import image_to_pil
from decontext.protect import ProtectSettings, protect_image

import numpy as np


def _image(seed=0, h=32, w=48):
    return from_array(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _loss(method, editor, pixels, seed=0):
    with torch.no_grad():
        return float(method.loss(editor, pixels, (32, 48), 0, torch.Generator().manual_seed(seed))[0])


def test_noise_control_uses_the_whole_budget_deterministically():
    editor = FluxKontextEditor.tiny()
    image = _image()
    settings = ProtectSettings(eps=8, steps=5, resolution="native", progress=False, measure_draws=0)
    a = protect_image(editor, build_method("noise"), image, settings, name="x")
    b = protect_image(editor, build_method("noise"), image, settings, name="x")
    delta = (a.pixels - image.pixels) * 255
    assert torch.equal(a.pixels, b.pixels) and a.history == []
    inside = (image.pixels > 8 / 255) & (image.pixels < 1 - 8 / 255)
    assert torch.allclose(delta.abs()[inside], torch.full_like(delta[inside], 8.0), atol=1e-3)


def test_encoder_and_flow_losses_increase_under_pgd():
    for name in ("encoder", "flow_loss"):
        editor = FluxKontextEditor.tiny(seed=1)
        method = build_method(name, prompts=["add a hat"])
        method.prepare(editor)
        image = _image(1)
        settings = ProtectSettings(eps=16, alpha=2, steps=8, resolution="native", progress=False, measure_draws=0)
        outcome = protect_image(editor, method, image, settings, name="x")
        before = _loss(method, editor, image.pixels)
        after = _loss(method, editor, outcome.pixels)
        assert after > before, (name, before, after)
        assert (outcome.pixels - image.pixels).abs().max() <= 16 / 255 + 1e-6


def test_decontext_lowers_measured_share_and_records_history():
    editor = FluxKontextEditor.tiny(seed=2)
    method = DeContext(prompts=["add a hat", "make the person smile"])
    settings = ProtectSettings(eps=16, alpha=2, steps=10, resolution="native", progress=False, measure_draws=2)
    outcome = protect_image(editor, method, _image(2), settings, name="x")
    assert outcome.final_share < outcome.initial_share
    assert len(outcome.history) == 10 and all(0 < h["share"] < 1 for h in outcome.history)
    assert all(abs(h["loss"] - (1 - h["share"])) < 1e-6 for h in outcome.history)


def test_decontext_pass_ends_inside_the_last_probed_block_with_unchanged_shares():
    editor = FluxKontextEditor.tiny(seed=6)
    method = DeContext(prompts=["add a hat"], release_text_encoders=False)
    method.prepare(editor)
    blocks = method._blocks
    calls = []
    handle = editor._block(blocks[-1]).proj_out.register_forward_hook(lambda *a: calls.append(1))
    pixels = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            early = method.shares(editor, pixels, (32, 48), torch.Generator().manual_seed(1))
            assert calls == []  # the last probed block stopped right after its probe
            # The same draws as shares() makes (prompt index, sigma, noise), then a full pass.
            g = torch.Generator().manual_seed(1)
            torch.randint(1, (1,), generator=g)
            sigma = 0.98 + 0.02 * torch.rand(1, generator=g)
            context = editor.encode_context(pixels, (32, 48))
            noise, ids = editor.target_like(context, g)
            embeds, pooled = method._embeddings.select([0])
            editor.probe.clear()
            editor.forward(noise, ids, context, embeds, pooled, sigma, stop_after=None)
    finally:
        handle.remove()
    assert calls == [1]
    assert torch.allclose(early, editor.probe.mean_share(blocks), atol=1e-6)


def test_editing_after_protection_uses_the_stock_processors():
    editor = FluxKontextEditor.tiny(seed=7)
    image = _image(3)
    reference = editor.edit(image_to_pil(image), ["add a hat"], [0], steps=2, resolution="native")[0]
    method = DeContext(prompts=["add a hat"], release_text_encoders=False)
    protect_image(editor, method, image, ProtectSettings(eps=8, steps=2, resolution="native", progress=False, measure_draws=0), name="x")
    after = editor.edit(image_to_pil(image), ["add a hat"], [0], steps=2, resolution="native")[0]
    assert np.array_equal(np.asarray(reference), np.asarray(after))
    assert editor.probe.stop_at is None
