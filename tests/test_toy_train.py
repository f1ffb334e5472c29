"""The toy training script runs end to end for a few iterations and saves a loadable editor."""

import json


def test_training_smoke(tmp_path):
    from experiments import toy_train as train

    info = train.main(
        [
            "--smoke",
            "--out",
            str(tmp_path / "editor"),
            "--reader-out",
            str(tmp_path / "reader"),
            "--work",
            str(tmp_path / "work"),
            "--threads",
            "1",
        ]
    )
    assert set(info["done"]) == {"vae", "reader", "transformer"}
    assert (tmp_path / "editor" / "model_index.json").exists()
    settings = json.loads((tmp_path / "editor" / "decontext_toy.json").read_text())
    assert settings["height"] == 64 and settings["max_sequence_length"] >= 13
    assert (tmp_path / "reader" / "reader.safetensors").exists()

    from diffusers import FluxKontextPipeline

    pipe = FluxKontextPipeline.from_pretrained(str(tmp_path / "editor"))
    assert pipe.vae.config.latent_channels == 4 and len(pipe.vae.config.block_out_channels) == 3


def test_v3_recipe_smoke_trains_on_world_v3(tmp_path):
    """--version toy-v3 trains VAE, reader and transformer on world v3; the folder names its world and
    reader, the reader reads v3's heads, and the smoke run also shortens the recipe's base stage."""
    from decontext.toy import world3
    from decontext.toy.reader import ToyReader
    from decontext.toy.worlds import reader_heads
    from experiments import toy_train as train

    info = train.main(
        [
            "--version",
            "toy-v3",
            "--smoke",
            "--out",
            str(tmp_path / "editor"),
            "--reader-out",
            str(tmp_path / "reader"),
            "--work",
            str(tmp_path / "work"),
            "--threads",
            "1",
        ]
    )
    assert info["world"] == "v3" and info["recipe"]["world"] == "v3" and info["recipe"]["base_steps"] == 3
    settings = json.loads((tmp_path / "editor" / "decontext_toy.json").read_text())
    assert settings["world"] == "v3" and settings["reader"] == str((tmp_path / "reader").resolve())
    reader = ToyReader.load(tmp_path / "reader")
    assert reader.world is world3 and set(reader.net.heads) == set(reader_heads(world3))
    assert json.loads((tmp_path / "editor" / "vae" / "config.json").read_text())["block_out_channels"] == [16, 32]


def test_training_sigmas_follow_the_named_density():
    """v1's sampler is exactly the old one (its weights stay reproducible); logit-normal has the FLUX
    density's quantiles after the resolution shift."""
    import math

    import torch

    from experiments.toy_train import training_sigmas

    shift = 1.6
    gen = torch.Generator().manual_seed(3)
    old_u = torch.rand(50_000, generator=torch.Generator().manual_seed(3))
    assert torch.equal(
        training_sigmas("shifted_uniform", shift, 50_000, gen), shift * old_u / (1 + (shift - 1) * old_u)
    )
    s = training_sigmas("logit_normal", shift, 200_000, torch.Generator().manual_seed(4))
    assert 0 < float(s.min()) and float(s.max()) < 1
    for q, z in ((0.25, -0.6745), (0.5, 0.0), (0.75, 0.6745)):
        u = 1 / (1 + math.exp(-z))
        assert abs(float(torch.quantile(s, q)) - shift * u / (1 + (shift - 1) * u)) < 4e-3
    import pytest

    with pytest.raises(ValueError, match="unknown timestep sampler"):
        training_sigmas("cosine", shift, 4, gen)


def test_swap_late_context_only_below_the_threshold():
    import numpy as np
    import torch

    from experiments.toy_train import swap_late_context

    src = torch.arange(10, dtype=torch.float32)[:, None, None].expand(10, 3, 2).clone()
    idx = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    sigma = torch.tensor([0.95, 0.9, 0.81, 0.79, 0.5, 0.2, 0.99, 0.01])
    ctx = swap_late_context(src, idx, sigma, 0.8, np.random.default_rng(0))
    own = ctx[:, 0, 0].numpy() == idx
    assert own.tolist() == [True, True, True, False, False, False, True, False]


def test_mismatched_context_share_ignores_the_noise_level():
    """The c5 candidate's data bias: a share of samples, drawn per sample whatever sigma, get another scene."""
    import numpy as np
    import torch

    from experiments.toy_train import swap_context

    src = torch.arange(50, dtype=torch.float32)[:, None, None].expand(50, 3, 2).clone()
    rng = np.random.default_rng(0)
    idx = rng.integers(50, size=20_000)
    flags = torch.from_numpy(rng.random(len(idx)) < 0.3)
    ctx = swap_context(src, idx, flags, rng)
    swapped = ctx[:, 0, 0].numpy() != idx
    assert np.array_equal(swapped, flags.numpy())  # exactly the flagged samples, always another scene
    assert abs(swapped.mean() - 0.3) < 0.01


