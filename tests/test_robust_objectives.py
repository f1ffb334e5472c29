"""Issue 41's objectives for the amortized protector: through the edit (``methods.edit_away``), attackers in the
loop and an ensemble of editors (``amortize.TrainConfig.attackers`` / ``ensemble``), on the tiny editors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from decontext import amortize
from decontext.amortize import TrainConfig, ensemble_objective
from decontext.images import uint8_to_tensor
from decontext.methods import METHODS, build_method
from decontext.methods.amortized import Protector
from decontext.methods.edit_away import EditAway
from decontext.purify import EOT

PROMPTS = ["make it red", "add a hat"]
SIZE = (32, 32)
# a protector small enough for a CPU test (the shipped one is the same class with DEFAULT_ARCHITECTURE)
ARCH = {
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 1,
    "block_out_channels": [8, 8],
    "down_block_types": ["DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D"],
    "norm_num_groups": 4,
    "add_attention": False,
}
DITS = ["flux_kontext", "step1x_edit", "flux2", "qwen_image_edit"]


def images(count=2, seed=0):
    return torch.rand(count, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


def protector(seed=0):
    torch.manual_seed(seed)
    return Protector(ARCH, 16.0)


def value(members, net, x0, transform=None, step=0, offset=0.0):
    x = (x0 + offset + net(x0)).clamp(0, 1)
    if transform is not None:
        x = transform(x, torch.Generator().manual_seed(step))
    generators = [amortize._generators(0, step, len(x0), k) for k in range(len(members))]
    return ensemble_objective(members, x, SIZE, step, generators)


def session(members, x0):
    import contextlib

    stack = contextlib.ExitStack()
    for method, editor in members:
        stack.enter_context(method.session(editor))
        method.start(editor, x0, SIZE)
    return stack


def finite_difference_agrees(members, transform=None, h=1e-2, rtol=0.05):
    """d objective / d (the protector weight it is most sensitive to): autograd vs a central difference. Float32:
    the protector acts on top of a fixed 8/255 offset, so the objective is far above its rounding.

    The step is found, not set per editor: the first of ``h``, ``10 h`` that moves the objective by at least 1% of
    its value. Float32 rounding inside the editor is relative to the objective's size, and below that change it
    biased the quotient (measured 2026-12-07, AVX-512 CPU, edit_away: on the tiny Qwen-Image-Edit, objective
    ~2.5e-8, h=1e-2 moved it by 0.25% and the quotient was 7% off autograd's on two threads, 0.7% on one; h=0.1
    moves it by 2.5%). The quotient must then equal autograd's to ``rtol``.
    """
    x0 = images(1)
    offset = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1)).sign() * 8 / 255
    net = protector()
    weight = net.net.conv_out.weight
    with session(members, x0):
        # step 1 after a first call: an editor that reads the photo without gradient (the VLM of Qwen-Image-Edit and
        # Step1X-Edit) keeps that first reading, so the difference quotient moves only what the gradient sees
        with torch.no_grad():
            objective = abs(float(value(members, net, x0, transform, step=1, offset=offset)))
        value(members, net, x0, transform, step=1, offset=offset).backward()
        index = int(weight.grad.abs().argmax())
        analytic = float(weight.grad.flatten()[index])
        flat = weight.data.view(-1)

        def quotient(step):
            with torch.no_grad():
                flat[index] += step
                above = float(value(members, net, x0, transform, step=1, offset=offset))
                flat[index] -= 2 * step
                below = float(value(members, net, x0, transform, step=1, offset=offset))
                flat[index] += step
            return (above - below) / (2 * step)

        tried = []
        for step in (h, 10 * h):
            numeric = quotient(step)
            tried.append((step, numeric))
            if abs(numeric) * 2 * step >= 0.01 * objective:
                break
        else:
            raise AssertionError(f"no step moves the objective {objective} by 1% (step, quotient): {tried}")
    assert analytic != 0.0
    assert abs(analytic - numeric) <= rtol * abs(numeric), (analytic, numeric, tried)


def held(editor):
    """``editor`` keeping its first reading of the photo through its VLM (Qwen-Image-Edit and Step1X-Edit read it
    again every step by default, ``vlm_refresh``, a path without gradient): the objective the gradient sees."""
    if hasattr(editor, "vlm_refresh"):
        editor.vlm_refresh = 0
    return editor


def edit_away(**options):
    return build_method("edit_away", prompts=PROMPTS, sample_steps=2, **options)


# ---------------------------------------------------------------------------------------------- through the edit
def test_edit_away_is_registered_with_its_requirements():
    assert METHODS["edit_away"].requires == frozenset({"sampling"})
    assert EditAway.name == "edit_away" and EditAway.pgd_defaults == {"start": "uniform"}

    class NoSampler:
        family, capabilities = "nosampler", frozenset({"vae", "diffusion_loss"})

    with pytest.raises(ValueError, match="does not apply to the nosampler editor: it needs sampling"):
        EditAway.check_applies(NoSampler)
    with pytest.raises(ValueError, match="edit_space"):
        edit_away(edit_space="clip")


@pytest.mark.parametrize("space", ["latent", "pixel"])
def test_edit_away_at_zero_perturbation_is_zero_and_its_clean_edit_is_the_editors_sampler(space, tiny_editor):
    editor = tiny_editor("flux_kontext")
    method = edit_away(edit_space=space)
    x0 = images(1)
    with method.session(editor):
        method.start(editor, x0, SIZE)
        loss, log = method.loss(editor, x0, SIZE, 0, [torch.Generator().manual_seed(3)])
        assert loss.tolist() == [0.0] and log["edit_distance"] == 0.0  # the minimum, exactly
        moved, _ = method.loss(editor, (x0 + 8 / 255).clamp(0, 1), SIZE, 1, [torch.Generator().manual_seed(3)])
        assert float(moved) > 0
        for index, prompt in enumerate(PROMPTS):
            # the clean edit kept by the session = the editor's own sampler, written out here step by step
            condition = editor.condition(x0, [prompt], SIZE)
            x = editor.noise_like(condition, [torch.Generator().manual_seed(method.noise_seed)])
            levels = torch.linspace(1.0, 0.0, method.sample_steps + 1).tolist()
            with torch.no_grad():
                for sigma, sigma_next in zip(levels[:-1], levels[1:], strict=True):
                    x = editor.denoise(x, sigma, sigma_next, condition)
                expected = x if space == "latent" else editor.decode(x, condition)
            kept = method.clean_edits(editor, SIZE, [0], [index])
            assert torch.equal(kept, expected)


def test_sampler_checkpointing_gives_the_same_gradient(tiny_editor):
    editor = tiny_editor("flux_kontext")
    grads = []
    for checkpoint in (False, True):
        method = edit_away(checkpoint=checkpoint)
        x0 = images(1)
        x = (x0 + 4 / 255).clamp(0, 1).requires_grad_()
        with method.session(editor):
            method.start(editor, x0, SIZE)
            method.loss(editor, x, SIZE, 0, [torch.Generator().manual_seed(0)])[0].sum().backward()
        grads.append(x.grad)
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-12)


def test_edit_away_measure_finds_each_images_clean_photo_in_a_batch(tiny_editor):
    editor = tiny_editor("flux_kontext")
    method = edit_away()
    x0 = images(2)
    with method.session(editor):
        method.start(editor, x0, SIZE)
        assert method.rows(x0[1:]) == [1] and method.rows((x0[:1] + 4 / 255).clamp(0, 1)) == [0]
        assert method.measure(editor, x0[1:], SIZE, 2)["edit_distance"] < 1e-12
        assert method.measure(editor, (x0[1:] + 8 / 255).clamp(0, 1), SIZE, 2)["edit_distance"] > 1e-10


# ---------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("family", [*DITS, "instruct_pix2pix"])
def test_edit_away_gradient_reaches_the_protector_through_the_editor(family, tiny_editor):
    # the tiny Qwen-Image-Edit barely moves its edit (objective ~2.5e-8): its quotient is trustworthy only at a wider
    # step, which finite_difference_agrees picks by its rule (step1x_edit's too)
    finite_difference_agrees([(edit_away(), held(tiny_editor(family)))])


def test_ensemble_gradient_reaches_the_protector_through_both_editors(tiny_editor):
    members = [(edit_away(), tiny_editor("flux_kontext")), (edit_away(), tiny_editor("instruct_pix2pix"))]
    x0 = images(1)
    net = protector()
    with session(members, x0):
        x = (x0 + net(x0)).clamp(0, 1)
        gens = [amortize._generators(0, 0, 1), amortize._generators(0, 0, 1, 1)]
        total = ensemble_objective(members, x, SIZE, 0, gens)
        # the balanced direction: each editor's gradient at unit mean |g|, averaged
        parts = []
        fresh = [amortize._generators(0, 0, 1), amortize._generators(0, 0, 1, 1)]  # the same draws again
        for (method, editor), g in zip(members, fresh, strict=True):
            xi = x.detach().requires_grad_()
            amortize.objective(method, editor, xi, SIZE, 0, g).backward()
            parts.append(xi.grad / xi.grad.abs().mean())
        (direction,) = torch.autograd.grad(total, x)
    assert torch.allclose(direction, (parts[0] + parts[1]) / 2, rtol=1e-4, atol=1e-6)


def test_attackers_in_the_loop_gradient_reaches_the_protector(tiny_editor):
    from decontext.amortize import attackers_in_the_loop
    from decontext.toy.worlds import get_world

    editor = tiny_editor("flux_kontext")
    for spec in ("blur", "regen:denoiser=v1"):  # smooth ones (jpeg's twin rounds: no finite difference across it)
        cases = attackers_in_the_loop([spec], editor, get_world("v1"))
        assert type(cases[0]).__name__ == "BoundAttacker"
        finite_difference_agrees([(edit_away(), editor)], EOT(cases, editor))


def test_straight_through_attacker_is_the_real_attack_forward_and_identity_backward(tiny_editor):
    from decontext.amortize import StraightThrough, attackers_in_the_loop
    from decontext.attackers import parse_attacker

    (case,) = attackers_in_the_loop(["webp:quality=30"], None, None)
    assert isinstance(case, StraightThrough)
    x = images(1).requires_grad_()
    out = case.differentiable()(x, torch.Generator().manual_seed(0))
    real = parse_attacker("webp:quality=30").apply((x.detach() * 255).round().byte().permute(0, 2, 3, 1).numpy())
    assert torch.equal((out.detach() * 255).round().byte().permute(0, 2, 3, 1), torch.from_numpy(real))
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    with pytest.raises(ValueError, match="not an attacker the trainer can run"):
        attackers_in_the_loop(["remover"], None, None)


# ---------------------------------------------------------------------------------------------- training
def few_steps(members, steps=4, lr=1e-2):
    """A protector trained a few Adam steps on one fixed batch (the same draws each step, the editor's reading
    without gradient kept from the first: ``step`` 1): the objective before and after."""
    x0 = images(2)
    net = protector()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    with session(members, x0):
        with torch.no_grad():
            before = float(value(members, net, x0, step=1))
        for _ in range(steps):
            optimizer.zero_grad()
            (-value(members, net, x0, step=1)).backward()
            optimizer.step()
        with torch.no_grad():
            after = float(value(members, net, x0, step=1))
    return before, after


@pytest.mark.parametrize("family", DITS)
def test_a_few_training_steps_raise_the_edit_distance_on_each_tiny_dit(family, tiny_editor):
    before, after = few_steps([(edit_away(), held(tiny_editor(family)))], steps=12)
    assert after > 1.2 * before > 0, (before, after)  # the least rise, Qwen-Image-Edit's: x1.30


def test_a_few_training_steps_raise_an_ensemble_of_two_families(tiny_editor):
    members = [(edit_away(), tiny_editor("flux_kontext")), (edit_away(), held(tiny_editor("step1x_edit")))]
    x0 = images(2)
    start = []
    for method, editor in members:
        before, after = few_steps([(method, editor)], steps=0)
        start.append(before)
    few_before, few_after = few_steps(members)
    assert few_after > 1.5 * few_before > 0
    trained = protector()  # each editor's own loss rises under the ensemble's training too
    optimizer = torch.optim.Adam(trained.parameters(), lr=1e-2)
    with session(members, x0):
        for _ in range(4):
            optimizer.zero_grad()
            (-value(members, trained, x0, step=1)).backward()
            optimizer.step()
        with torch.no_grad():
            for k, member in enumerate(members):
                assert float(value([member], trained, x0, step=1)) > start[k]


def test_old_recipes_keep_their_digest():
    from decontext.assets import data_path

    for name in ("toy-decontext", "toy-encoder"):
        recipe = json.loads(data_path(f"data/protectors/{name}/protector.json").read_text())["recipe"]
        digest = recipe.pop("digest")
        assert TrainConfig(**recipe).digest() == digest
    assert TrainConfig(ensemble=("instruct_pix2pix:tiny",)).digest() != TrainConfig().digest()


def run_train(out, steps=2, stop_after=None):
    config = TrainConfig(
        model="tiny",
        family="flux_kontext",
        method="edit_away",
        method_options={"prompts": PROMPTS, "sample_steps": 1},
        size=32,
        batch_size=2,
        steps=steps,
        lr=1e-3,
        architecture=ARCH,
        attackers=("none", "jpeg", "webp"),
        ensemble=("step1x_edit:tiny",),
    )
    options = amortize.RunOptions(
        checkpoint_every=1, validate_every=100, val_count=2, val_draws=1, device="cpu", progress=False
    )
    options.stop_after = stop_after
    return config, amortize.train(config, out, options, log=lambda *_: None)


def test_train_with_ensemble_and_attackers_records_its_command_and_resumes_to_the_same_weights(tmp_path):
    from safetensors.torch import load_file

    config, record = run_train(tmp_path / "whole", steps=3)
    assert "--attackers none jpeg webp" in record["command"] and "--ensemble step1x_edit:tiny" in record["command"]
    assert record["ensemble"] == [{"family": "step1x_edit", "model": "tiny"}]
    assert record["validation"][-1]["ensemble"][0]["editor"] == "step1x_edit:tiny"
    assert record["validation"][-1]["protected"]["edit_distance"] > 0
    assert run_train(tmp_path / "split", steps=3, stop_after=1)[1] == {"stopped_at": 1}
    run_train(tmp_path / "split", steps=3)
    whole = load_file(str(tmp_path / "whole" / "protector.safetensors"))
    split = load_file(str(tmp_path / "split" / "protector.safetensors"))
    assert whole.keys() == split.keys() and all(torch.equal(whole[k], split[k]) for k in whole)


def test_cli_trains_with_the_new_flags_and_refuses_a_bad_ensemble(tmp_path, capsys):
    from decontext.cli.amortize import main

    common = ["--model", "tiny", "--family", "flux_kontext", "--method", "edit_away", "--no-progress"]
    assert main([*common, "--ensemble", "step1x_edit", "--out", str(tmp_path / "bad")]) == 2
    assert "--ensemble step1x_edit: write FAMILY:MODEL" in capsys.readouterr().err
    argv = [*common, "--sample-steps", "1", "--prompts", "data/prompts/toy_prompts.txt", "--size", "32"]
    argv += ["--batch-size", "1", "--steps", "1", "--ensemble", "step1x_edit:tiny", "--attackers", "none", "blur"]
    assert main([*argv, "--out", str(tmp_path / "ok")]) == 0
    command = json.loads((tmp_path / "ok" / "protector.json").read_text())["command"]
    assert command.endswith("--attackers none blur --ensemble step1x_edit:tiny") and "--method edit_away" in command


# ---------------------------------------------------------------------------------------------- the CLI's edit
class Recording:
    """An editor's pipeline that keeps what each call returned: the edit before ``editor.edit``'s 8-bit rounding."""

    def __init__(self, pipe):
        self.pipe, self.results = pipe, []

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def __call__(self, **kwargs):
        self.results.append(self.pipe(**kwargs))
        return self.results[-1]


def rounded(pixels):
    """(1, 3, H, W) in [0, 1] -> (H, W, 3) 8-bit, as ``editor.edit`` rounds its pipeline's output."""
    return np.round(np.clip(pixels[0].permute(1, 2, 0).numpy(), 0, 1) * 255).astype(np.uint8)


