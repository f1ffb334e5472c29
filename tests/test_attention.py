"""The context-attention probe against brute force, on random tensors and inside the tiny Kontext."""

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb

from decontext.attention import attention_with_share, context_share, context_share_reference
from decontext.editors.base import Layout
from decontext.editors.blocks import swapped_processors
from decontext.editors.flux_kontext import FluxKontextEditor


def test_indicator_share_equals_brute_force_on_random_tensors():
    torch.manual_seed(0)
    layout = Layout(text=7, target=15, context=21)
    q = torch.randn(2, layout.total, 3, 16) * 2
    k = torch.randn(2, layout.total, 3, 16) * 2
    ours = context_share(q, k, layout)
    ref = context_share_reference(q, k, layout)
    assert ours.shape == (2, 3, 15)
    assert torch.allclose(ours.double(), ref, atol=1e-5)
    with pytest.raises(ValueError, match="layout"):
        context_share(q[:, :-1], k[:, :-1], layout)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_fused_share_and_output_equal_separate_calls(dtype, tol):
    """The indicator riding in the layer's own call: same output as one plain call, same share as
    brute force, and the same gradients for q, k and v as the separate-call path."""
    torch.manual_seed(1)
    layout = Layout(text=5, target=12, context=9)
    q, k, v = (torch.randn(2, layout.total, 3, 16, dtype=dtype, requires_grad=True) for _ in range(3))
    out, share = attention_with_share(q, k, v, layout)
    plain = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    assert out.shape == plain.shape and share.shape == (2, 3, 12)
    assert torch.allclose(out, plain, atol=tol)
    assert torch.allclose(share.double(), context_share_reference(q, k, layout), atol=tol)
    w = torch.randn_like(out)
    fused = torch.autograd.grad((out * w).sum() + share.sum(), (q, k, v))
    separate = torch.autograd.grad((plain * w).sum() + context_share(q, k, layout).sum(), (q, k, v))
    for a, b in zip(fused, separate, strict=False):
        assert torch.allclose(a, b, atol=10 * tol)
    with pytest.raises(ValueError, match="pad"):
        attention_with_share(q, k, v, layout, pad=0)


class BruteForceProcessor:
    """Independent reference: explicit softmax matrix, used for the layer output AND the share."""

    def __init__(self, name, store):
        self.name, self.store = name, store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        def heads(x):
            return x.unflatten(-1, (attn.heads, -1))

        q = attn.norm_q(heads(attn.to_q(hidden_states)))
        k = attn.norm_k(heads(attn.to_k(hidden_states)))
        v = heads(attn.to_v(hidden_states))
        if encoder_hidden_states is not None:
            q = torch.cat([attn.norm_added_q(heads(attn.add_q_proj(encoder_hidden_states))), q], 1)
            k = torch.cat([attn.norm_added_k(heads(attn.add_k_proj(encoder_hidden_states))), k], 1)
            v = torch.cat([heads(attn.add_v_proj(encoder_hidden_states)), v], 1)
        q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1)
        k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)
        layout = self.store["layout"]
        probs = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5, dim=-1)
        self.store[self.name] = probs[:, :, layout.target_slice, layout.context_slice].sum(-1).mean(dim=(1, 2))
        out = torch.einsum("bhqk,bkhd->bqhd", probs, v).flatten(2, 3)
        if encoder_hidden_states is None:
            return out
        text, image = out.split([encoder_hidden_states.shape[1], out.shape[1] - encoder_hidden_states.shape[1]], dim=1)
        return attn.to_out[1](attn.to_out[0](image)), attn.to_add_out(text)


@pytest.fixture(scope="module")
def editor():
    return FluxKontextEditor.tiny(seed=1)


