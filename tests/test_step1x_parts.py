"""Step1X-Edit parts: the connector against a brute-force reference, the official single-file checkpoint
through diffusers' FLUX converter (with the narrow-width shim), and the tiny Qwen2.5-VL conditioning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from decontext.editors.step1x_connector import (
    Step1XConnector,
    convert_step1x_checkpoint,
    load_step1x_checkpoint,
    qwen_features,
    step1x_dit_config,
    timestep_sinusoid,
)
from decontext.editors.tiny import (
    TinyStep1XConfig,
    step1x_official_dit_shapes,
    tiny_qwen25vl,
    write_tiny_step1x_checkpoint,
)

CONFIG = TinyStep1XConfig()
TINY_LOAD = dict(
    head_dim=CONFIG.attention_head_dim, axes_dims_rope=CONFIG.axes_dims_rope, connector_heads=CONFIG.connector_heads
)


def official_connector_keys(depth: int, v10: bool) -> set[str]:
    """The official checkpoint's connector.* names (prefix removed), written out from the spec."""
    keys = {"global_proj_out.weight", "global_proj_out.bias"}
    for module in (
        "S.input_embedder",
        "S.t_embedder.mlp.0",
        "S.t_embedder.mlp.2",
        "S.c_embedder.linear_1",
        "S.c_embedder.linear_2",
    ):
        keys |= {f"{module}.weight", f"{module}.bias"}
    for i in range(depth):
        for part in ("norm1", "self_attn_qkv", "self_attn_proj", "norm2", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1"):
            keys |= {
                f"S.individual_token_refiner.blocks.{i}.{part}.weight",
                f"S.individual_token_refiner.blocks.{i}.{part}.bias",
            }
    return keys | ({"scale_factor"} if v10 else set())


# ---------------------------------------------------------------------------------------------- (a)


def reference_connector(sd: dict, x, t, mask, heads: int, v10: bool):
    """Spec section 3 written out by hand: explicit LayerNorms, explicit masked softmax."""

    def lin(name, v):
        return v @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]

    def silu(v):
        return v / (1 + torch.exp(-v))

    def layer_norm(name, v):
        mu = v.mean(-1, keepdim=True)
        var = ((v - mu) ** 2).mean(-1, keepdim=True)
        return (v - mu) / torch.sqrt(var + 1e-6) * sd[f"{name}.weight"] + sd[f"{name}.bias"]

    m = mask.to(x.dtype)
    mean = (x * m[..., None]).sum(1) / m.sum(1, keepdim=True)
    pooled = lin("global_proj_out", mean * (1 + sd["scale_factor"]) if v10 else mean)
    half = 128
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=x.dtype) / half)
    args = (1000 * t)[:, None] * freqs[None]
    sinusoid = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    c = lin("S.t_embedder.mlp.2", silu(lin("S.t_embedder.mlp.0", sinusoid)))
    c = c + lin("S.c_embedder.linear_2", silu(lin("S.c_embedder.linear_1", mean)))
    h = lin("S.input_embedder", x)
    batch, length, hidden = h.shape
    head_dim = hidden // heads
    valid = mask.bool()
    allowed = valid[:, :, None] & valid[:, None, :]
    allowed[:, :, 0] = True
    for i in range(2):
        p = f"S.individual_token_refiner.blocks.{i}."
        gates = lin(p + "adaLN_modulation.1", silu(c))
        gate_attn, gate_mlp = gates[:, :hidden], gates[:, hidden:]
        qkv = lin(p + "self_attn_qkv", layer_norm(p + "norm1", h))
        out = torch.zeros_like(h)
        for b in range(batch):
            for hd in range(heads):
                cols = slice(hd * head_dim, (hd + 1) * head_dim)
                q = qkv[b, :, :hidden][:, cols]
                k = qkv[b, :, hidden : 2 * hidden][:, cols]
                v = qkv[b, :, 2 * hidden :][:, cols]
                scores = (q @ k.T) / math.sqrt(head_dim)
                scores = scores.masked_fill(~allowed[b], float("-inf"))
                weights = torch.exp(scores - scores.max(-1, keepdim=True).values)
                weights = weights / weights.sum(-1, keepdim=True)
                out[b, :, cols] = weights @ v
        h = h + gate_attn[:, None] * lin(p + "self_attn_proj", out)
        h = h + gate_mlp[:, None] * lin(p + "mlp.fc2", silu(lin(p + "mlp.fc1", layer_norm(p + "norm2", h))))
    return h, pooled


