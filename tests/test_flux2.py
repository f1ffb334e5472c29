"""The FLUX.2 editor on a tiny offline FLUX.2 [klein]: pipeline-exact reference encoding and ids, exact
context shares over several reference images, stock processor outputs, pixel gradients, the stock
pipeline's edit, a DeContext PGD run and the attack CLI (registered at test time)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from decontext.attention import context_share_reference
from decontext.config import ProtectConfig
from decontext.editors import load_editor
from decontext.editors.flux2 import Flux2Editor
from decontext.images import from_array
from decontext.methods import build_method
from decontext.pgd import PGDConfig
from decontext.protect import protect
from decontext.runs import image_seed

PROMPTS = ["add a hat", "make the person smile"]


@pytest.fixture(scope="module")
def editor():
    return Flux2Editor.tiny(seed=3)


def _rgb(height, width, seed):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _pixels(rgb):
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255


def test_tiny_structure(editor):
    assert type(editor.pipe).__name__ == "Flux2KleinPipeline" and not editor.transformer.config.guidance_embeds
    assert editor.multiple_of == 16 and editor.depths == {"double": 1, "single": 4}
    assert editor.resolve_blocks("single:0-25/38") == ["single.0", "single.1", "single.2"]
    assert editor.working_size(50, 83, "native") == (48, 80)
    assert editor.working_size(2048, 1024, "auto") == (1440, 720)  # the pipeline's 1024x1024 area cap
    assert editor.working_size(600, 1000, "auto") == (592, 992)


def test_reference_encoding_and_ids_match_the_pipeline(editor):
    """Two references of different sizes: tokens and ids equal the pipeline's prepare_image_latents."""
    first, second = _rgb(32, 48, 0), _rgb(64, 32, 1)
    editor.set_references([_pixels(second)], resolution="native")
    try:
        condition = editor.condition(_pixels(first), ["add a hat"], (32, 48))
    finally:
        editor.set_references([])
    pipe = editor.pipe
    processed = [
        pipe.image_processor.preprocess(Image.fromarray(rgb), rgb.shape[0], rgb.shape[1], resize_mode="crop")
        for rgb in (first, second)
    ]
    tokens, ids = pipe.prepare_image_latents(
        processed, 1, torch.Generator().manual_seed(0), torch.device("cpu"), torch.float32
    )
    context = torch.cat([condition.latents, condition.extra["companions"]], dim=1)
    assert context.shape == tokens.shape == (1, 6 + 8, 32)
    assert torch.allclose(context, tokens, atol=1e-5)
    assert torch.equal(condition.extra["context_ids"], ids[0])
    _, target_ids = pipe.prepare_latents(
        1, 8, 32, 48, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(0)
    )
    assert torch.equal(condition.extra["target_ids"], target_ids[0])
    # Layout from shapes: text tokens, target grid, every reference's tokens as context.
    assert (condition.layout.text, condition.layout.target, condition.layout.context) == (
        editor.max_sequence_length,
        6,
        14,
    )
    reference, _ = pipe.encode_prompt(
        ["add a hat"],
        max_sequence_length=editor.max_sequence_length,
        text_encoder_out_layers=editor.text_encoder_out_layers,
    )
    assert torch.allclose(condition.extra["embeds"], reference, atol=1e-6)


def _captured_shares(editor, condition, blocks):
    """Run a probed forward; return the probe's shares and brute-force shares from the same q and k."""
    noise = editor.noise_like(condition, [torch.Generator().manual_seed(0)])
    reference = {}
    with editor.probe(blocks) as probe:
        joint = probe.joint

        def spy(name, query, key, value, attend=None, call=None):
            reference[name] = context_share_reference(query, key, call.layout).mean(dim=(1, 2))
            return joint(name, query, key, value, attend, call=call)

        probe.joint = spy
        return editor.probed_velocity(noise, torch.tensor([0.95, 0.7]), condition).shares, reference


def test_shares_equal_brute_force_over_several_references(editor):
    editor.set_references([torch.rand(1, 3, 48, 32, generator=torch.Generator().manual_seed(10))], resolution="native")
    try:
        condition = editor.condition(
            torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(11)), PROMPTS, (32, 48)
        )
        shares, reference = _captured_shares(editor, condition, editor.block_names)
    finally:
        editor.set_references([])
    assert condition.layout.context == 6 + 6 and condition.batch == 2
    assert set(shares) == set(reference) == set(editor.block_names)
    for name in shares:
        assert torch.allclose(shares[name].double(), reference[name], atol=1e-5), name
        assert (shares[name] > 0).all() and (shares[name] < 1).all()


