"""Issue 41, adversarial training: the learned remover in the trainer's loop (``--attackers remover``,
``amortize.AdaptiveRemover``), trained in turn with the protector, on the tiny FLUX.1-Kontext and the toy world's
training identities."""

import json
import shlex

import pytest
import torch
from safetensors.torch import load_file

from decontext import amortize
from decontext.amortize import AdaptiveRemover, ImageSource, TrainConfig
from decontext.attackers import parse_attacker, small_unet
from decontext.purify import EOT
from decontext.toy.worlds import get_world
from tests.test_robust_objectives import ARCH, PROMPTS, edit_away, finite_difference_agrees, images

QUICK = dict(checkpoint_every=1, validate_every=100, val_count=2, val_draws=1, device="cpu", progress=False)


def remover_config(steps=3, **changes):
    base = dict(
        model="tiny",
        family="flux_kontext",
        method="edit_away",
        method_options={"prompts": PROMPTS, "sample_steps": 1},
        size=32,
        batch_size=2,
        steps=steps,
        lr=1e-3,
        architecture=ARCH,
        attackers=("remover",),  # drawn every step: each protector step goes through R
    )
    return TrainConfig(**{**base, **changes})


def train(config, out, stop_after=None):
    return amortize.train(config, out, amortize.RunOptions(**QUICK, stop_after=stop_after), log=lambda *_: None)


def test_the_gradient_reaches_the_protector_through_the_remover(tiny_editor):
    editor = tiny_editor("flux_kontext")
    remover = AdaptiveRemover(parse_attacker("remover:lr=0.01"), seed=0, every=1, steps=4)
    clean = images(2, seed=5)
    stamp = torch.randn(clean.shape, generator=torch.Generator().manual_seed(6)).sign() * 12 / 255
    remover.update(clean, (clean + stamp).clamp(0, 1))  # a few large steps: R far from the identity it starts as
    x = images(1, seed=7)
    assert float((remover.differentiable()(x, None) - x).abs().mean()) > 0.01
    assert all(not p.requires_grad for p in remover.net.parameters())  # frozen for the protector's step
    # the central difference sees the real R: a gradient that skipped R (straight-through) would disagree
    finite_difference_agrees([(edit_away(), editor)], EOT([remover], editor), rtol=0.02)
    assert all(p.grad is None for p in remover.net.parameters())  # nothing of the protector's step reaches R


def test_the_remover_learns_in_turn_only_from_the_training_batches(tmp_path, monkeypatch):
    seen = []
    update = AdaptiveRemover.update

    def recording(self, clean, protected):
        seen.append((clean.clone(), protected.detach().clone()))
        return update(self, clean, protected)

    monkeypatch.setattr(AdaptiveRemover, "update", recording)
    config = remover_config(steps=3, attackers=("none", "remover"), remover_every=2)
    record = train(config, tmp_path)
    assert "--attackers none remover --remover-every 2 --remover-steps 2" in record["command"]
    assert record["validation"][-1]["remover_mse"] > 0
    # updates at steps 0 and 2, each on that step's batch of ImageSource (training identities only)
    source = ImageSource(config.images, config.size, config.seed)
    world = get_world("v1")
    assert len(seen) == 2
    for (clean, protected), step in zip(seen, (0, 2), strict=True):
        assert torch.equal(clean, source.batch(step, config.batch_size))
        assert float((protected - clean).abs().max()) <= config.eps / 255 + 1e-6  # the protector's own output
        identities = [scene.identity for scene in source.scenes(step, config.batch_size)]
        assert identities and all(i in world.train_identities() and not world.is_held_out(i) for i in identities)
    held_out = source.validation(2)
    assert not any(torch.equal(v, c) for v in held_out for clean, _ in seen for c in clean)
    # R's weights moved from their start (the same seed's start, rebuilt)
    fresh = AdaptiveRemover(parse_attacker("remover"), seed=config.seed)
    trained = load_file(str(tmp_path / "checkpoint" / amortize.REMOVER_FILE))
    start = fresh.net.state_dict()
    assert trained.keys() == start.keys() and any(not torch.equal(trained[k], start[k]) for k in start)
    assert sum(p.numel() for p in small_unet(3, 16).parameters()) == sum(v.numel() for v in trained.values())