def test_training_smoke_v2_recipe(tmp_path):
    """The v2 options: reuse a trained VAE + reader, a text-to-image base stage, the FLUX timestep
    density, text-to-image steps and (labelled) late context swap, recorded in the saved settings."""
    from safetensors.torch import load_file

    from decontext.toy.names import toy_editor_dir
    from experiments import toy_train as train

    info = train.main(
        [
            "--smoke",
            "--out",
            str(tmp_path / "editor"),
            "--reader-out",
            str(tmp_path / "reader"),
            "--work",
            str(tmp_path / "work"),
            "--threads",
            "1",
            "--vae-reader-from",
            str(toy_editor_dir("toy-v1")),
            "--base-steps",
            "2",
            "--timesteps",
            "logit_normal",
            "--t2i-share",
            "0.5",
            "--late-swap-sigma",
            "0.8",
        ]
    )
    assert info["recipe"] == {
        "timesteps": "logit_normal",
        "base_steps": 2,
        "t2i_share": 0.5,
        "late_swap_sigma": 0.8,
        "mismatch_share": 0.0,
    }
    settings = json.loads((tmp_path / "editor" / "decontext_toy.json").read_text())
    assert settings["training"]["recipe"]["late_swap_sigma"] == 0.8
    trained = load_file(str(toy_editor_dir("toy-v1") / "vae" / "diffusion_pytorch_model.safetensors"))
    reused = load_file(str(tmp_path / "editor" / "vae" / "diffusion_pytorch_model.safetensors"))
    assert trained.keys() == reused.keys() and all(bool((trained[k] == reused[k]).all()) for k in trained)


def test_training_smoke_architecture_options(tmp_path):
    """The issue-11 candidates' options: a deeper stack and a 2x VAE (256 tokens per 64 px image), with a
    reused reader; the saved editor has that architecture and the stock pipeline edits a held-out face
    at 64 px through it."""
    import numpy as np
    import torch
    from diffusers import FluxKontextPipeline
    from PIL import Image

    from decontext.toy import world
    from decontext.toy.names import READER_DIR
    from decontext.toy.reader import ToyReader
    from experiments import toy_train as train

    info = train.main(
        [
            "--smoke",
            "--out",
            str(tmp_path / "editor"),
            "--reader-out",
            str(tmp_path / "reader"),
            "--work",
            str(tmp_path / "work"),
            "--threads",
            "1",
            "--reader-from",
            str(READER_DIR),
            "--vae-blocks",
            "2",
            "--double-layers",
            "3",
            "--single-layers",
            "6",
        ]
    )
    assert info["recipe"]["architecture"] == {"double_layers": 3, "single_layers": 6, "vae_blocks": 2}
    assert info["reader_from"] == str(READER_DIR) and "reader_steps" not in info  # not trained again
    pipe = FluxKontextPipeline.from_pretrained(str(tmp_path / "editor"))
    assert pipe.transformer.config.num_layers == 3 and pipe.transformer.config.num_single_layers == 6
    assert list(pipe.vae.config.block_out_channels) == [16, 32] and pipe.vae_scale_factor == 2
    # the reused reader is the shipped one, weight for weight
    shipped, copied = ToyReader.load(READER_DIR).net.state_dict(), ToyReader.load(tmp_path / "reader").net.state_dict()
    assert all(torch.equal(shipped[k], copied[k]) for k in shipped)
    face = world.render(world.sample_scene(world.eval_identities()[0], seed=5))
    seen = {}

    def count(module, args, kwargs):
        seen.setdefault("tokens", kwargs["hidden_states"].shape[1])

    pipe.transformer.register_forward_pre_hook(count, with_kwargs=True)
    out = pipe(
        image=Image.fromarray(face),
        prompt="Put a hat on this person.",
        height=64,
        width=64,
        num_inference_steps=2,
        guidance_scale=2.5,
        max_sequence_length=16,
        max_area=64 * 64,
        _auto_resize=False,
        output_type="np",
    ).images[0]
    assert out.shape == (64, 64, 3) and np.isfinite(out).all()
    assert seen["tokens"] == 2 * 16 * 16  # target + context tokens: (64 / 2 / 2)^2 each


def test_toy_config_refuses_impossible_architectures():
    import pytest

    from decontext.toy.model import toy_config

    assert toy_config().vae_channels == (16, 32, 64)
    with pytest.raises(ValueError, match="vae_blocks"):
        toy_config(vae_blocks=4)
    with pytest.raises(ValueError, match="at least one double"):
        toy_config(double_layers=0)


def test_transformer_from_fine_tunes_a_trained_editor(tmp_path):
    """``--transformer-from``: the transformer starts from a trained editor's weights (a fine-tune, as
    the c8 candidate does from toy-v2-fine) and says so in the recipe; another architecture is refused."""
    import pytest
    from diffusers import FluxTransformer2DModel

    from decontext.toy.names import toy_editor_dir
    from experiments import toy_train as train

    fine = toy_editor_dir("toy-v2-fine")
    common = [
        "--smoke",
        "--reader-out",
        str(tmp_path / "reader"),
        "--threads",
        "1",
        "--vae-reader-from",
        str(fine),
        "--vae-blocks",
        "2",
    ]
    info = train.main(
        common + ["--out", str(tmp_path / "editor"), "--work", str(tmp_path / "work"), "--transformer-from", str(fine)]
    )
    assert info["recipe"]["transformer_from"] == str(fine)
    start = FluxTransformer2DModel.from_pretrained(str(fine / "transformer")).state_dict()
    tuned = FluxTransformer2DModel.from_pretrained(str(tmp_path / "editor" / "transformer")).state_dict()
    fresh = train.build_components(seed=0, config=train.toy_config(vae_blocks=2))["transformer"].state_dict()
    gap = max(float((tuned[k] - start[k]).abs().max()) for k in start)
    assert 0 < gap < 0.05  # three smoke steps moved it a little, from the trained weights
    assert max(float((fresh[k] - start[k]).abs().max()) for k in start) > 10 * gap
    with pytest.raises(RuntimeError, match="single_transformer_blocks.4"):
        train.main(
            common
            + [
                "--out",
                str(tmp_path / "e2"),
                "--work",
                str(tmp_path / "w2"),
                "--transformer-from",
                str(fine),
                "--single-layers",
                "6",
            ]
        )
