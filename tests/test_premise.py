"""Cutting the target->context attention (experiments.premise): stock without a cut, exact with one,
only in the chosen steps and blocks; and the premise bench end to end on the shipped toy."""

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor
from PIL import Image

from decontext.attention import context_share_reference
from decontext.editors.base import Layout
from decontext.editors.blocks import block_map
from decontext.editors.flux_kontext import FluxKontextEditor
from experiments import premise
from experiments.premise import BLOCK, HALVE, Cut, CutState, cutting

BENCH = Path(__file__).resolve().parents[1] / "bench" / "premise.py"
HEIGHT, WIDTH = 48, 80  # non-square: 3 x 5 = 15 target tokens at the tiny editor's 16 px per token
STEPS = 3
TEXT_TOKENS = 32  # the tiny editor's max_text_tokens


@pytest.fixture(scope="module")
def editor():
    return FluxKontextEditor.tiny(seed=4)


def _layer_inputs(editor, stream: str, layout: Layout, batch: int = 2, seed: int = 0):
    """Random inputs of one attention layer with ``layout`` (unequal target and context counts)."""
    g = torch.Generator().manual_seed(seed)
    transformer = editor.transformer
    dim = transformer.inner_dim
    ids = torch.randint(0, 6, (layout.total, 3), generator=g).float()
    ids[: layout.text] = 0
    rotary = transformer.pos_embed(ids)
    text = torch.randn(batch, layout.text, dim, generator=g)
    image = torch.randn(batch, layout.target + layout.context, dim, generator=g)
    if stream == "double":
        return transformer.transformer_blocks[0].attn, {
            "hidden_states": image,
            "encoder_hidden_states": text,
            "image_rotary_emb": rotary,
        }
    return transformer.single_transformer_blocks[0].attn, {
        "hidden_states": torch.cat([text, image], 1),
        "image_rotary_emb": rotary,
    }


def _brute_force(attn, layout: Layout, factor, hidden_states, encoder_hidden_states=None, image_rotary_emb=None):
    """The layer with the softmax materialised (float64): target->context weights times ``factor``
    (None = no cut), then each target row renormalised."""

    def heads(x):
        return x.unflatten(-1, (-1, attn.head_dim))

    q, k, v = (
        attn.norm_q(heads(attn.to_q(hidden_states))),
        attn.norm_k(heads(attn.to_k(hidden_states))),
        heads(attn.to_v(hidden_states)),
    )
    if encoder_hidden_states is not None:
        q = torch.cat([attn.norm_added_q(heads(attn.add_q_proj(encoder_hidden_states))), q], 1)
        k = torch.cat([attn.norm_added_k(heads(attn.add_k_proj(encoder_hidden_states))), k], 1)
        v = torch.cat([heads(attn.add_v_proj(encoder_hidden_states)), v], 1)
    q, k = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1), apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)
    q, k, v = q.double(), k.double(), v.double()
    probs = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5, dim=-1)
    if factor is not None:
        rows = probs[:, :, layout.target_slice].clone()
        rows[..., layout.context_slice] *= factor
        probs[:, :, layout.target_slice] = rows / rows.sum(-1, keepdim=True)
    share = probs[:, :, layout.target_slice, layout.context_slice].sum(-1).mean(dim=(1, 2))
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v).flatten(2, 3).to(hidden_states.dtype)
    if encoder_hidden_states is None:
        return out, share
    text, image = out.split([encoder_hidden_states.shape[1], out.shape[1] - encoder_hidden_states.shape[1]], dim=1)
    return (attn.to_out[1](attn.to_out[0](image)), attn.to_add_out(text)), share


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def _sequence_rows(outputs: tuple) -> torch.Tensor:
    """A layer's outputs as rows of the joint sequence [text | target | context]."""
    return outputs[0] if len(outputs) == 1 else torch.cat([outputs[1], outputs[0]], dim=1)  # double: (image, text)