def _inputs(editor, height=48, width=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(1, 3, height, width, generator=g)
    condition = editor.condition(pixels, ["make the person smile", "add a hat"], (height, width))
    noise = editor.noise_like(condition, g)
    return pixels, condition, noise


@pytest.mark.parametrize("fused", [True, False])
def test_probe_matches_brute_force_in_double_and_single_blocks_non_square(editor, fused):
    pixels, condition, target = _inputs(editor)
    sigma = torch.tensor([0.99, 0.985])
    names = editor.block_names
    with torch.no_grad():
        stock = editor.velocity(target, sigma, condition)
        with editor.probe(names) as probe:
            probe.fused = fused
            probed = editor.velocity(target, sigma, condition)
            shares = dict(probe.shares)
        store = {"layout": condition.layout}
        reference = {editor.blocks[n].processor_key: BruteForceProcessor(n, store) for n in names}
        with swapped_processors(editor.transformer, reference):
            brute = editor.velocity(target, sigma, condition)
    assert store["layout"] == Layout(text=editor.max_sequence_length, target=15, context=15)
    assert set(shares) == set(names) and any(n.startswith("double") for n in names)
    for name in names:
        assert shares[name].shape == (2,)
        assert torch.allclose(shares[name], store[name], atol=1e-5), name
    # The probe leaves the layer outputs exactly as the stock processor computes them.
    assert torch.allclose(probed, stock, atol=1e-6)
    assert torch.allclose(brute, stock, atol=1e-4)


def test_forward_stops_after_last_needed_block(editor):
    pixels, condition, target = _inputs(editor, 32, 32)
    sigma = torch.tensor([0.99, 0.99])
    calls = []
    handle = editor.transformer.single_transformer_blocks[3].register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad(), editor.probe(["double.1", "single.2"]) as probe:
            out = editor.velocity(target, sigma, condition, stop_after="single.2")
            early = dict(probe.shares)
        with torch.no_grad(), editor.probe(["double.1", "single.2"]) as probe:
            editor.velocity(target, sigma, condition)
            full = dict(probe.shares)
    finally:
        handle.remove()
    assert out is None
    assert len(calls) == 1  # only the full forward reached single block 3
    for name in full:
        assert torch.allclose(early[name], full[name])


def test_probe_context_restores_the_editor_whatever_happens(editor):
    stock = dict(editor.transformer.attn_processors)
    with pytest.raises(KeyError):
        with editor.probe(["single.0"]):
            with pytest.raises(RuntimeError, match="nest"):
                with editor.probe(["single.1"]):
                    pass
            raise KeyError("boom")
    assert {k: type(v) for k, v in editor.transformer.attn_processors.items()} == {k: type(v) for k, v in stock.items()}
    assert editor._active_probe is None
    with pytest.raises(ValueError, match="cannot probe"):
        with editor.probe(["single.9"]):
            pass


@pytest.mark.parametrize("fused", [True, False])
def test_pixel_gradient_matches_float64_finite_differences(fused):
    editor = FluxKontextEditor.tiny(seed=2, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    pixels = torch.rand(1, 3, 32, 48, generator=g, dtype=torch.float64)
    editor.prepare(["add glasses"], release=False)
    noise_g = torch.Generator().manual_seed(9)
    blocks = ["double.0", "single.0", "single.1"]

    def share(x):
        condition = editor.condition(x, ["add glasses"], (32, 48))
        noise = editor.noise_like(condition, torch.Generator().manual_seed(9))
        with editor.probe(blocks) as probe:
            probe.fused = fused
            editor.velocity(noise, torch.tensor([0.99], dtype=torch.float64), condition, stop_after="single.1")
            return probe.mean_share(blocks).sum()

    x = pixels.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(share(x), x)
    direction = torch.randn(pixels.shape, generator=noise_g, dtype=torch.float64)
    h = 1e-3  # diffusers applies RoPE in fp32 even for fp64 inputs, so a tiny h would measure its rounding
    with torch.no_grad():
        numeric = (share(pixels + h * direction) - share(pixels - h * direction)) / (2 * h)
    analytic = (grad * direction).sum()
    assert grad.abs().sum() > 0
    assert torch.allclose(analytic, numeric, rtol=1e-4, atol=1e-9), (analytic.item(), numeric.item())