def test_edit_away_with_the_editor_schedule_makes_the_clis_edit_of_the_clean_photo(tiny_editor):
    """Issue 41: at zero perturbation the objective's clean edit, decoded, is ``editor.edit``'s (the CLI's edit, one
    (prompt, seed) per call: its default --batch-size 1) at the same steps, guidance, seed and prompt, to the last
    bit before and after the 8-bit rounding; with the default evenly spaced schedule it is not (other levels, and
    noise_like orders the same draw otherwise)."""
    editor = tiny_editor("flux_kontext")
    size, steps, seed = (32, 48), 3, 42
    rgb8 = np.random.default_rng(5).integers(0, 256, (*size, 3), dtype=np.uint8)
    x0 = uint8_to_tensor(rgb8)  # the photo at its working size (the pipeline resizes nothing either), strided as
    kept = {}  # a decoded photo is: the editor schedule lays it out anew, as the pipeline's image processor does
    for schedule in ("editor", "even"):
        for space in ("pixel", "latent"):
            method = build_method(
                "edit_away",
                prompts=PROMPTS,
                sample_steps=steps,
                edit_space=space,
                sample_schedule=schedule,
                noise_seed=seed,
            )
            with method.session(editor):
                method.start(editor, x0, size)
                if schedule == "editor":
                    loss, _ = method.loss(editor, x0, size, 0, [torch.Generator().manual_seed(3)])
                    assert loss.tolist() == [0.0]
                    x = (x0 + 8 / 255).clamp(0, 1).requires_grad_()
                    method.loss(editor, x, size, 1, [torch.Generator().manual_seed(3)])[0].sum().backward()
                    assert x.grad.abs().sum() > 0 and x.grad.isfinite().all()
                kept[schedule, space] = [method.clean_edits(editor, size, [0], [k]) for k in range(len(PROMPTS))]
    pipe = editor.pipe
    editor.pipe = recording = Recording(pipe)
    try:
        made = [editor.edit(Image.fromarray(rgb8), [p], [seed], steps, editor.guidance, "native")[0] for p in PROMPTS]
    finally:
        editor.pipe = pipe
    for k, prompt in enumerate(PROMPTS):
        condition = editor.condition(x0, [prompt], size)
        pixels = kept["editor", "pixel"][k]
        assert torch.equal(editor.decode(kept["editor", "latent"][k], condition), pixels)
        cli = torch.from_numpy(recording.results[k].images).permute(0, 3, 1, 2)
        assert torch.equal(pixels, cli)  # float32, bit for bit
        assert np.array_equal(rounded(pixels), np.asarray(made[k]))
        assert (kept["even", "pixel"][k] - cli).abs().max() > 1e-3
    # what the option changes: the levels are the pipeline scheduler's (shifted for 6 target tokens), and the
    # start noise holds the numbers of noise_like's draw in another order
    levels = editor.edit_levels(condition, steps)
    assert levels == pipe.scheduler.sigmas.tolist() and levels != torch.linspace(1, 0, steps + 1).tolist()
    ours = editor.noise_like(condition, [torch.Generator().manual_seed(seed)])
    theirs = editor.edit_noise(condition, [torch.Generator().manual_seed(seed)])
    assert not torch.equal(ours, theirs) and torch.equal(ours.flatten().sort()[0], theirs.flatten().sort()[0])