@pytest.mark.parametrize("stream", ["double", "single"])
@pytest.mark.parametrize("measure", [False, True])
def test_no_cut_layer_is_bit_identical_to_stock(editor, stream, measure):
    layout = Layout(text=editor.max_sequence_length, target=15, context=21)
    attn, inputs = _layer_inputs(editor, stream, layout)
    state = CutState(cut=Cut(blocks=("double.1",)), measure=measure, layout=layout, step=0)  # a cut elsewhere only
    with torch.no_grad():
        stock = _as_tuple(FluxAttnProcessor()(attn, **inputs))
        ours = _as_tuple(block_map(editor.transformer).processor(state, f"{stream}.0")(attn, **inputs))
    assert len(ours) == len(stock)
    for a, b in zip(ours, stock, strict=False):
        assert torch.equal(a, b)
    assert bool(state.share_sums) == measure


@pytest.mark.parametrize("stream", ["double", "single"])
@pytest.mark.parametrize("factor", [BLOCK, HALVE])
def test_cut_layer_equals_brute_force_softmax(editor, stream, factor):
    layout = Layout(text=editor.max_sequence_length, target=15, context=21)
    attn, inputs = _layer_inputs(editor, stream, layout, seed=1)
    state = CutState(cut=Cut(steps=(0,), blocks=(f"{stream}.0",), factor=factor), measure=True, layout=layout, step=0)
    with torch.no_grad():
        ours = _as_tuple(block_map(editor.transformer).processor(state, f"{stream}.0")(attn, **inputs))
        reference, share = _brute_force(attn, layout, factor, **inputs)
        stock, stock_share = _brute_force(attn, layout, None, **inputs)
    for a, b in zip(ours, _as_tuple(reference), strict=False):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    # the cut changes the target rows only: text and context rows stay as stock
    rows, stock_rows = _sequence_rows(ours), _sequence_rows(_as_tuple(stock))
    assert not torch.allclose(rows[:, layout.target_slice], stock_rows[:, layout.target_slice], atol=1e-3)
    for part in (layout.text_slice, layout.context_slice):
        assert torch.allclose(rows[:, part], stock_rows[:, part], atol=1e-5)
    # the recorded share is the share after the cut (0 when blocked), mean over images, heads, target queries
    total, count = state.share_sums[(0, f"{stream}.0")]
    assert count == 2 and abs(total / count - float(share.mean())) < 1e-5
    assert float(stock_share.mean()) > 0.05 and (factor != BLOCK or abs(total) < 1e-12)


def test_cut_share_closed_form_on_random_tensors():
    torch.manual_seed(0)
    layout = Layout(text=3, target=6, context=9)
    q, k = torch.randn(1, layout.total, 2, 8) * 2, torch.randn(1, layout.total, 2, 8) * 2
    share = context_share_reference(q, k, layout)
    bias = torch.zeros(layout.total)
    bias[layout.context_slice] = np.log(0.3)
    scores = torch.einsum("bqhd,bkhd->bhqk", q[:, layout.target_slice], k).double() / 8**0.5 + bias.double()
    expected = torch.softmax(scores, -1)[..., layout.context_slice].sum(-1)
    assert torch.allclose(premise.cut_share(share, 0.3), expected, atol=1e-10)
    assert torch.equal(premise.cut_share(share, 0.0), torch.zeros_like(share))


def _edit_latents(pipe, state=None, cut=None, **extra):
    """A 3-step pipeline call on a non-square image; the latents after every step."""
    steps = []

    def keep(pipe_, i, t, kwargs):
        steps.append(kwargs["latents"].clone())
        return {}

    if state is not None:
        state.cut = cut
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))
    pipe(
        image=image,
        prompt="add a hat",
        height=HEIGHT,
        width=WIDTH,
        max_area=HEIGHT * WIDTH,
        _auto_resize=False,
        num_inference_steps=STEPS,
        guidance_scale=2.5,
        max_sequence_length=TEXT_TOKENS,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        callback_on_step_end=keep,
        callback_on_step_end_tensor_inputs=["latents"],
        **extra,
    )
    return steps


