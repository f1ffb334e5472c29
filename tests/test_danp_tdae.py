"""DANP and TDAE: their defining behaviour on planted inputs, against references, and on the tiny editors."""

import math

import pytest
import torch

from decontext.attention import attention_with_masses, target_masses
from decontext.editors.base import Layout
from decontext.methods.danp import DANP, region_contrast, relevance_mask
from decontext.methods.tdae import TDAE, flat_gradient
from decontext.pgd import PGD, PGDConfig


# ------------------------------------------------------------------ DANP
def planted_map():
    """Two rows of 8x8 maps: a bright 2x2 blob on a noisy floor, and a flat row with one peak."""
    g = torch.Generator().manual_seed(0)
    maps = 0.05 + 0.01 * torch.rand(2, 64, generator=g)
    blob = [18, 19, 26, 27]
    maps[0, blob] = torch.tensor([0.5, 0.6, 0.55, 0.45])
    maps[1, 40] = 0.3
    return maps, blob


def test_relevance_mask_is_the_dynamic_threshold():
    maps, blob = planted_map()
    mask = relevance_mask(maps, 1.0)
    assert mask[0].nonzero().flatten().tolist() == blob
    assert mask[1].nonzero().flatten().tolist() == [40]
    for k in (0.0, 0.5, 2.0, 4.0):
        tau = maps.mean(1, keepdim=True) + k * maps.std(1, keepdim=True)
        assert torch.equal(relevance_mask(maps, k), maps > tau)
    # a higher threshold never grows the region
    assert relevance_mask(maps, 2.0).sum() <= relevance_mask(maps, 0.0).sum()


def test_region_contrast_value_and_gradient_push_the_right_way():
    maps, blob = planted_map()
    maps.requires_grad_(True)
    value = region_contrast(maps, 1.0)
    inside = relevance_mask(maps, 1.0)
    want = torch.stack([maps[r][~inside[r]].mean() - maps[r][inside[r]].mean() for r in range(2)])
    torch.testing.assert_close(value, want)
    (grad,) = torch.autograd.grad(value.sum(), maps)
    for r in range(2):
        n_in = int(inside[r].sum())
        # ascending the contrast lowers attention inside the relevant region and raises it outside
        torch.testing.assert_close(grad[r][inside[r]], torch.full((n_in,), -1.0 / n_in))
        torch.testing.assert_close(grad[r][~inside[r]], torch.full((64 - n_in,), 1.0 / (64 - n_in)))
    flat = torch.full((1, 16), 0.1)
    assert region_contrast(flat, 1.0).item() == 0.0  # no region above the threshold: no signal


def test_text_masses_equal_a_brute_force_softmax():
    torch.manual_seed(0)
    layout = Layout(text=5, target=6, context=6)
    q, k, v = (torch.randn(2, layout.total, 3, 8, dtype=torch.float64) for _ in range(3))
    mask = torch.tensor([[1, 1, 0, 0, 0], [0, 1, 1, 1, 0]], dtype=torch.float64)
    probs = torch.softmax(
        q[:, layout.target_slice].transpose(1, 2) @ k.permute(0, 2, 3, 1) / math.sqrt(8), -1
    )  # (B, H, T, S)
    want_text = (probs[..., : layout.text] * mask[:, None, None]).sum(-1)
    want_share = probs[..., layout.context_slice].sum(-1)
    share, text = target_masses(q, k, layout, mask)
    torch.testing.assert_close(text, want_text)
    torch.testing.assert_close(share, want_share)
    out, share2, text2 = attention_with_masses(q, k, v, layout, text_mask=mask)
    plain = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    ).transpose(1, 2)
    torch.testing.assert_close(out, plain)
    torch.testing.assert_close(text2, want_text)
    torch.testing.assert_close(share2, want_share)


@pytest.fixture(scope="module")
def kontext():
    from decontext.editors.flux_kontext import FluxKontextEditor

    return FluxKontextEditor.tiny(seed=3)


def test_kontext_text_attention_reads_the_prompt_tokens_and_leaves_the_output_alone(kontext):
    x = torch.rand(2, 3, 32, 48)
    condition = kontext.condition(x, ["add a hat"], (32, 48))
    mask = condition.extra["text_mask"][0]
    ids = kontext.pipe.tokenizer_2("add a hat", padding="max_length", max_length=mask.shape[0]).input_ids
    words = [
        i
        for i, t in enumerate(ids)
        if t not in (kontext.pipe.tokenizer_2.eos_token_id, kontext.pipe.tokenizer_2.pad_token_id)
    ]
    assert mask.nonzero().flatten().tolist() == words and len(words) == 3
    noise = kontext.noise_like(condition, [torch.Generator().manual_seed(0)])
    stock = kontext.velocity(noise, 0.9, condition)
    with kontext.text_attention(kontext.block_names):
        probed = kontext.probed_velocity(noise, 0.9, condition)
        probed, maps = probed.velocity, probed.text_maps
    torch.testing.assert_close(probed, stock, rtol=1e-4, atol=1e-5)
    assert set(maps) == set(kontext.block_names) and kontext.resolve_blocks("all") == kontext.block_names
    for m in maps.values():
        assert m.shape == (2, condition.layout.target) and (m > 0).all() and (m < 1).all()