def test_kill_and_resume_with_the_remover_equals_an_uninterrupted_run(tmp_path):
    config = remover_config(steps=3, remover_every=2)
    train(config, tmp_path / "whole")
    assert train(config, tmp_path / "split", stop_after=1) == {"stopped_at": 1}
    train(config, tmp_path / "split")
    for name in ("protector.safetensors", f"checkpoint/{amortize.REMOVER_FILE}"):
        whole, split = load_file(str(tmp_path / "whole" / name)), load_file(str(tmp_path / "split" / name))
        assert whole.keys() == split.keys() and all(torch.equal(whole[k], split[k]) for k in whole), name
    whole, split = (
        torch.load(tmp_path / run / "checkpoint" / amortize.REMOVER_OPTIMIZER_FILE, weights_only=True)
        for run in ("whole", "split")
    )
    assert whole["param_groups"] == split["param_groups"]
    for key, state in whole["state"].items():
        assert all(torch.equal(state[name], split["state"][key][name]) for name in state)
    logs = [json.loads((tmp_path / run / "protector.json").read_text())["validation"] for run in ("whole", "split")]
    assert logs[0] == logs[1]


def test_recipes_without_a_remover_keep_their_digests_and_the_cli_rebuilds_the_shipped_ones(monkeypatch, tmp_path):
    from decontext.assets import data_path
    from decontext.cli.amortize import main

    built = []
    monkeypatch.setattr(amortize, "train", lambda config, out, run: built.append(config) or {"stopped_at": 0})
    for name in ("toy-decontext", "toy-encoder"):
        shipped = json.loads(data_path(f"data/protectors/{name}/protector.json").read_text())
        recipe = dict(shipped["recipe"])
        digest = recipe.pop("digest")
        assert TrainConfig(**recipe).digest() == digest
        argv = shlex.split(shipped["command"])[4:]  # after "python -m decontext amortize"
        assert main([*argv, "--out", str(tmp_path / name), "--no-progress"]) == 0
        assert built[-1].digest() == digest
    plain = TrainConfig(attackers=("none", "jpeg"))
    assert plain.digest() == TrainConfig(attackers=("none", "jpeg"), remover_every=1, remover_steps=2).digest()
    with_remover = TrainConfig(attackers=("none", "remover"))
    assert with_remover.digest() != TrainConfig(attackers=("none",)).digest()
    assert with_remover.digest() != TrainConfig(attackers=("none", "remover"), remover_steps=3).digest()
    assert with_remover.digest() != TrainConfig(attackers=("none", "remover"), remover_every=2).digest()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--remover-every", "2"], "--remover-every 2: no remover to train"),
        (["--attackers", "none", "--remover-steps", "3"], "--remover-steps 3: no remover to train"),
        (["--attackers", "remover", "--remover-steps", "0"], "--remover-steps must be >= 1"),
        (["--attackers", "remover:steps=50"], "--attackers remover:steps=50: steps set the benchmark's remover"),
        (["--attackers", "remover:draw=1"], "--attackers remover:draw=1: draw set the benchmark's remover"),
        (["--attackers", "remover", "remover:width=8"], "--attackers remover remover:width=8: one remover at most"),
        (["--attackers", "remover", "--size", "30"], "the remover net needs --size a multiple of 4, got 30"),
    ],
)
def test_the_cli_refuses_a_remover_it_cannot_train_naming_the_flag(argv, message, tmp_path, capsys):
    from decontext.cli.amortize import main

    common = ["--model", "tiny", "--family", "flux_kontext", "--method", "edit_away", "--no-progress"]
    assert main([*common, *argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_the_remover_runs_only_where_the_trainer_keeps_it():
    with pytest.raises(ValueError, match="--attackers remover: the learned remover is trained beside the protector"):
        amortize.attackers_in_the_loop(["remover"], None, None)
    remover = AdaptiveRemover(parse_attacker("remover:width=8,lr=0.01"), seed=0)
    assert amortize.attackers_in_the_loop(["none", "remover:width=8,lr=0.01"], None, None, remover)[1] is remover
    assert remover.optimizer.param_groups[0]["lr"] == 0.01 and remover.net.enc1[0].out_channels == 8