def test_pipeline_without_cut_is_bit_identical_and_processors_come_back(editor):
    pipe = editor.pipe
    stock = _edit_latents(pipe)
    with cutting(pipe) as state:
        assert all(getattr(p, "hook", None) is state for p in pipe.transformer.attn_processors.values())
        plain = _edit_latents(pipe, state, None)
        state.measure = True
        measured = _edit_latents(pipe, state, None)
        assert state.layout == Layout(text=TEXT_TOKENS, target=15, context=15)  # from the call's shapes
        assert sorted(state.sigmas) == list(range(STEPS)) and state.sigmas[0] == 1.0
        assert set(state.step_shares()) == set(range(STEPS))
        assert set(state.shares()[0]) == set(block_map(pipe.transformer).names)
    assert all(type(p) is FluxAttnProcessor for p in pipe.transformer.attn_processors.values())
    assert not pipe.transformer._forward_pre_hooks
    for a, b, c in zip(stock, plain, measured, strict=False):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("factor", [BLOCK, HALVE])
def test_every_step_cut_equals_stock_pipeline_with_the_same_score_mask(editor, factor):
    """Independent route: the stock processors given the additive score mask through the pipeline's
    joint_attention_kwargs (one mask over [text | target | context] for every block and step)."""
    pipe = editor.pipe
    layout = Layout(text=TEXT_TOKENS, target=15, context=15)
    mask = torch.zeros(layout.total, layout.total)
    mask[layout.target_slice, layout.context_slice] = premise.score_bias(factor)
    reference = _edit_latents(pipe, joint_attention_kwargs={"attention_mask": mask})
    with cutting(pipe) as state:
        ours = _edit_latents(pipe, state, Cut(factor=factor))
    for a, b in zip(ours, reference, strict=False):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


@pytest.mark.parametrize("k", range(STEPS))
def test_cut_acts_only_from_its_step_on(editor, k):
    pipe = editor.pipe
    with cutting(pipe) as state:
        stock = _edit_latents(pipe, state, None)
        cut = _edit_latents(pipe, state, Cut(steps=(k,)))
    for step in range(STEPS):
        if step < k:
            assert torch.equal(cut[step], stock[step]), step
        else:
            assert not torch.allclose(cut[step], stock[step], atol=1e-6), step


def test_cut_acts_only_in_its_blocks(editor):
    pipe, transformer = editor.pipe, editor.transformer
    outputs: dict[str, list] = {}
    handles = []
    for name in block_map(transformer).names:
        stream, index = name.split(".")
        block = (transformer.transformer_blocks if stream == "double" else transformer.single_transformer_blocks)[
            int(index)
        ]
        handles.append(
            block.register_forward_hook(
                lambda m, a, out, name=name: outputs.setdefault(name, []).append(out[1].clone())
            )
        )
    try:
        with cutting(pipe) as state:
            _edit_latents(pipe, state, None)
            _edit_latents(pipe, state, Cut(steps=(0,), blocks=("single.1",)))
    finally:
        for h in handles:
            h.remove()
    order = list(block_map(transformer).names)
    for name in order:
        stock_first, cut_first = outputs[name][0], outputs[name][STEPS]  # image tokens at step 0 of each run
        if order.index(name) < order.index("single.1"):
            assert torch.equal(stock_first, cut_first), name
        else:
            assert not torch.allclose(stock_first, cut_first, atol=1e-6), name


def test_step_and_cut_specifications():
    assert premise.resolve_steps("all", 12) is None
    assert premise.resolve_steps("first:3", 12) == (0, 1, 2)
    assert premise.resolve_steps("first:1/2", 12) == tuple(range(6))
    assert premise.resolve_steps("last:1/4", 12) == (9, 10, 11)
    assert premise.resolve_steps("0-1,5", 12) == (0, 1, 5)
    for bad in ("first:13", "12", "3-1", "x"):
        with pytest.raises(ValueError):
            premise.resolve_steps(bad, 12)
    specs = premise.parse_cuts(["default", "steps=first:1/4;blocks=double;factor=0.5"])
    assert [s.key for s in specs][:2] == ["none", "all"] and specs[-1].factor == 0.5
    toy_depths = {"double": 2, "single": 4}
    rows = [row for spec in specs for row in spec.resolve(12, toy_depths)]
    assert sum(r.group == "each_step" for r in rows) == 12
    by_key = {r.key: r.cut for r in rows}
    assert by_key["none"] is None
    assert by_key["paper_blocks"].blocks == ("single.0", "single.1", "single.2")
    assert by_key["first_quarter_paper_blocks"].steps == (0, 1, 2)
    assert by_key["halved"].factor == HALVE and by_key["halved"].steps is None
    with pytest.raises(ValueError):
        premise.parse_cuts(["nonsense"])
    assert premise.describe_blocks(("double.0", "single.0", "single.1", "single.3")) == "double 0, single 0-1,3"