def test_probed_processors_subclass_stock_and_keep_outputs(editor):
    from diffusers.models.transformers.transformer_flux2 import Flux2AttnProcessor, Flux2ParallelSelfAttnProcessor

    with editor.probe(editor.block_names) as probe:  # the hooked processors subclass the stock ones of each block kind
        hooked = editor.transformer.attn_processors
        assert all(
            isinstance(
                hooked[editor.blocks[n].processor_key],
                Flux2AttnProcessor if n.startswith("double") else Flux2ParallelSelfAttnProcessor,
            )
            and hooked[editor.blocks[n].processor_key].hook is probe
            for n in editor.block_names
        )
    condition = editor.condition(
        torch.rand(1, 3, 48, 32, generator=torch.Generator().manual_seed(12)), PROMPTS, (48, 32)
    )
    noise = editor.noise_like(condition, [torch.Generator().manual_seed(1)])
    stock_types = {k: type(v) for k, v in editor.transformer.attn_processors.items()}
    with torch.no_grad():
        stock = editor.velocity(noise, torch.tensor(0.9), condition)
        with editor.probe(editor.block_names):
            probed = editor.velocity(noise, torch.tensor(0.9), condition)
        with editor.text_attention(editor.block_names[:2]):
            maps = editor.probed_velocity(noise, torch.tensor(0.9), condition).text_maps
            assert maps["double.0"].shape == (2, condition.layout.target)
    assert torch.allclose(stock, probed, atol=1e-5)
    assert {k: type(v) for k, v in editor.transformer.attn_processors.items()} == stock_types


def test_share_gradient_matches_float64_finite_differences():
    editor = Flux2Editor.tiny(seed=5, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(1, 3, 32, 48, generator=g, dtype=torch.float64) * 0.6 + 0.2
    direction = torch.randn(pixels.shape, generator=g, dtype=torch.float64)
    condition = editor.condition(pixels, ["add a hat"], (32, 48))
    noise = editor.noise_like(condition, [torch.Generator().manual_seed(2)])

    def share(x):
        with editor.probe(["double.0", "single.1"]):
            return (
                editor.probed_velocity(
                    noise, torch.tensor(0.97), editor.condition(x, ["add a hat"], (32, 48)), stop_after="single.1"
                )
                .mean_share()
                .sum()
            )

    x = pixels.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(share(x), x)
    # Not smaller: diffusers applies RoPE in fp32 even for fp64 inputs. Not larger: the random tiny model is
    # curved enough that h = 1e-3 already shows a 4e-4 truncation error (it shrinks as h^2).
    h = 3e-4
    with torch.no_grad():
        numeric = (share(pixels + h * direction) - share(pixels - h * direction)) / (2 * h)
    analytic = (grad * direction).sum()
    assert abs(float(analytic)) > 1e-8
    assert torch.allclose(analytic, numeric, rtol=1e-4, atol=1e-9), (float(analytic), float(numeric))


def test_decode_inverts_the_token_path(editor):
    condition = editor.condition(
        torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(13)), ["add a hat"], (32, 48)
    )
    pixels = editor.decode(condition.latents, condition)
    assert pixels.shape == (1, 3, 32, 48) and 0 <= float(pixels.min()) and float(pixels.max()) <= 1


def test_edit_runs_the_stock_pipeline_with_released_text_encoder():
    editor = Flux2Editor.tiny(seed=2)
    editor.prepare(["add a hat"], release=True)
    assert editor.pipe.text_encoder is None and editor.true_cfg
    image = Image.fromarray(_rgb(64, 96, 3))
    first = editor.edit(
        image, ["add a hat", "add a hat"], [0, 1], steps=2, guidance=4.0, references=[Image.fromarray(_rgb(64, 64, 4))]
    )
    again = editor.edit(image, ["add a hat"], [0], steps=2, guidance=4.0, references=[Image.fromarray(_rgb(64, 64, 4))])
    assert [im.size for im in first] == [(96, 64)] * 2
    assert (
        np.abs(np.asarray(first[0]).astype(int) - np.asarray(again[0]).astype(int)).max() <= 2
    )  # seeded: batch size changes only rounding
    assert not np.array_equal(np.asarray(first[0]), np.asarray(first[1]))