def test_edit_away_editor_schedule_in_bfloat16_is_the_clis_edit_once_rounded_as_the_pipeline_rounds():
    """In bfloat16 the pipeline's arithmetic matters (``edit_denoise``: its timestep and its float32 Euler step;
    ``denoise`` would drift), and its postprocess rounds the decoded pixels to bfloat16 before the 8-bit rounding,
    which the objective's float32 decode does not: rounded the same way, the two are equal to the last bit."""
    from decontext.editors import load_editor
    from decontext.methods.base import sample

    editor = load_editor("tiny", "flux_kontext", "cpu", "bfloat16")
    size, steps, seed, prompt = (32, 32), 3, 42, PROMPTS[0]
    rgb8 = np.random.default_rng(6).integers(0, 256, (*size, 3), dtype=np.uint8)
    method = build_method(
        "edit_away", prompts=[prompt], sample_steps=steps, edit_space="pixel", sample_schedule="editor", noise_seed=seed
    )
    with method.session(editor):
        method.start(editor, uint8_to_tensor(rgb8), size)
        kept = method.clean_edits(editor, size, [0], [0])
    pipe = editor.pipe
    editor.pipe = recording = Recording(pipe)
    try:
        (made,) = editor.edit(Image.fromarray(rgb8), [prompt], [seed], steps, editor.guidance, "native")
    finally:
        editor.pipe = pipe
    cli = torch.from_numpy(recording.results[0].images).permute(0, 3, 1, 2)
    assert kept.dtype == torch.float32 and not torch.equal(kept, cli)
    assert torch.equal(kept.to(torch.bfloat16).float(), cli)
    assert np.array_equal(rounded(kept.to(torch.bfloat16).float()), np.asarray(made))
    condition = editor.condition(uint8_to_tensor(rgb8).clone(memory_format=torch.channels_last), [prompt], size)
    noise = editor.edit_noise(condition, [torch.Generator().manual_seed(seed)])
    with torch.no_grad():  # the same levels and noise through the attack's own Euler step: another edit
        drifted = editor.decode(
            sample(editor, condition, noise, steps, levels=editor.edit_levels(condition, steps)), condition
        )
    assert (drifted.to(torch.bfloat16).float() - cli).abs().max() > 1e-3