def test_danp_steps_raise_its_attention_term_on_the_tiny_ip2p():
    """PGD on the attention term alone, on one fixed draw (prompt, noise level, noise), raises that term
    through the real editor path: the relevant region loses attention, the rest gains."""
    from decontext.editors.instruct_pix2pix import InstructPix2PixEditor

    editor = InstructPix2PixEditor.tiny(seed=1)
    method = DANP(prompts=["make it blue", "add a hat"], noise_weight=0.0, release_text_encoders=False)
    x0 = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    method.prepare(editor)
    fixed = lambda p, s, g: method.loss(editor, p, (64, 64), s, [torch.Generator().manual_seed(3)])  # noqa: E731
    with method.session(editor):
        result = PGD(eps=16, alpha=2, steps=6, seed=0, progress=False).run(x0, fixed)
        before = fixed(x0, 0, None)[1]["attention"]
        after = fixed(result.pixels, 0, None)[1]["attention"]
    assert after > before + 1e-3, (before, after, result.losses)
    assert method.config()["resolved_blocks"] == editor.block_names


# ------------------------------------------------------------------ TDAE
def smooth(x, generator):
    """A smooth non-quadratic objective with a random draw (the draw must be the same in both passes)."""
    w = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return (torch.sin(3 * x) * w).sum() + 0.5 * (x**3).sum()