def test_decontext_pgd_lowers_the_share_within_budget():
    editor = Flux2Editor.tiny(seed=1)
    image = from_array(_rgb(32, 48, 7))
    method = build_method("decontext", prompts=PROMPTS)
    settings = ProtectConfig(pgd=PGDConfig(eps=16, alpha=4, steps=6), resolution="native", measure_draws=2)
    outcome = protect(editor, method, image.pixels, settings, image_seed(0, "x"))
    assert outcome.after["share"] < outcome.before["share"]
    assert float((outcome.pixels - image.pixels).abs().max()) * 255 <= 16 + 1e-3
    assert {k: type(v) for k, v in editor.transformer.attn_processors.items()} == {
        k: type(v) for k, v in Flux2Editor.tiny(seed=1).transformer.attn_processors.items()
    }


def test_attack_cli_through_the_registry(tmp_path):
    from decontext.cli.attack import main as attack_main

    assert isinstance(load_editor("tiny", "flux2", "cpu", "float32"), Flux2Editor)
    Image.fromarray(_rgb(48, 80, 9)).save(tmp_path / "photo.png")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("add a hat\nmake the person smile\n")
    out = tmp_path / "out"
    argv = [
        "--model",
        "tiny",
        "--input",
        str(tmp_path / "photo.png"),
        "--output",
        str(out),
        "--eps",
        "8",
        "--alpha",
        "4",
        "--steps",
        "2",
        "--resolution",
        "native",
        "--measure-draws",
        "1",
        "--no-progress",
        "--prompts",
        str(prompts),
    ]
    assert attack_main(family="flux2", argv=argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["editor"] == {"family": "flux2", "model": "tiny"}
    saved = np.asarray(Image.open(out / "photo.png")).astype(int)
    assert 0 < np.abs(saved - _rgb(48, 80, 9).astype(int)).max() <= 8


def test_entry_points_attack_then_edit(monkeypatch, tmp_path):
    """attack/attack_flux2.py and inference/flux2_inference.py call the CLI with family "flux2"."""
    import runpy

    from decontext.cli import attack, edit

    Image.fromarray(_rgb(64, 96, 11)).save(tmp_path / "photo.png")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("add a hat\n")
    families = []
    for script, module in (("attack/attack_flux2.py", attack), ("inference/flux2_inference.py", edit)):
        monkeypatch.setattr(
            module, "main", lambda argv=None, family=None, _m=module.__name__: families.append((_m, family)) or 0
        )
        with pytest.raises(SystemExit) as done:
            runpy.run_path(script, run_name="__main__")
        assert done.value.code == 0
    assert families == [("decontext.cli.attack", "flux2"), ("decontext.cli.edit", "flux2")]
    monkeypatch.undo()
    argv = [
        "--model",
        "tiny",
        "--images",
        str(tmp_path / "photo.png"),
        "--output",
        str(tmp_path / "edits"),
        "--prompts",
        str(prompts),
        "--steps",
        "2",
        "--resolution",
        "native",
        "--no-progress",
    ]
    assert edit.main(family="flux2", argv=argv) == 0
    edited = list((tmp_path / "edits").rglob("seed*.png"))
    assert len(edited) == 1 and Image.open(edited[0]).size == (96, 64)


def test_from_pretrained_picks_the_pipeline_class_from_model_index(tmp_path, editor):
    editor.save_pretrained(tmp_path / "klein")
    assert json.loads((tmp_path / "klein" / "model_index.json").read_text())["_class_name"] == "Flux2KleinPipeline"
    loaded = Flux2Editor.from_pretrained(tmp_path / "klein", dtype=torch.float32, device="cpu")
    assert (
        type(loaded.pipe).__name__ == "Flux2KleinPipeline"
        and loaded.text_encoder_out_layers == editor.text_encoder_out_layers
    )
    pixels = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(30))
    assert torch.allclose(
        loaded.condition(pixels, ["add a hat"], (32, 48)).extra["embeds"],
        editor.condition(pixels, ["add a hat"], (32, 48)).extra["embeds"],
        atol=1e-6,
    )
    index = json.loads((tmp_path / "klein" / "model_index.json").read_text())
    index["_class_name"] = "FluxKontextPipeline"
    (tmp_path / "klein" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="not a FLUX.2 pipeline"):
        Flux2Editor.from_pretrained(tmp_path / "klein", dtype=torch.float32, device="cpu")