def test_bench_smoke_on_the_shipped_toy(tmp_path, capsys):
    bench = importlib.import_module("bench.premise")
    threads = torch.get_num_threads()
    try:
        result = bench.main(
            ["--identities", "3", "--cuts", "none", "all", "--no-progress", "--out", str(tmp_path / "p.json")]
        )
    finally:
        torch.set_num_threads(threads)
    assert [r["key"] for r in result["rows"]] == ["none", "all"] and result["n_edits"] == 18
    none, cut = result["rows"]
    # chance = the uncut outputs against the other people's sources; the goal arithmetic follows from it
    goal = result["goal"]
    assert 0.0 <= none["chance_identity"]["mean"] < none["toy_identity"]["mean"]
    assert goal["removed"]["all"] == pytest.approx(
        (goal["clean_identity"] - cut["toy_identity"]["mean"]) / (goal["clean_identity"] - goal["chance_identity"])
    )
    assert "met" not in goal  # the verdict needs the first-quarter and last-half rows
    assert none["toy_identity"]["mean"] > cut["toy_identity"]["mean"]  # the toy reads identity through this attention
    assert set(none["share_per_step"]) == {str(s) for s in range(result["steps"])} and "share_per_step" not in cut
    assert (tmp_path / "p.json").exists() and "| all steps, all blocks |" in (tmp_path / "p.md").read_text()
    assert "share of target attention on context" in capsys.readouterr().out


def test_goal_verdict():
    def row(key, identity, factor=0.0, success=1.0):
        r = {"key": key, "factor": factor, "toy_identity": {"mean": identity}, "edit_success": {"mean": success}}
        return r

    none = row("none", 0.9, factor=None)
    none["chance_identity"] = {"mean": 0.3}
    result = {"rows": [none, row("first_quarter", 0.6), row("last_half", 0.8)]}
    goal = premise.goal_check(result)
    assert goal["removed"] == pytest.approx({"first_quarter": 0.5, "last_half": 1 / 6})
    assert goal["met"] and all(goal["checks"].values())
    result["rows"][2] = row("last_half", 0.75)  # removes 25%: not below the bar
    assert not premise.goal_check(result)["met"] and not premise.goal_check(result)["checks"]["last_half"]
    none["edit_success"]["mean"] = 0.8
    assert not premise.goal_check(result)["checks"]["edit_success"]
    assert "NOT MET" in "\n".join(premise._goal_lines(premise.goal_check(result)))


def test_unet_editor_cut_removes_the_source_in_its_steps_only():
    """On InstructPix2Pix the cut scales the UNet's source-image input channels: no cut = stock pixels;
    cut in every step = the output no longer depends on the source at all; cut in the first steps only =
    the source is read again later."""
    from decontext.editors.instruct_pix2pix import InstructPix2PixEditor

    pipe = InstructPix2PixEditor.tiny().pipe
    rng = np.random.default_rng(0)
    a, b = (Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(2))

    def edit(image):
        return pipe(
            image=image,
            prompt="add a hat",
            num_inference_steps=6,
            guidance_scale=5.0,
            image_guidance_scale=1.5,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        ).images[0]

    stock_a, stock_b = edit(a), edit(b)
    assert not np.array_equal(stock_a, stock_b)
    with cutting(pipe) as state:
        assert np.array_equal(edit(a), stock_a)  # no cut: the stock pipeline, bit for bit
        assert sorted(state.sigmas) == list(range(6)) and state.sigmas[0] == pytest.approx(1.0)
        state.cut = Cut(None, None, BLOCK)
        assert np.array_equal(edit(a), edit(b))  # the source never reaches the UNet
        state.cut = Cut((0, 1), None, BLOCK)
        early_a = edit(a)
        assert not np.array_equal(early_a, stock_a) and not np.array_equal(early_a, edit(b))
    assert len(pipe.unet._forward_pre_hooks) == 0  # the hook is gone
    assert np.array_equal(edit(a), stock_a)