def random_connector(v10: bool, seed: int = 0) -> Step1XConnector:
    connector = Step1XConnector(
        in_dim=12, hidden=16, heads=2, depth=2, mlp_ratio=4, pooled_dim=6, has_scale_factor=v10
    ).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _name, param in connector.named_parameters():
            # every tensor random (LayerNorm affines and gates included) so nothing is an identity
            param.copy_(
                torch.randn(param.shape, generator=generator, dtype=torch.float64) * (0.3 if param.ndim > 1 else 0.5)
            )
    return connector


def connector_inputs():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, 7, 12, generator=generator, dtype=torch.float64)
    mask = torch.zeros(3, 7, dtype=torch.long)
    mask[0, :] = 1
    mask[1, :4] = 1
    mask[2, :1] = 1  # a single valid token: padded rows must still be finite
    x = x * mask[..., None]  # zero past the length, as qwen_features delivers
    return x, torch.tensor([0.1, 0.5, 0.93], dtype=torch.float64), mask


@pytest.mark.parametrize("v10", [False, True])
def test_connector_matches_bruteforce_reference(v10):
    connector = random_connector(v10)
    assert set(connector.state_dict()) == official_connector_keys(2, v10)
    assert len(connector.state_dict()) == (41 if v10 else 40)
    x, t, mask = connector_inputs()
    with torch.no_grad():
        tokens, pooled = connector(x, t, mask)
    ref_tokens, ref_pooled = reference_connector(connector.state_dict(), x, t, mask, heads=2, v10=v10)
    assert tokens.shape == (3, 7, 16) and pooled.shape == (3, 6)
    assert torch.isfinite(tokens).all()
    torch.testing.assert_close(tokens, ref_tokens, rtol=0, atol=1e-10)
    torch.testing.assert_close(pooled, ref_pooled, rtol=0, atol=1e-10)


def test_scale_factor_only_rescales_the_pooled_input():
    v10, v11 = random_connector(True), random_connector(False)
    shared = {k: v for k, v in v10.state_dict().items() if k != "scale_factor"}
    v11.load_state_dict(shared, strict=True)
    with torch.no_grad():
        v10.scale_factor.fill_(-0.75)
    x, t, mask = connector_inputs()
    with torch.no_grad():
        tokens10, pooled10 = v10(x, t, mask)
        tokens11, pooled11 = v11(x, t, mask)
        mean = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        expected = v11.global_proj_out(mean * 0.25)
    assert torch.equal(tokens10, tokens11)
    torch.testing.assert_close(pooled10, expected, rtol=0, atol=1e-12)
    assert not torch.allclose(pooled10, pooled11)


def test_timestep_sinusoid_order_matches_diffusers():
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0.0, 3.5, 250.0, 999.0])
    ours = timestep_sinusoid(t)
    theirs = get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    assert torch.equal(ours[0, :128], torch.ones(128))  # cos first


# ---------------------------------------------------------------------------------------------- (b)


def dit_key_count(double: int, single: int) -> int:
    return 12 + 24 * double + 8 * single + 4


def test_official_key_table_has_the_real_count():
    real = TinyStep1XConfig(num_layers=19, num_single_layers=38, num_attention_heads=24, attention_head_dim=128)
    assert len(step1x_official_dit_shapes(real)) == dit_key_count(19, 38) == 776


