"""The Qwen-Image-Edit editor on a tiny model: layout against the pipeline, exact masked shares, stock
outputs under the probe, pixel gradients, the stock pipeline edit, a DeContext run and the CLIs."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.data import astronaut

from decontext import editors as editor_registry
from decontext.config import ProtectConfig
from decontext.editors.base import Editor
from decontext.editors.blocks import PROBE_KWARG
from decontext.editors.qwen_image_edit import QwenImageEditEditor
from decontext.images import from_array
from decontext.methods import build_method
from decontext.pgd import PGDConfig
from decontext.protect import protect
from decontext.runs import image_seed

SIZE = (32, 48)  # non-square: 2 x 3 packed tokens per image
PROMPTS = ["add a hat", "make the person smile with glasses"]  # different lengths: the text mask is active


@pytest.fixture(scope="module")
def editor():
    return QwenImageEditEditor.tiny(seed=3)


@pytest.fixture(scope="module")
def pixels():
    return torch.rand(1, 3, *SIZE, generator=torch.Generator().manual_seed(0))


def test_protocol_and_geometry(editor):
    assert isinstance(editor, Editor) and editor.family == "qwen_image_edit"
    assert editor.multiple_of == 16 and editor.depths == {"double": 2}
    assert editor.resolve_blocks("single:0-25/38") == ["double.0", "double.1"]
    assert editor.resolve_blocks("double.1") == ["double.1"]
    with pytest.raises(ValueError):
        editor.resolve_blocks("single")
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_dimensions

    w, h, _ = calculate_dimensions(1024 * 1024, 1000 / 600)
    assert editor.working_size(600, 1000) == (h, w)
    assert editor.working_size(50, 83, "native") == (48, 80)


def test_context_latents_and_layout_match_the_pipeline(editor):
    rgb = np.random.default_rng(1).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    pixels = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    condition = editor.condition(pixels, PROMPTS, SIZE)
    pipe = editor.pipe
    processed = pipe.image_processor.preprocess(Image.fromarray(rgb), *SIZE).unsqueeze(2)
    noise, image_latents = pipe.prepare_latents(
        processed, 2, 16, *SIZE, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(0)
    )
    assert torch.allclose(condition.latents, image_latents, atol=1e-5)
    tokens = (SIZE[0] // 16) * (SIZE[1] // 16)
    layout = condition.layout
    assert (layout.target, layout.context) == (noise.shape[1], image_latents.shape[1]) == (tokens, tokens)
    # Text tokens = the pipeline's own encode_prompt with the image; the shorter prompt is zero-padded and masked.
    embeds, mask = pipe.encode_prompt(prompt=PROMPTS, image=[Image.fromarray(rgb)] * 2, device=torch.device("cpu"))
    assert layout.text == embeds.shape[1] and torch.equal(condition.extra["mask"], mask.bool())
    assert not condition.extra["mask"].all()
    assert torch.allclose(condition.extra["embeds"], embeds, atol=1e-5)


def _captured_inputs(editor, blocks):
    """Forward pre-hooks on the probed attention modules: their (hidden, text, mask, rotary) inputs."""
    captured, handles = {}, []
    for name in blocks:
        attn = editor.blocks[name].module.attn

        def hook(module, args, kwargs, name=name):
            # Without the probed call's record: what the stock layer is handed.
            captured[name] = {k: v for k, v in kwargs.items() if k != PROBE_KWARG}

        handles.append(attn.register_forward_pre_hook(hook, with_kwargs=True))
    return captured, handles


def _reference_share(attn, inputs, layout):
    """Brute force in float64: the softmax over all keys with masked keys at -inf, mass on context keys."""
    from decontext.editors.blocks import joint_key_mask, qwen_joint_qkv

    query, key, _ = qwen_joint_qkv(
        attn, inputs["hidden_states"], inputs["encoder_hidden_states"], inputs["image_rotary_emb"]
    )
    q = query[:, layout.target_slice].transpose(1, 2).double()
    k = key.transpose(1, 2).double()
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    mask = joint_key_mask(inputs["encoder_hidden_states_mask"], inputs["hidden_states"].shape[1])
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1)[..., layout.context_slice].sum(-1).mean(dim=(1, 2))


@pytest.mark.parametrize("fused,stop", [(True, False), (False, False), (True, True)])
def test_shares_equal_the_masked_brute_force_softmax(editor, pixels, fused, stop):
    blocks = editor.resolve_blocks("double")
    condition = editor.condition(pixels, PROMPTS, SIZE)
    noise = editor.noise_like(condition, [torch.Generator().manual_seed(1)])
    captured, handles = _captured_inputs(editor, blocks)
    try:
        with torch.no_grad(), editor.probe(blocks) as probe:
            probe.fused = fused
            sigma = torch.tensor([0.99, 0.7])
            probed = editor.probed_velocity(noise, sigma, condition, stop_after=blocks[-1] if stop else None)
            assert (probed.velocity is None) == stop
            shares = probed.shares
    finally:
        for handle in handles:
            handle.remove()
    assert captured[blocks[0]]["encoder_hidden_states_mask"] is not None  # the mask reached the layer
    for name in blocks:
        reference = _reference_share(editor.blocks[name].module.attn, captured[name], condition.layout)
        assert torch.allclose(shares[name].double(), reference, atol=1e-5), (name, shares[name], reference)
    # Without the mask the padded keys would take mass: the test is sensitive to it.
    unmasked = _reference_share(
        editor.blocks[blocks[0]].module.attn,
        {**captured[blocks[0]], "encoder_hidden_states_mask": None},
        condition.layout,
    )
    assert not torch.allclose(unmasked, shares[blocks[0]].double(), atol=1e-5)


def test_probed_processor_outputs_equal_the_stock_processor(editor, pixels):
    blocks = editor.resolve_blocks("double")
    condition = editor.condition(pixels, PROMPTS, SIZE)
    noise = editor.noise_like(condition, [torch.Generator().manual_seed(2)])
    captured, handles = _captured_inputs(editor, blocks)
    try:
        with torch.no_grad():
            stock = editor.velocity(noise, torch.tensor(0.9), condition)
            with editor.probe(blocks):
                probed = editor.velocity(noise, torch.tensor(0.9), condition)
                processor = editor.blocks[blocks[0]].module.attn.processor
                ours = processor(editor.blocks[blocks[0]].module.attn, **captured[blocks[0]])
            original = editor.blocks[blocks[0]].module.attn.processor
            theirs = original(editor.blocks[blocks[0]].module.attn, **captured[blocks[0]])
    finally:
        for handle in handles:
            handle.remove()
    assert type(original).__name__ == "QwenDoubleStreamAttnProcessor2_0"
    assert torch.allclose(probed, stock, atol=1e-5)
    for a, b in zip(ours, theirs, strict=False):
        assert torch.allclose(a, b, atol=1e-5)


def test_share_gradient_matches_float64_finite_differences(pixels):
    editor = QwenImageEditEditor.tiny(seed=5, dtype=torch.float64, vlm_refresh=0)
    blocks = editor.resolve_blocks("double")
    x = pixels.double()
    editor.condition(x, PROMPTS[:1], SIZE, step=0)  # Qwen reads the image once (no gradient through it)
    noise = editor.noise_like(editor.condition(x, PROMPTS[:1], SIZE, step=1), [torch.Generator().manual_seed(3)])

    def share(p):
        with editor.probe(blocks):
            probed = editor.probed_velocity(
                noise, torch.tensor(0.95), editor.condition(p, PROMPTS[:1], SIZE, step=1), stop_after=blocks[-1]
            )
            return probed.mean_share(blocks).sum()

    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(share(x), x)
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    # diffusers' Qwen RoPE runs in complex64 and base.to_vae_input passes pixels through float32, so the
    # "float64" pass carries fp32 rounding: a step of 1e-3 keeps it below the O(h^2) truncation error.
    h = 1e-3
    with torch.no_grad():
        numeric = (share(x + h * direction) - share(x - h * direction)) / (2 * h)
    analytic = (grad * direction).sum()
    assert abs(float(numeric)) > 1e-8
    assert torch.allclose(analytic, numeric, rtol=1e-3, atol=1e-9), (analytic, numeric)


def test_edit_runs_the_stock_pipeline(editor):
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (*SIZE, 3), dtype=np.uint8))
    outputs = editor.edit(image, ["add a hat"], [1], steps=2, guidance=1.0, resolution="native")
    assert len(outputs) == 1 and outputs[0].size == (SIZE[1], SIZE[0])
    with editor.probe(["double.0"]), pytest.raises(RuntimeError, match="outside a probe context"):
        editor.edit(image, ["add a hat"], [1], steps=2, guidance=1.0, resolution="native")


def test_decontext_lowers_the_share_within_budget(editor):
    image = from_array(np.array(Image.fromarray(astronaut()).resize((SIZE[1], SIZE[0]))))
    method = build_method("decontext", prompts=PROMPTS)
    settings = ProtectConfig(pgd=PGDConfig(eps=25.5, alpha=2.55, steps=8), resolution="native", measure_draws=2)
    outcome = protect(editor, method, image.pixels, settings, image_seed(0, "wide"))
    assert outcome.working_size == SIZE
    assert outcome.after["share"] < outcome.before["share"], (outcome.before, outcome.after)
    assert (outcome.pixels - image.pixels).abs().max() <= 25.5 / 255 + 1e-6
    assert editor._active_probe is None


def test_attack_and_inference_clis(tmp_path):
    assert editor_registry.EDITORS["qwen_image_edit"] == "decontext.editors.qwen_image_edit:QwenImageEditEditor"
    from decontext.cli.attack import main as attack_main
    from decontext.cli.edit import main as inference_main

    Image.fromarray(astronaut()).resize((SIZE[1], SIZE[0])).save(tmp_path / "astro.png")
    code = attack_main(
        family="qwen_image_edit",
        argv=[
            "--model",
            "tiny",
            "--device",
            "cpu",
            "--input",
            str(tmp_path / "astro.png"),
            "--output",
            str(tmp_path / "protected"),
            "--steps",
            "2",
            "--resolution",
            "native",
        ],
    )
    assert code == 0 and (tmp_path / "protected" / "astro.png").is_file()
    manifest = json.loads((tmp_path / "protected" / "manifest.json").read_text())
    assert manifest
    code = inference_main(
        family="qwen_image_edit",
        argv=[
            "--model",
            "tiny",
            "--device",
            "cpu",
            "--images",
            str(tmp_path / "protected" / "astro.png"),
            "--output",
            str(tmp_path / "edits"),
            "--prompt",
            "add a hat",
            "--steps",
            "2",
            "--guidance",
            "1",
            "--resolution",
            "native",
            "--no-progress",
        ],
    )
    assert code == 0 and list((tmp_path / "edits").rglob("*.png"))


# ---------------------------------------------------------------------------------------- Plus (2509 / 2511)
PLUS_SIZE = (32, 64)  # the protected image (reference 0): 2 x 4 packed tokens
REF_SIZE = (32, 32)  # a further reference of another size: 2 x 2 packed tokens


@pytest.fixture(scope="module")
def plus_editor():
    editor = QwenImageEditEditor.tiny(seed=7, plus=True)
    return editor


@pytest.fixture()
def small_vae_area(monkeypatch):
    """The Plus pipeline resizes every reference to ~1024^2 area for the VAE (its module's VAE_IMAGE_SIZE):
    on the tiny model use the area of the test images, so its own resize keeps their sizes (32-multiples)."""
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as plus_module

    monkeypatch.setattr(plus_module, "VAE_IMAGE_SIZE", PLUS_SIZE[0] * PLUS_SIZE[1])


def _rgb(seed, size):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _pipeline_transformer_inputs(editor, images, prompt):
    """The stock Plus pipeline's first transformer call (kwargs), for ``image=images`` at PLUS_SIZE output."""
    captured = []
    handle = editor.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: captured.append(kwargs), with_kwargs=True
    )
    try:
        editor.pipe(
            image=images,
            prompt=prompt,
            height=PLUS_SIZE[0],
            width=PLUS_SIZE[1],
            num_inference_steps=2,
            true_cfg_scale=1.0,
            generator=torch.Generator().manual_seed(0),
            output_type="latent",
        )
    finally:
        handle.remove()
    return captured[0]


