"""The context-attention probe against brute force, on random tensors and inside the tiny Kontext."""

import logging

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb

from decontext.attention import ProbeCall, attention_with_share, context_share, context_share_reference
from decontext.editors.base import Layout
from decontext.editors.blocks import PROBE_KWARG, DropsProbeCall, swapped_processors
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
    noise = editor.noise_like(condition, [g])
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
            probed = editor.probed_velocity(target, sigma, condition)
            probed, shares = probed.velocity, probed.shares
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
        with torch.no_grad(), editor.probe(["double.1", "single.2"]):
            early = editor.probed_velocity(target, sigma, condition, stop_after="single.2")
            out, early = early.velocity, early.shares
        with torch.no_grad(), editor.probe(["double.1", "single.2"]):
            full = editor.probed_velocity(target, sigma, condition).shares
    finally:
        handle.remove()
    assert out is None
    assert len(calls) == 1  # only the full forward reached single block 3
    for name in full:
        assert torch.allclose(early[name], full[name])


def test_each_call_carries_its_own_record_through_the_attention_kwargs(editor):
    """Two calls of different layouts under ONE probe: each returns the brute-force shares of its own layout.
    The record went to the model in its joint_attention_kwargs (nothing per call is left on the probe's
    hook or the editor), and the layers the probe does not hook took it without diffusers' warning."""
    names = ["double.0", "single.1"]
    sigma = torch.tensor([0.99, 0.985])
    seen, warnings = [], []
    catcher = logging.Handler(logging.WARNING)
    catcher.emit = warnings.append
    logging.getLogger("diffusers").addHandler(catcher)
    handle = editor.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["joint_attention_kwargs"]), with_kwargs=True
    )
    calls = []
    try:
        with torch.no_grad(), editor.probe(names) as probe:
            assert isinstance(
                editor.transformer.attn_processors[editor.blocks["single.0"].processor_key], DropsProbeCall
            )
            for height, width in ((48, 80), (32, 32)):
                _, condition, noise = _inputs(editor, height, width)
                calls.append((condition, noise, editor.probed_velocity(noise, sigma, condition)))
                assert vars(probe) == {"fused": True}  # the hook's one setting; nothing of the call
                assert editor._active_probe is probe and editor._probed_blocks == names
    finally:
        handle.remove()
        logging.getLogger("diffusers").removeHandler(catcher)
    assert calls[0][0].layout != calls[1][0].layout
    assert [type(kwargs[PROBE_KWARG]) for kwargs in seen] == [ProbeCall, ProbeCall]
    assert [kwargs[PROBE_KWARG].layout for kwargs in seen] == [condition.layout for condition, _, _ in calls]
    assert not [w for w in warnings if "not expected" in w.getMessage()]
    for condition, noise, probed in calls:
        store = {"layout": condition.layout}
        reference = {editor.blocks[n].processor_key: BruteForceProcessor(n, store) for n in editor.block_names}
        with torch.no_grad(), swapped_processors(editor.transformer, reference):
            brute = editor.velocity(noise, sigma, condition)
        assert set(probed.shares) == set(names) and not probed.text_maps
        for name in names:
            assert torch.allclose(probed.shares[name], store[name], atol=1e-5), (condition.layout, name)
        assert torch.allclose(probed.velocity, brute, atol=1e-4)


def _share_gradient_and_probe_calls(checkpointing: bool):
    """The pixel gradient of the shares of a pass that stops in its last probed block, and the (block, record)
    of every probe call in the forward and in the backward."""
    editor = FluxKontextEditor.tiny(seed=3)
    if checkpointing:
        editor.enable_gradient_checkpointing()
    pixels = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    condition = editor.condition(pixels, ["add a hat"], (32, 48))
    noise = editor.noise_like(condition, [torch.Generator().manual_seed(1)])
    seen = []
    with editor.probe(["double.1", "single.1"]) as probe:
        joint = probe.joint

        def spy(name, query, key, value, attend=None, call=None):
            seen.append((name, call))
            return joint(name, query, key, value, attend, call=call)

        probe.joint = spy
        probed = editor.probed_velocity(noise, torch.tensor([0.99]), condition, stop_after="single.1")
        forward = list(seen)
        (grad,) = torch.autograd.grad(probed.mean_share().sum(), pixels)
    assert probed.velocity is None
    return grad, forward, seen[len(forward) :]


def test_checkpointed_backward_reruns_the_stopped_block_on_its_measure_only_path():
    """With activation checkpointing, backward re-runs the probed blocks with the arguments of their forward,
    the call's record among them: the block the pass stopped in re-runs its measurement with the same record
    (its stop point included), and the gradient equals the one without checkpointing."""
    plain, forward, reruns = _share_gradient_and_probe_calls(checkpointing=False)
    assert [name for name, _ in forward] == ["double.1", "single.1"] and reruns == []
    checkpointed, forward, reruns = _share_gradient_and_probe_calls(checkpointing=True)
    assert [name for name, _ in forward] == ["double.1", "single.1"]
    assert {name for name, _ in reruns} == {"double.1", "single.1"}
    record = forward[0][1]
    assert record.stop_at == "single.1" and all(call is record for _, call in forward + reruns)
    assert plain.abs().sum() > 0 and torch.allclose(plain, checkpointed, atol=1e-6, rtol=1e-4)


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
        noise = editor.noise_like(condition, [torch.Generator().manual_seed(9)])
        with editor.probe(blocks) as probe:
            probe.fused = fused
            sigma = torch.tensor([0.99], dtype=torch.float64)
            return editor.probed_velocity(noise, sigma, condition, stop_after="single.1").mean_share(blocks).sum()

    x = pixels.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(share(x), x)
    direction = torch.randn(pixels.shape, generator=noise_g, dtype=torch.float64)
    h = 1e-3  # diffusers applies RoPE in fp32 even for fp64 inputs, so a tiny h would measure its rounding
    with torch.no_grad():
        numeric = (share(pixels + h * direction) - share(pixels - h * direction)) / (2 * h)
    analytic = (grad * direction).sum()
    assert grad.abs().sum() > 0
    assert torch.allclose(analytic, numeric, rtol=1e-4, atol=1e-9), (analytic.item(), numeric.item())
