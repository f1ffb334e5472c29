"""The toy training script runs end to end for a few iterations and saves a loadable editor."""

import json


def test_training_smoke(tmp_path):
    from decontext.toy import train

    info = train.main(["--smoke", "--out", str(tmp_path / "editor"), "--reader-out", str(tmp_path / "reader"), "--work", str(tmp_path / "work"), "--threads", "1"])
    assert set(info["done"]) == {"vae", "reader", "transformer"}
    assert (tmp_path / "editor" / "model_index.json").exists()
    settings = json.loads((tmp_path / "editor" / "decontext_toy.json").read_text())
    assert settings["height"] == 64 and settings["max_sequence_length"] >= 13
    assert (tmp_path / "reader" / "reader.safetensors").exists()

    from diffusers import FluxKontextPipeline

    pipe = FluxKontextPipeline.from_pretrained(str(tmp_path / "editor"))
    assert pipe.vae.config.latent_channels == 4 and len(pipe.vae.config.block_out_channels) == 3