def test_edit_away_editor_schedule_on_the_toy_is_the_png_the_cli_writes(tmp_path):
    """The same on the trained toy (``toy-v1``): ``decontext edit`` at its shipped settings but 4 steps (guidance
    2.5, 64 px, seed 42) writes the PNG the objective's clean edit rounds to, given the attack guidance 2.5."""
    from decontext.cli.edit import main as edit_main
    from decontext.editors import load_editor

    rgb8 = np.random.default_rng(7).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb8).save(tmp_path / "photo.png")
    prompt, steps = "make it red", 4
    argv = ["--model", "toy-v1", "--images", str(tmp_path / "photo.png"), "--output", str(tmp_path / "edits")]
    argv += ["--prompt", prompt, "--steps", str(steps), "--device", "cpu", "--dtype", "float32", "--no-progress"]
    assert edit_main(argv, family="flux_kontext") == 0
    written = np.asarray(Image.open(tmp_path / "edits" / "photo" / "0" / "seed42.png").convert("RGB"))
    editor = load_editor("toy-v1", "flux_kontext", "cpu", "float32", guidance=2.5)
    assert editor.recommended["guidance_scale"] == 2.5 and editor.recommended["resolution"] == 64
    size = editor.working_size(64, 64, 64)
    method = build_method(
        "edit_away", prompts=[prompt], sample_steps=steps, edit_space="pixel", sample_schedule="editor", noise_seed=42
    )
    with method.session(editor):
        method.start(editor, uint8_to_tensor(rgb8), size)
        kept = method.clean_edits(editor, size, [0], [0])
    assert np.array_equal(rounded(kept), written)