def test_flat_gradient_matches_a_finite_difference_reference():
    """The FlatGrad direction equals the gradient of J(x) = f(x) - lam * ||grad f(x)||, checked by central
    differences of J along random directions (J itself evaluated with autograd's exact grad f)."""
    torch.manual_seed(0)
    x = torch.rand(1, 2, 3, 3, dtype=torch.float64)
    h, weight = 1e-6, 0.7  # lam = weight * h

    def J(point):
        p = point.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(smooth(p, torch.Generator().manual_seed(5)), p)
        return float(smooth(point, torch.Generator().manual_seed(5))) - weight * h * float(g.norm())

    pixels = x.clone().requires_grad_(True)
    generator = torch.Generator().manual_seed(5)
    value, info = flat_gradient(smooth, pixels, generator, h, weight)
    (ours,) = torch.autograd.grad(value, pixels)
    assert float(value.detach()) == pytest.approx(J(x), rel=1e-9)
    eps = 1e-5
    for seed in range(4):
        u = torch.randn(x.shape, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
        numeric = (J(x + eps * u) - J(x - eps * u)) / (2 * eps)
        assert float((ours * u).sum()) == pytest.approx(numeric, rel=1e-4, abs=1e-7)
    # the generator ends where one evaluation leaves it (both passes drew the same numbers)
    once = torch.Generator().manual_seed(5)
    smooth(x, once)
    assert torch.equal(generator.get_state(), once.get_state())


def test_flat_gradient_without_weight_is_the_plain_gradient():
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    value, _ = flat_gradient(smooth, x, torch.Generator().manual_seed(1), 1e-3, 0.0)
    (ours,) = torch.autograd.grad(value, x)
    y = x.detach().clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(smooth(y, torch.Generator().manual_seed(1)), y)
    torch.testing.assert_close(ours, plain)


def test_tdae_alternates_prompt_cycles_and_its_embedding_steps_lower_their_objective(kontext):
    method = TDAE(
        prompts=["add a hat", "make it blue", "turn the hair red"],
        dpd_every=4,
        dpd_steps=4,
        dpd_lr=0.05,
        release_text_encoders=False,
    )
    assert [s for s in range(12) if method.is_dpd_step(s)] == [0, 4, 8]
    assert PGDConfig.for_method(method).start == "uniform"
    x0 = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    method.prepare(kontext)
    with method.session(kontext):
        method.start(kontext, x0, (32, 48))
        assert method.measure(kontext, x0, (32, 48), draws=2)["discrepancy"] == 0.0
        result = PGD(config=PGDConfig.for_method(method, eps=16, alpha=2, steps=10), seed=0, progress=False).run(
            x0, lambda p, s, g: method.loss(kontext, p, (32, 48), s, g)
        )
        after = method.measure(kontext, result.pixels, (32, 48), draws=2)["discrepancy"]
    assert [c["step"] for c in method.dpd_history] == [0, 4, 8]
    for cycle in method.dpd_history:
        assert len(cycle["objective"]) == 5
        assert cycle["objective"][-1] < cycle["objective"][0], cycle  # the adversary's embeddings lower D
    assert after > 0
    assert {"discrepancy", "grad_norm"} <= set(result.history[0])


def test_tdae_refuses_bad_settings_and_editors_without_embeddings():
    with pytest.raises(ValueError):
        TDAE(dpd_every=0, prompts=["a"])
    with pytest.raises(ValueError):
        TDAE(flat_radius=0, prompts=["a"])

    class NoText:
        family = "x"
        capabilities = frozenset({"diffusion_loss"})

    with pytest.raises(ValueError, match="text_embeddings"):
        TDAE.check_applies(NoText)


# ------------------------------------------------------------------ the sampling seam and PhotoGuard's diffusion attack
def test_ip2p_denoise_is_diffusers_ddim_step():
    from diffusers import DDIMScheduler

    from decontext.editors.instruct_pix2pix import InstructPix2PixEditor

    editor = InstructPix2PixEditor.tiny(seed=2)
    condition = editor.condition(torch.rand(1, 3, 64, 64), ["add a hat"], (64, 64))
    x = editor.noise_like(condition, [torch.Generator().manual_seed(0)])
    ddim = DDIMScheduler.from_config(
        editor.pipe.scheduler.config, clip_sample=False, thresholding=False, set_alpha_to_one=True
    )
    ddim.set_timesteps(4)  # steps of 250: t = 999 -> 749
    eps = editor.velocity(x, 1.0, condition)
    want = ddim.step(eps, 999, x, eta=0.0).prev_sample
    torch.testing.assert_close(editor.denoise(x, 1.0, 749 / 999, condition), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["flux_kontext", "instruct_pix2pix"])
def test_decode_inverts_the_latents_the_editor_reads(family, tiny_editor):
    """decode(x_0) with x_0 the image's own clean latents in the denoiser's space equals the VAE's plain
    encode -> decode round trip: packing, scaling and shifting are undone exactly."""

    editor = tiny_editor(family)
    pixels = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    condition = editor.condition(pixels, ["add a hat"], (32, 48))
    x0, _ = editor.flow_pair(condition, torch.zeros_like(condition.latents), 0.0)
    if family == "instruct_pix2pix":  # the DDPM pair at t = 0 still scales by sqrt(alpha_cumprod[0])
        x0 = x0 / editor._alphas_cumprod[0].sqrt().item()
    vae = editor.vae
    want = ((vae.decode(vae.encode(pixels * 2 - 1).latent_dist.mode()).sample + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(editor.decode(x0, condition), want, rtol=1e-4, atol=1e-4)


def test_diffusion_attack_pulls_the_edit_toward_its_target():
    from decontext.editors.instruct_pix2pix import InstructPix2PixEditor
    from decontext.methods.diffusion import DiffusionAttack

    editor = InstructPix2PixEditor.tiny(seed=1)
    method = DiffusionAttack(sample_steps=2, prompts=["make it blue"], release_text_encoders=False)
    assert PGDConfig.for_method(method).schedule == "linear"
    x0 = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    fixed = lambda p, s, g: method.loss(editor, p, (64, 64), s, [torch.Generator().manual_seed(3)])  # noqa: E731
    result = PGD(eps=16, alpha=2, steps=5, seed=0, progress=False).run(x0, fixed)
    assert fixed(result.pixels, 0, None)[1]["edit_mse"] < fixed(x0, 0, None)[1]["edit_mse"]
    assert method.edit(editor, x0, (64, 64), torch.Generator().manual_seed(0)).shape == (1, 3, 64, 64)


def test_danp_balances_its_two_terms_by_gradient_scale():
    """balance="grad": the pixel gradient is w_A g_A/mean|g_A| + w_N g_N/mean|g_N| on the same draw
    (value: the plain weighted sum); balance="none": the plain sum's gradient."""
    from decontext.editors.instruct_pix2pix import InstructPix2PixEditor

    editor = InstructPix2PixEditor.tiny(seed=1)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for balance in ("grad", "none"):
        method = DANP(
            prompts=["make it blue"],
            attention_weight=2.0,
            noise_weight=0.5,
            balance=balance,
            release_text_encoders=False,
        )
        method.prepare(editor)
        with method.session(editor):
            p = x.clone().requires_grad_(True)
            value, _ = method.loss(editor, p, (64, 64), 0, [torch.Generator().manual_seed(4)])
            (got,) = torch.autograd.grad(value, p)
            q = x.clone().requires_grad_(True)
            a, n = method.terms(editor, q, (64, 64), torch.Generator().manual_seed(4), 0)
            g_a = torch.autograd.grad(a, q, retain_graph=True)[0]
            g_n = torch.autograd.grad(n, q)[0]
        assert float(value.detach()) == pytest.approx(float(2.0 * a + 0.5 * n), rel=1e-5)
        want = (
            2.0 * g_a / g_a.abs().mean() + 0.5 * g_n / g_n.abs().mean() if balance == "grad" else 2.0 * g_a + 0.5 * g_n
        )
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
