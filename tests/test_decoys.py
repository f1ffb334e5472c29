"""The encoder attack toward decoys (methods.decoys): each photo pulled toward the pool's photo whose latents are
farthest from its own, on the tiny FLUX.1-Kontext and the toy; the benchmark's method options."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from decontext import amortize
from decontext.benchmark.spec import SpecError, load_spec
from decontext.methods import build_method, parse_method
from decontext.methods.amortized import Protector
from decontext.methods.base import image_means
from tests.test_robust_objectives import ARCH

SIZE = (32, 32)


def decoy_folder(tmp_path, count=4, size=40):
    """``count`` PNG decoys of another size than the working one (they are resized), plus a non-image file."""
    folder = tmp_path / "decoys"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)).save(folder / f"d{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def photos(count=3, seed=0):
    return torch.rand(count, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


def latents(editor, pixels):
    with torch.no_grad():
        return editor.image_latents(pixels, SIZE).float()


def brute_force_choice(editor, folder, clean):
    """For each photo, the decoy file (sorted by name) whose latents are farthest from its own, one at a time."""
    from decontext.images import load_image

    choices = []
    for row in clean:
        own = latents(editor, row[None])
        best, best_index = -1.0, -1
        for index, path in enumerate(sorted(folder.glob("*.png"))):
            decoy = torch.nn.functional.interpolate(
                load_image(path).pixels, size=SIZE, mode="bilinear", antialias=True, align_corners=False
            )
            distance = float((latents(editor, decoy) - own).pow(2).mean())
            if distance > best:
                best, best_index = distance, index
        choices.append(best_index)
    return choices


def test_each_photo_is_pulled_toward_its_farthest_decoy(tmp_path, tiny_editor):
    editor = tiny_editor("flux_kontext")
    folder = decoy_folder(tmp_path)
    method = build_method("encoder", decoys=str(folder))
    clean = photos()
    with method.session(editor):
        method.start(editor, clean, SIZE)
        choice = list(method.decoys.choices())
        assert len(method.decoys) == 4  # notes.txt is not a decoy
        assert choice == brute_force_choice(editor, folder, clean)
        pool = method.decoys.latents(editor, SIZE)
        protected = (clean + 0.03).clamp(0, 1)
        loss, log = method.loss(editor, protected, SIZE, 0, [torch.Generator()] * 3)
        expected = image_means((latents(editor, protected) - pool[choice]).pow(2))
        assert torch.allclose(-loss.detach(), expected, rtol=1e-5, atol=1e-7)
        # a batch in another order (a trainer's subset) finds each row's own photo, hence its own decoy
        loss_swapped, _ = method.loss(editor, protected[[2, 0]], SIZE, 0, [torch.Generator()] * 2)
        assert torch.allclose(loss_swapped.detach(), loss.detach()[[2, 0]], rtol=1e-5, atol=1e-7)
    assert method.config() == {"method": "encoder", "target_value": 0.5, "decoys": str(folder)}
    assert build_method("encoder").config() == {"method": "encoder", "target_value": 0.5}  # old manifests hold


def test_decoy_gradient_reaches_the_protector_through_the_vae(tmp_path, tiny_editor):
    editor = tiny_editor("flux_kontext")
    method = build_method("encoder", decoys=str(decoy_folder(tmp_path)))
    x0 = photos(1)
    offset = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1)).sign() * 8 / 255
    torch.manual_seed(0)
    net = Protector(ARCH, 16.0)
    weight = net.net.conv_out.weight

    def objective():
        x = (x0 + offset + net(x0)).clamp(0, 1)
        return method.loss(editor, x, SIZE, 1, [torch.Generator()])[0].sum()

    with method.session(editor):
        method.start(editor, x0, SIZE)
        objective().backward()
        index = int(weight.grad.abs().argmax())
        analytic = float(weight.grad.flatten()[index])
        flat, h = weight.data.view(-1), 1e-2
        with torch.no_grad():
            flat[index] += h
            above = float(objective())
            flat[index] -= 2 * h
            below = float(objective())
            flat[index] += h
    numeric = (above - below) / (2 * h)
    assert analytic != 0.0
    assert abs(analytic - numeric) <= 0.05 * abs(numeric), (analytic, numeric)


def test_bad_decoys_are_refused_by_name(tmp_path, tiny_editor):
    with pytest.raises(ValueError, match="nowhere: not a folder"):
        build_method("encoder", decoys=str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    method = build_method("encoder", decoys=str(empty))
    editor = tiny_editor("flux_kontext")
    with pytest.raises(ValueError, match="empty: no images"):
        method.start(editor, photos(1), SIZE)
    toy = build_method("encoder", decoys="toy-train")
    with pytest.raises(ValueError, match="flux_kontext:tiny, not a toy editor"):
        toy.start(editor, photos(1), SIZE)
    with pytest.raises(RuntimeError, match="start"):
        build_method("encoder", decoys=str(decoy_folder(tmp_path))).loss(
            editor, photos(1), SIZE, 0, [torch.Generator()]
        )


def test_toy_decoys_are_the_worlds_training_identities_only():
    from decontext.editors import load_editor
    from decontext.toy import world as v1
    from decontext.toy.worlds import heldout_scenes

    editor = load_editor("toy-v1", "flux_kontext", "cpu", "float32")
    method = build_method("encoder", decoys="toy-train")
    clean = torch.stack(
        [torch.from_numpy(v1.render(s)).permute(2, 0, 1).float() / 255 for s in heldout_scenes(v1, 2, 42)]
    )
    with method.session(editor):
        method.start(editor, clean, (64, 64))
    assert len(method.decoys) == len(v1.train_identities()) == 200
    assert all(0 <= i < 200 for i in method.decoys.choices())
    assert not any(v1.is_held_out(identity) for identity in v1.train_identities())


def test_a_trainer_step_with_decoys_records_the_flag(tmp_path):
    folder = decoy_folder(tmp_path)
    config = amortize.TrainConfig(
        model="tiny",
        family="flux_kontext",
        method="encoder",
        method_options={"decoys": str(folder)},
        size=32,
        batch_size=2,
        steps=2,
        lr=1e-3,
        architecture=ARCH,
    )
    options = amortize.RunOptions(
        checkpoint_every=1, validate_every=100, val_count=2, val_draws=1, device="cpu", progress=False
    )
    record = amortize.train(config, tmp_path / "run", options, log=lambda *_: None)
    assert f"--decoys {folder}" in record["command"]
    assert config.digest() != amortize.TrainConfig(**{**config.__dict__, "method_options": {}}).digest()
    assert record["validation"][-1]["protected"]["latent_mse"] > 0


def test_benchmark_method_options_are_parsed_typed_and_checked(tmp_path):
    assert parse_method("encoder") == ("encoder", {})
    assert parse_method("encoder:decoys=toy-train,target_value=0.25") == (
        "encoder",
        {"decoys": "toy-train", "target_value": 0.25},
    )
    assert parse_method("diffusion:sample_steps=8") == ("diffusion", {"sample_steps": 8})
    with pytest.raises(ValueError, match="sample_steps takes a int"):
        parse_method("diffusion:sample_steps=many")
    with pytest.raises(ValueError, match="'t_range=0' is not KEY=VALUE with KEY one of prompts"):
        parse_method("flow_loss:t_range=0,1")
    spec = tmp_path / "s.toml"
    head = 'name = "s"\nseed = 1\neditors = ["toy-v1"]\nbudgets = [16]\nattackers = ["none"]\nmetrics = ["identity"]\n'
    tail = '[identities]\nsource = "toy"\ncount = 2\n[edits]\nprompt_indices = [0]\n'
    spec.write_text(head + 'methods = ["noise", "encoder:decoys=toy-train"]\n' + tail)
    assert load_spec(str(spec)).methods == ["noise", "encoder:decoys=toy-train"]
    spec.write_text(head + 'methods = ["noise", "encoder:decoy=toy-train"]\n' + tail)
    with pytest.raises(SpecError, match="method encoder: 'decoy=toy-train' is not KEY=VALUE"):
        load_spec(str(spec))


def test_the_diffusion_attack_pulls_the_edit_toward_each_photos_decoy(tmp_path, tiny_editor):
    editor = tiny_editor("flux_kontext")
    folder = decoy_folder(tmp_path)
    method = build_method("diffusion", decoys=str(folder), prompts=["make it red", "add a hat"], sample_steps=1)
    clean = photos(1)
    with method.session(editor):
        method.start(editor, clean, SIZE)
        (choice,) = method.decoys.choices()
        assert [choice] == brute_force_choice(editor, folder, clean)
        protected = (clean - 0.03).clamp(0, 1)
        loss, _ = method.loss(editor, protected, SIZE, 0, [torch.Generator().manual_seed(5)])
        with torch.no_grad():
            edit = method.edit(editor, protected, SIZE, torch.Generator().manual_seed(5))
        decoy = method.decoys.images(editor, SIZE)[choice]
        assert torch.allclose(-loss.detach(), (edit - decoy[None]).pow(2).mean().reshape(1), rtol=1e-5)
        grey = build_method("diffusion", prompts=["make it red", "add a hat"], sample_steps=1)
        assert not torch.allclose(loss, grey.loss(editor, protected, SIZE, 0, [torch.Generator().manual_seed(5)])[0])
    assert method.config()["decoys"] == str(folder) and "decoys" not in grey.config()


def test_the_attack_command_takes_decoys_and_records_them(tmp_path):
    from decontext.cli import main

    photo = tmp_path / "in"
    photo.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(photo / "a.png")
    out = tmp_path / "out"
    args = ["attack", "--model", "tiny", "--method", "encoder", "--decoys", str(decoy_folder(tmp_path))]
    assert main([*args, "--input", str(photo), "--output", str(out), "--steps", "2", "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"]["decoys"] == str(tmp_path / "decoys")
    saved = np.asarray(Image.open(out / "a.png")).astype(int)
    assert np.abs(saved - np.asarray(Image.open(photo / "a.png")).astype(int)).max() <= 12