def test_real_size_conversion_on_meta_tensors():
    """d = 3072: the converter runs without the shim; inferred config = the spec's target model."""
    from diffusers import FluxTransformer2DModel

    real = TinyStep1XConfig(
        num_layers=19,
        num_single_layers=38,
        num_attention_heads=24,
        attention_head_dim=128,
        text_dim=4096,
        pooled_dim=768,
    )
    with torch.device("meta"):
        state = {k: torch.empty(shape) for k, shape in step1x_official_dit_shapes(real).items()}
        state.update({f"connector.{k}": v for k, v in Step1XConnector().state_dict().items()})
        dit, connector, version = convert_step1x_checkpoint(state)
        config = step1x_dit_config(dit)
        model = FluxTransformer2DModel(**config)
    assert version == "v1.1" and len(connector) == 40 and len(state) == 816
    assert config == dict(
        patch_size=1,
        in_channels=64,
        out_channels=64,
        num_layers=19,
        num_single_layers=38,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=False,
        axes_dims_rope=(16, 56, 56),
    )
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in dit.items()} == expected
    assert sum(math.prod(s) for s in expected.values()) == 11_891_178_560


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("step1x")
    return {
        v: write_tiny_step1x_checkpoint(folder / f"{v}.safetensors", CONFIG, version=v, seed=3)
        for v in ("v1.0", "v1.1")
    }


@pytest.mark.parametrize("version", ["v1.0", "v1.1"])
def test_tiny_checkpoint_round_trips(checkpoints, version):
    from safetensors.torch import load_file

    path = checkpoints[version]
    raw = load_file(str(path))
    connector_keys = {k[len("connector.") :] for k in raw if k.startswith("connector.")}
    dit_keys = {k for k in raw if not k.startswith("connector.")}
    assert dit_keys == set(step1x_official_dit_shapes(CONFIG))
    assert len(dit_keys) == dit_key_count(CONFIG.num_layers, CONFIG.num_single_layers)
    assert connector_keys == official_connector_keys(CONFIG.connector_depth, version == "v1.0")
    assert not any("guidance" in k for k in raw)

    before = dict(raw)
    transformer, connector, detected = load_step1x_checkpoint(path, torch.float32, **TINY_LOAD)
    assert detected == version and connector.has_scale_factor == (version == "v1.0")
    assert raw.keys() == before.keys()  # the converter popped from a copy

    d = CONFIG.num_attention_heads * CONFIG.attention_head_dim
    assert d != 3072  # so the shim is exercised
    dit = transformer.state_dict()
    assert torch.equal(dit["x_embedder.weight"], raw["img_in.weight"])
    assert torch.equal(dit["context_embedder.weight"], raw["txt_in.weight"])
    for i in range(CONFIG.num_single_layers):
        for name in ("weight", "bias"):
            fused = raw[f"single_blocks.{i}.linear1.{name}"]
            p = f"single_transformer_blocks.{i}."
            assert torch.equal(dit[p + f"attn.to_q.{name}"], fused[:d])
            assert torch.equal(dit[p + f"attn.to_k.{name}"], fused[d : 2 * d])
            assert torch.equal(dit[p + f"attn.to_v.{name}"], fused[2 * d : 3 * d])
            assert torch.equal(dit[p + f"proj_mlp.{name}"], fused[3 * d :])
    for key, value in connector.state_dict().items():
        assert torch.equal(value, raw[f"connector.{key}"])

    # the loaded pair runs: connector output feeds the DiT's text stream and pooled vector
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, 10, CONFIG.qwen_hidden, generator=generator)
    mask = torch.zeros(1, 10, dtype=torch.long)
    mask[0, :6] = 1
    t = torch.tensor([0.7])
    with torch.no_grad():
        tokens, pooled = connector(features * mask[..., None], t, mask)
        out = transformer(
            hidden_states=torch.randn(1, 8, 4 * CONFIG.latent_channels, generator=generator),
            encoder_hidden_states=tokens,
            pooled_projections=pooled,
            timestep=t,
            img_ids=torch.zeros(8, 3),
            txt_ids=torch.zeros(10, 3),
            guidance=None,
        ).sample
    assert out.shape == (1, 8, 4 * CONFIG.latent_channels) and torch.isfinite(out).all()


