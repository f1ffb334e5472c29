"""The FLUX.1-Kontext editor: geometry, context encoding against the real pipeline, prompt caching."""

import numpy as np
import pytest
import torch
from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS
from PIL import Image

from decontext.editors import load_editor
from decontext.editors.base import resolve_blocks
from decontext.editors.flux_kontext import FluxKontextEditor


@pytest.fixture(scope="module")
def editor():
    return FluxKontextEditor.tiny(seed=3)


def test_tiny_has_real_vae_geometry(editor):
    assert editor.pipe.vae_scale_factor == 8
    assert editor.vae.config.latent_channels == 16
    assert editor.multiple_of == 16
    assert editor.depths == {"double": 2, "single": 4}


@pytest.mark.parametrize("height,width", [(48, 80), (64, 64), (112, 48)])
def test_context_encoding_matches_the_pipeline(editor, height, width):
    rgb = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    pixels = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    ours = editor.condition(pixels, ["add a hat"], (height, width))
    pipe = editor.pipe
    processed = pipe.image_processor.preprocess(Image.fromarray(rgb), height, width)
    _, image_latents, _, image_ids = pipe.prepare_latents(
        processed, 1, 16, height, width, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(0)
    )
    assert ours.latents.shape == image_latents.shape == (1, (height // 16) * (width // 16), 64)
    assert torch.allclose(ours.latents, image_latents, atol=1e-5)
    assert torch.equal(ours.extra["context_ids"], image_ids)
    assert (ours.extra["context_ids"][:, 0] == 1).all() and (ours.extra["target_ids"][:, 0] == 0).all()
    assert torch.equal(ours.extra["target_ids"][:, 1:], image_ids[:, 1:])


def test_working_sizes(editor):
    # auto = the pipeline's preferred Kontext resolution nearest in aspect ratio
    assert editor.working_size(512, 512, "auto") == (1024, 1024)
    h, w = editor.working_size(600, 1000, "auto")
    best = min(PREFERRED_KONTEXT_RESOLUTIONS, key=lambda wh: abs(1000 / 600 - wh[0] / wh[1]))
    assert (w, h) == best
    assert editor.working_size(50, 83, "native") == (48, 80)
    assert editor.working_size(512, 512, 512) == (512, 512)
    h, w = editor.working_size(400, 800, 512)
    assert h % 16 == 0 and w % 16 == 0 and abs(h * w - 512 * 512) / (512 * 512) < 0.1
    with pytest.raises(ValueError):
        editor.working_size(512, 512, 8)


@pytest.mark.parametrize("height,width", [(32, 32), (48, 96)])
def test_layout_is_derived_from_shapes(editor, height, width):
    condition = editor.condition(torch.rand(1, 3, height, width), ["add a hat", "add glasses"], (height, width))
    noise = editor.noise_like(condition, [torch.Generator().manual_seed(0)])
    assert noise.shape == condition.latents.shape and condition.batch == 2
    layout = condition.layout
    tokens = (height // 16) * (width // 16)
    assert (layout.text, layout.target, layout.context) == (editor.max_sequence_length, tokens, tokens)
    assert layout.context_slice == slice(layout.text + tokens, layout.text + 2 * tokens)


def test_prompt_embeddings_cached_and_encoders_released():
    editor = FluxKontextEditor.tiny(seed=4)
    calls = []
    editor.pipe.text_encoder_2.register_forward_hook(lambda *a: calls.append(1))
    first, first_pooled = editor.encode_prompts(["add a hat", "make the person smile"])
    again, _ = editor.encode_prompts(["make the person smile", "add a hat"])
    assert len(calls) == 1
    assert torch.equal(first[0], again[1])
    reference, pooled, _ = editor.pipe.encode_prompt(
        prompt=["add a hat"], prompt_2=None, max_sequence_length=editor.max_sequence_length
    )
    assert torch.allclose(first[0], reference[0], atol=1e-5) and torch.allclose(first_pooled[0], pooled[0], atol=1e-5)
    editor.prepare(["add a hat"], release=True)
    assert editor.pipe.text_encoder is None and editor.pipe.text_encoder_2 is None
    assert torch.equal(editor.encode_prompts(["add a hat"])[0][0], first[0])
    with pytest.raises(RuntimeError, match="released"):
        editor.encode_prompts(["a new prompt"])


def test_block_specifications_scale_with_depth():
    assert resolve_blocks("single:0-25/38", {"double": 19, "single": 38}) == [f"single.{i}" for i in range(26)]
    assert resolve_blocks("single:0-25/38", {"double": 2, "single": 4}) == ["single.0", "single.1", "single.2"]
    assert resolve_blocks("double,single.3", {"double": 2, "single": 4}) == ["double.0", "double.1", "single.3"]
    assert resolve_blocks("single:1-2", {"double": 2, "single": 4}) == ["single.1", "single.2"]
    for bad in ("single:0-9", "triple", "single.7", ""):
        with pytest.raises(ValueError):
            resolve_blocks(bad, {"double": 2, "single": 4})


def test_save_and_load_round_trip_through_from_pretrained(tmp_path, editor):
    editor.pipe.save_pretrained(tmp_path / "kontext")
    loaded = FluxKontextEditor.from_pretrained(tmp_path / "kontext", dtype=torch.float32, device="cpu")
    x = torch.rand(1, 3, 32, 32)
    assert torch.allclose(loaded.image_latents(x, (32, 32)), editor.image_latents(x, (32, 32)))
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        FluxKontextEditor.from_pretrained(tmp_path, dtype=torch.float32, device="cpu")


def test_load_editor_names():
    editor = load_editor("tiny", "flux_kontext", "cpu")
    assert editor.name == "tiny" and editor.family == "flux_kontext"
    with pytest.raises(ValueError, match="dtype"):
        load_editor("tiny", "flux_kontext", "cpu", "float8")
    with pytest.raises(ValueError, match="unknown editor family"):
        load_editor("tiny", "kontext2")