def test_plus_pipeline_class_and_from_pretrained(plus_editor, tmp_path):
    from diffusers import QwenImageEditPlusPipeline

    assert type(plus_editor.pipe) is QwenImageEditPlusPipeline and plus_editor.plus
    plus_editor.pipe.save_pretrained(tmp_path / "plus", safe_serialization=True)
    assert (
        json.loads((tmp_path / "plus" / "model_index.json").read_text())["_class_name"] == "QwenImageEditPlusPipeline"
    )
    loaded = QwenImageEditEditor.from_pretrained(tmp_path / "plus", dtype=torch.float32, device="cpu")
    assert type(loaded.pipe) is QwenImageEditPlusPipeline and loaded.plus
    plain = QwenImageEditEditor.tiny(seed=3)
    assert not plain.plus
    with pytest.raises(ValueError):
        plain.set_references([Image.fromarray(_rgb(5, REF_SIZE))])


def test_plus_context_and_text_match_the_pipeline(plus_editor, small_vae_area):
    protected, reference = Image.fromarray(_rgb(1, PLUS_SIZE)), Image.fromarray(_rgb(2, REF_SIZE))
    plus_editor.set_references([reference], resolution="native")
    try:
        pixels = torch.from_numpy(np.array(protected)).permute(2, 0, 1)[None].float() / 255
        condition = plus_editor.condition(pixels, PROMPTS[:1], PLUS_SIZE)
        inputs = _pipeline_transformer_inputs(plus_editor, [protected, reference], PROMPTS[0])
    finally:
        plus_editor.set_references([])
    layout = condition.layout
    own, ref = (PLUS_SIZE[0] // 16) * (PLUS_SIZE[1] // 16), (REF_SIZE[0] // 16) * (REF_SIZE[1] // 16)
    assert (layout.target, layout.context) == (own, own + ref)
    # img_shapes: [target, reference 0, reference 1], each at its own size.
    assert (
        [tuple(s) for s in inputs["img_shapes"][0]]
        == condition.extra["img_shapes"]
        == [(1, 2, 4), (1, 2, 4), (1, 2, 2)]
    )
    # The image stream after the target: every reference's packed latents, concatenated in order.
    stream = inputs["hidden_states"]
    assert stream.shape[1] == layout.target + layout.context
    ours = torch.cat([condition.latents, condition.extra["companions"]], dim=1)
    assert torch.allclose(ours, stream[:, layout.target :], atol=1e-5)
    # Text tokens: Qwen2.5-VL read both images (~384^2 area each, "Picture 1/2") with the prompt.
    assert inputs["encoder_hidden_states_mask"] is None and layout.text == inputs["encoder_hidden_states"].shape[1]
    assert torch.allclose(condition.extra["embeds"], inputs["encoder_hidden_states"], atol=1e-5)
    alone = plus_editor.condition(pixels, PROMPTS[:1], PLUS_SIZE)  # without the further reference the text changes
    assert alone.layout.context == own and alone.layout.text < layout.text


def test_plus_shares_count_every_reference(plus_editor):
    plus_editor.set_references(
        [torch.from_numpy(_rgb(2, REF_SIZE)).permute(2, 0, 1).float() / 255], resolution="native"
    )
    try:
        pixels = torch.rand(1, 3, *PLUS_SIZE, generator=torch.Generator().manual_seed(0))
        blocks = plus_editor.resolve_blocks("double")
        condition = plus_editor.condition(pixels, PROMPTS, PLUS_SIZE)
        assert not condition.extra["mask"].all()
        noise = plus_editor.noise_like(condition, [torch.Generator().manual_seed(1)])
        captured, handles = _captured_inputs(plus_editor, blocks)
        try:
            with torch.no_grad(), plus_editor.probe(blocks):
                shares = plus_editor.probed_velocity(noise, torch.tensor([0.99, 0.7]), condition).shares
        finally:
            for handle in handles:
                handle.remove()
    finally:
        plus_editor.set_references([])
    layout = condition.layout
    assert captured[blocks[0]]["hidden_states"].shape[1] == layout.target + layout.context
    for name in blocks:
        reference = _reference_share(plus_editor.blocks[name].module.attn, captured[name], layout)
        assert torch.allclose(shares[name].double(), reference, atol=1e-5), (name, shares[name], reference)
    # Counting only reference 0's keys gives less: the further reference's keys are in the share.
    from decontext.editors.base import Layout

    own_only = _reference_share(
        plus_editor.blocks[blocks[0]].module.attn,
        captured[blocks[0]],
        Layout(layout.text, layout.target, layout.target),
    )
    assert (own_only < shares[blocks[0]].double() - 1e-6).all()


def test_plus_edit_runs_the_stock_pipeline(plus_editor, small_vae_area):
    image, reference = Image.fromarray(_rgb(3, PLUS_SIZE)), Image.fromarray(_rgb(4, REF_SIZE))
    seen = []
    handle = plus_editor.transformer.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["img_shapes"]), with_kwargs=True
    )
    try:
        outputs = plus_editor.edit(
            image, ["add a hat"], [1], steps=2, guidance=1.0, resolution="native", references=[reference]
        )
    finally:
        handle.remove()
    assert len(outputs) == 1 and outputs[0].size == (PLUS_SIZE[1], PLUS_SIZE[0])
    assert [tuple(s) for s in seen[0][0]] == [(1, 2, 4), (1, 2, 4), (1, 2, 2)]


def test_plus_decontext_lowers_the_share_within_budget(plus_editor):
    image = from_array(np.array(Image.fromarray(astronaut()).resize((PLUS_SIZE[1], PLUS_SIZE[0]))))
    plus_editor.set_references([Image.fromarray(astronaut()).resize((REF_SIZE[1], REF_SIZE[0]))], resolution="native")
    try:
        method = build_method("decontext", prompts=PROMPTS)
        settings = ProtectConfig(pgd=PGDConfig(eps=25.5, alpha=2.55, steps=8), resolution="native", measure_draws=2)
        outcome = protect(plus_editor, method, image.pixels, settings, image_seed(0, "plus"))
    finally:
        plus_editor.set_references([])
    assert outcome.working_size == PLUS_SIZE
    assert outcome.after["share"] < outcome.before["share"], (outcome.before, outcome.after)
    assert (outcome.pixels - image.pixels).abs().max() <= 25.5 / 255 + 1e-6
    assert plus_editor._active_probe is None