def test_bad_checkpoints_give_clear_errors(checkpoints, tmp_path):
    from safetensors.torch import load_file, save_file

    missing = tmp_path / "nothing.safetensors"
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        load_step1x_checkpoint(missing, torch.float32, **TINY_LOAD)

    pickled = tmp_path / "weights.pt"
    torch.save({"img_in.weight": torch.zeros(2, 2)}, pickled)
    with pytest.raises(ValueError, match=r"weights\.pt is not a readable safetensors"):
        load_step1x_checkpoint(pickled, torch.float32, **TINY_LOAD)

    raw = load_file(str(checkpoints["v1.1"]))

    def broken(name, change):
        state = dict(raw)
        change(state)
        path = tmp_path / name
        save_file(state, str(path))
        return path

    path = broken("no_linear2.safetensors", lambda s: s.pop("single_blocks.1.linear2.weight"))
    with pytest.raises(ValueError, match=r"no_linear2\.safetensors.*single_blocks\.1\.linear2\.weight"):
        load_step1x_checkpoint(path, torch.float32, **TINY_LOAD)
    path = broken("extra.safetensors", lambda s: s.update({"lora_unet.weight": torch.zeros(1)}))
    with pytest.raises(ValueError, match=r"extra\.safetensors.*unexpected.*lora_unet\.weight"):
        load_step1x_checkpoint(path, torch.float32, **TINY_LOAD)
    path = broken("no_fc2.safetensors", lambda s: s.pop("connector.S.individual_token_refiner.blocks.1.mlp.fc2.bias"))
    with pytest.raises(ValueError, match=r"no_fc2\.safetensors.*connector.*blocks\.1\.mlp\.fc2\.bias"):
        load_step1x_checkpoint(path, torch.float32, **TINY_LOAD)
    path = broken("guided.safetensors", lambda s: s.update({"guidance_in.in_layer.weight": torch.zeros(32, 256)}))
    with pytest.raises(ValueError, match=r"guided\.safetensors.*guidance"):
        load_step1x_checkpoint(path, torch.float32, **TINY_LOAD)
    path = broken("plain_flux.safetensors", lambda s: [s.pop(k) for k in list(s) if k.startswith("connector.")])
    with pytest.raises(ValueError, match=r"plain_flux\.safetensors.*connector"):
        load_step1x_checkpoint(path, torch.float32, **TINY_LOAD)
    with pytest.raises(ValueError, match="connector_heads"):
        load_step1x_checkpoint(checkpoints["v1.1"], torch.float32, head_dim=16, axes_dims_rope=(4, 6, 6))
    with pytest.raises(ValueError, match="axes_dims_rope"):
        load_step1x_checkpoint(checkpoints["v1.1"], torch.float32, head_dim=16, connector_heads=2)


# ---------------------------------------------------------------------------------------------- (c)


@pytest.fixture(scope="module")
def qwen():
    return tiny_qwen25vl(CONFIG, seed=0)


def image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(height, width, 3) * 255).astype("uint8"))


def messages(img, instruction):
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": CONFIG.prefix},
                {"type": "image", "image": img},
                {"type": "text", "text": instruction},
            ],
        }
    ]


def test_chat_template_and_image_tokens(qwen):
    _, processor = qwen
    img = image(64, 64)
    text = processor.apply_chat_template(
        messages(img, "make the person smile"), tokenize=False, add_generation_prompt=True, add_vision_id=True
    )
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        + CONFIG.prefix
        + "Picture 1: <|vision_start|><|image_pad|><|vision_end|>make the person smile<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    for size in ((64, 64), (120, 84), (40, 30)):
        inputs = processor(text=[text], images=[image(*size)], return_tensors="pt")
        ids = inputs["input_ids"][0]
        merged = int(inputs["image_grid_thw"][0].prod()) // processor.image_processor.merge_size**2
        assert int((ids == processor.image_token_id).sum()) == merged
        assert CONFIG.min_pixels // 28**2 <= merged <= CONFIG.max_pixels // 28**2
    # like the real 217 of 224, the kept span starts 7 tokens before the first <|image_pad|>
    first = int((ids == processor.image_token_id).nonzero()[0])
    assert first - CONFIG.drop_tokens == 7
    assert processor.tokenizer.decode(ids[CONFIG.drop_tokens : first]) == ":Picture 1: <|vision_start|>"