def test_edit_away_editor_schedule_needs_an_editor_that_exposes_it(tiny_editor):
    with pytest.raises(ValueError, match="sample_schedule must be one of"):
        edit_away(sample_schedule="shifted")
    method = edit_away(sample_schedule="editor")
    assert method.config()["sample_schedule"] == "editor" and "sample_schedule" not in edit_away().config()
    with pytest.raises(ValueError, match="the step1x_edit editor does not expose"):
        with method.session(tiny_editor("step1x_edit")):
            pass


def test_sample_schedule_is_a_flag_of_the_protect_and_amortize_commands(tmp_path, capsys):
    from decontext.cli.amortize import main as amortize_main
    from decontext.cli.attack import main as attack_main

    photos = tmp_path / "in"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(photos / "a.png")
    argv = ["--model", "tiny", "--input", str(photos), "--method", "edit_away", "--sample-steps", "1", "--eps", "8"]
    argv += ["--steps", "1", "--resolution", "native", "--measure-draws", "0", "--no-progress"]
    argv += ["--prompts", "data/prompts/toy_prompts.txt"]
    assert (
        attack_main(
            family="flux_kontext", argv=[*argv, "--output", str(tmp_path / "editor"), "--sample-schedule", "editor"]
        )
        == 0
    )
    assert json.loads((tmp_path / "editor" / "manifest.json").read_text())["method"]["sample_schedule"] == "editor"
    with pytest.raises(SystemExit) as bad:  # argparse: a value outside the choices
        attack_main(
            family="flux_kontext", argv=[*argv, "--output", str(tmp_path / "bad"), "--sample-schedule", "shift"]
        )
    assert bad.value.code == 2 and "invalid choice: 'shift'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    train = ["--model", "tiny", "--family", "flux_kontext", "--method", "edit_away", "--no-progress", "--size", "32"]
    train += ["--sample-steps", "1", "--sample-schedule", "editor", "--prompts", "data/prompts/toy_prompts.txt"]
    assert amortize_main([*train, "--batch-size", "1", "--steps", "1", "--out", str(tmp_path / "protector")]) == 0
    record = json.loads((tmp_path / "protector" / "protector.json").read_text())
    assert "--sample-schedule editor" in record["command"]
    assert record["recipe"]["method_options"]["sample_schedule"] == "editor"