def test_tiny_qwen_round_trips_offline(qwen, tmp_path):
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    vlm, processor = qwen
    processor.save_pretrained(tmp_path)
    vlm.save_pretrained(tmp_path)
    processor2 = AutoProcessor.from_pretrained(tmp_path, local_files_only=True)
    vlm2 = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path, local_files_only=True).eval()
    img = image(64, 64)
    texts = [
        p.apply_chat_template(
            messages(img, "add a red hat"), tokenize=False, add_generation_prompt=True, add_vision_id=True
        )
        for p in (processor, processor2)
    ]
    assert texts[0] == texts[1]
    inputs = [p(text=[texts[0]], images=[img], return_tensors="pt") for p in (processor, processor2)]
    assert torch.equal(inputs[0]["input_ids"], inputs[1]["input_ids"])
    assert torch.equal(inputs[0]["pixel_values"], inputs[1]["pixel_values"])
    with torch.no_grad():
        a = vlm(**inputs[0], output_hidden_states=True).hidden_states[-1]
        b = vlm2(**inputs[1], output_hidden_states=True).hidden_states[-1]
    assert torch.equal(a, b)


def test_qwen_features(qwen):
    vlm, processor = qwen
    images = [image(64, 64, 1), image(120, 84, 2)]
    instructions = ["make the person smile and give them a red hat", ""]
    kwargs = dict(
        prefix=CONFIG.prefix,
        drop_tokens=CONFIG.drop_tokens,
        max_length=CONFIG.max_length,
        device="cpu",
        dtype=torch.float32,
    )
    features, mask = qwen_features(vlm, processor, images, instructions, **kwargs)
    again, mask_again = qwen_features(vlm, processor, images, instructions, **kwargs)
    assert features.shape == (2, CONFIG.max_length, CONFIG.qwen_hidden) and mask.dtype == torch.long
    assert torch.equal(features, again) and torch.equal(mask, mask_again)
    for b, (img, instruction) in enumerate(zip(images, instructions, strict=False)):
        text = processor.apply_chat_template(
            messages(img, instruction), tokenize=False, add_generation_prompt=True, add_vision_id=True
        )
        inputs = processor(text=[text], images=[img], return_tensors="pt")
        with torch.no_grad():
            hidden = vlm(**inputs, output_hidden_states=True).hidden_states[-1][0]
        n = min(CONFIG.max_length, hidden.shape[0] - CONFIG.drop_tokens)
        assert mask[b].tolist() == [1] * n + [0] * (CONFIG.max_length - n)
        assert torch.equal(features[b, :n], hidden[CONFIG.drop_tokens : CONFIG.drop_tokens + n])
        assert not features[b, n:].any()
    assert mask[1].sum() < mask[0].sum()

    # a sequence longer than drop_tokens + max_length is cut at max_length
    short, short_mask = qwen_features(vlm, processor, images[:1], instructions[:1], **{**kwargs, "max_length": 12})
    assert short_mask.tolist() == [[1] * 12] and torch.equal(short[0], features[0, :12])

    with pytest.raises(ValueError, match="--step1x-prefix.*too short"):
        qwen_features(
            vlm,
            processor,
            images[:1],
            instructions[:1],
            **{**kwargs, "drop_tokens": 500},
            prefix_flag="--step1x-prefix",
        )


def test_tiny_step1x_vae_is_flux_like():
    from decontext.editors.tiny import tiny_step1x_vae

    vae = tiny_step1x_vae(CONFIG, seed=0)
    assert (vae.config.shift_factor, vae.config.scaling_factor) == (0.1159, 0.3611)
    with torch.no_grad():
        latent = vae.encode(torch.zeros(1, 3, 32, 32)).latent_dist.mode()
    assert latent.shape == (1, CONFIG.latent_channels, 4, 4)
    again = tiny_step1x_vae(CONFIG, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(), again.state_dict().values(), strict=False))
