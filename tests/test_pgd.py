import pytest
import torch

from decontext.pgd import PGD


def _target_loss(target):
    def loss(x, step, generator):
        return -((x - target) ** 2).sum(), {"dist": float(((x.detach() - target) ** 2).sum())}

    return loss


def test_first_step_is_exact_sign_step_and_projection_holds():
    x0 = torch.full((1, 3, 4, 4), 0.5)
    target = torch.rand(1, 3, 4, 4)
    result = PGD(eps=8, alpha=1, steps=1, progress=False).run(x0, _target_loss(target))
    expected = (x0 + torch.sign(target - x0) / 255).clamp(0, 1)
    assert torch.allclose(result.pixels, expected, atol=1e-7)
    many = PGD(eps=8, alpha=2, steps=50, progress=False).run(x0, _target_loss(target))
    delta = many.pixels - x0
    assert delta.abs().max() <= 8 / 255 + 1e-7
    # Moves every pixel toward its target as far as the budget allows.
    reachable = x0 + (target - x0).clamp(-8 / 255, 8 / 255)
    assert torch.allclose(many.pixels, reachable, atol=2 / 255 + 1e-6)


def test_clamps_to_unit_range():
    x0 = torch.tensor([[[[0.99, 0.01]]]])
    target = torch.tensor([[[[2.0, -1.0]]]])
    result = PGD(eps=16, alpha=4, steps=10, progress=False).run(x0, _target_loss(target))
    assert result.pixels.max() <= 1 and result.pixels.min() >= 0
    assert torch.allclose(result.pixels, torch.tensor([[[[1.0, 0.0]]]]))


def test_history_and_reproducibility_with_random_draws():
    x0 = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))

    def noisy_loss(x, step, generators):
        (generator,) = generators  # a single image: a batch of one, one generator
        w = torch.randn(x.shape, generator=generator)
        return (w * x).sum()

    a = PGD(eps=4, alpha=1, steps=5, seed=7, start="uniform", momentum=0.9, progress=False).run(x0, noisy_loss)
    b = PGD(eps=4, alpha=1, steps=5, seed=7, start="uniform", momentum=0.9, progress=False).run(x0, noisy_loss)
    c = PGD(eps=4, alpha=1, steps=5, seed=8, start="uniform", momentum=0.9, progress=False).run(x0, noisy_loss)
    assert torch.equal(a.pixels, b.pixels)
    assert not torch.equal(a.pixels, c.pixels)
    assert [h["step"] for h in a.history] == list(range(5))
    assert (a.pixels - x0).abs().max() <= 4 / 255 + 1e-7


def test_momentum_changes_direction_memory():
    # With a gradient that flips sign every step, plain PGD oscillates, momentum keeps going.
    x0 = torch.full((1, 1, 1, 1), 0.5)

    def flipping(x, step, generator):
        return x.sum() * (1.0 if step % 3 != 2 else -1.0)

    plain = PGD(eps=10, alpha=1, steps=6, progress=False).run(x0, flipping)
    mom = PGD(eps=10, alpha=1, steps=6, momentum=1.0, progress=False).run(x0, flipping)
    assert plain.pixels.item() == pytest.approx(0.5 + 2 / 255, abs=1e-6)
    assert mom.pixels.item() == pytest.approx(0.5 + 6 / 255, abs=1e-6)


def test_rejects_bad_settings_and_non_scalar_loss():
    with pytest.raises(ValueError):
        PGD(eps=-1)
    with pytest.raises(ValueError):
        PGD(alpha=0)
    with pytest.raises(ValueError, match="scalar"):
        PGD(steps=1, progress=False).run(torch.rand(1, 1, 2, 2), lambda x, s, g: x * 2)


def test_step_size_schedules():
    from decontext.pgd import step_size

    assert [step_size("constant", 2.0, k, 10) for k in (0, 5, 9)] == [2.0, 2.0, 2.0]
    # PhotoGuard's linear rule: alpha - (alpha - alpha/100) * k / n
    assert [step_size("linear", 2.0, k, 10) for k in (0, 5, 10)] == pytest.approx([2.0, 2.0 - 0.99, 0.02])
    assert step_size("cosine", 2.0, 0, 10) == pytest.approx(2.0)
    assert step_size("cosine", 2.0, 5, 10) == pytest.approx(0.02 + 1.98 / 2)
    assert step_size("cosine", 2.0, 10, 10) == pytest.approx(0.02)
    with pytest.raises(ValueError, match="schedule"):
        step_size("exp", 1.0, 0, 1)


def test_linear_schedule_moves_by_the_decaying_step_and_logs_it():
    # A loss whose gradient sign never changes: after n steps a pixel has moved by the sum of the steps.
    x0 = torch.full((1, 1, 1, 1), 0.5)
    result = PGD(eps=100, alpha=4, steps=5, schedule="linear", progress=False).run(x0, lambda x, s, g: x.sum())
    steps = [4 - (4 - 0.04) * k / 5 for k in range(5)]
    assert [h["alpha"] for h in result.history] == pytest.approx(steps)
    assert result.pixels.item() == pytest.approx(0.5 + sum(steps) / 255, abs=1e-6)


def test_config_takes_method_defaults_under_explicit_choices():
    from decontext.methods import build_method
    from decontext.pgd import PGDConfig

    encoder = build_method("encoder")
    assert PGDConfig.for_method(encoder, eps=16) == PGDConfig(eps=16, schedule="linear", start="uniform")
    assert PGDConfig.for_method(encoder, schedule="constant", start="clean", momentum=None).schedule == "constant"
    assert PGDConfig.for_method(build_method("decontext", prompts=["a"])) == PGDConfig()
    with pytest.raises(ValueError, match="schedule"):
        PGDConfig(schedule="warm")
    with pytest.raises(TypeError, match="not PGD settings"):
        PGDConfig.for_method(None, beta=1)


def test_psnr_floor_keeps_the_perturbation_inside_the_l2_ball_as_well():
    from decontext.pgd import psnr_radius

    x0 = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    target = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    free = PGD(eps=16, alpha=2, steps=20, progress=False).run(x0, _target_loss(target)).pixels
    capped = PGD(eps=16, alpha=2, steps=20, psnr_floor=32, progress=False).run(x0, _target_loss(target)).pixels
    for image in range(2):
        rms = (capped[image] - x0[image]).pow(2).mean().sqrt()
        assert rms <= psnr_radius(32) + 1e-7  # PSNR >= 32 dB
        assert rms >= 0.99 * psnr_radius(32)  # the loss wants more: the cap binds
        assert (capped[image] - x0[image]).abs().max() <= 16 / 255 + 1e-7
        assert (free[image] - x0[image]).pow(2).mean().sqrt() > psnr_radius(32)  # without the floor it would not hold
    assert psnr_radius(20) == pytest.approx(0.1)


def test_l2_update_moves_along_the_gradient_with_rms_alpha():
    x0 = torch.full((1, 1, 2, 2), 0.5)
    weights = torch.tensor([[[[1.0, 2.0], [3.0, 0.0]]]])
    result = PGD(eps=255, alpha=1, steps=1, update="l2", progress=False).run(x0, lambda x, s, g: (weights * x).sum())
    expected = 0.5 + (weights / weights.pow(2).mean().sqrt()) / 255
    torch.testing.assert_close(result.pixels, expected)
    with pytest.raises(ValueError, match="update"):
        PGD(update="lion")
    with pytest.raises(ValueError, match="psnr"):
        PGD(psnr_floor=0)


def test_adam_update_steps_are_bounded_and_follow_a_steady_gradient():
    """Adam-style steps: with a constant gradient the first step is alpha along its sign (m / sqrt(v) = 1),
    and no pixel ever moves by more than ~alpha per step."""
    from decontext.pgd import PGD, PGDConfig

    x0 = torch.full((1, 3, 8, 8), 0.5)
    weights = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    one = PGD(config=PGDConfig(eps=16, alpha=1, steps=1, update="adam"), progress=False).run(
        x0, lambda x, s, g: (weights * x).sum()
    )
    assert torch.allclose((one.pixels - x0) * 255, weights.sign(), atol=1e-4)
    steps = []
    flip = iter([1.0, -1.0] * 10)

    def sign():
        return next(flip)

    result = PGD(config=PGDConfig(eps=16, alpha=1, steps=6, update="adam"), progress=False).run(
        x0, lambda x, s, g: sign() * (weights * x).sum(), callback=lambda step, rec: steps.append(step)
    )
    assert ((result.pixels - x0).abs() * 255 <= 6 * 1.0001).all() and len(steps) == 6
    # a flipping gradient: Adam's steps shrink (the first moment cancels), so the net move is far below 6 alpha
    assert float((result.pixels - x0).abs().max() * 255) < 2.0


def test_snapshots_are_the_pixels_after_that_many_steps():
    from decontext.pgd import PGD, PGDConfig

    x0 = torch.full((1, 3, 4, 4), 0.5)

    def loss(x, s, g):
        return (x * torch.arange(48.0).reshape(1, 3, 4, 4)).sum()

    long = PGD(config=PGDConfig(eps=8, alpha=1, steps=6), progress=False).run(x0, loss, snapshots=[0, 3, 6])
    short = PGD(config=PGDConfig(eps=8, alpha=1, steps=3), progress=False).run(x0, loss)
    assert sorted(long.snapshots) == [0, 3, 6]
    assert (
        torch.equal(long.snapshots[0], x0)
        and torch.equal(long.snapshots[3], short.pixels)
        and torch.equal(long.snapshots[6], long.pixels)
    )


# ------------------------------------------------------------------------------------- presets and stopping
def _plateau_loss(x, step, generator):
    """Rises for about 13 steps (0.1 away at 2/255 a step), then only wobbles around its top (a saturated
    protection): -|x - 0.6| summed."""
    return -(x - 0.6).abs().sum()


def test_paper_preset_is_todays_defaults_for_every_family_and_method():
    from decontext.config import PRESETS, PGDConfig
    from decontext.editors import FAMILIES
    from decontext.methods import METHODS, build_method

    official = {
        "eps": 12.75,
        "alpha": 0.6375,
        "steps": 800,
        "momentum": 0.0,
        "schedule": "constant",
        "start": "clean",
        "update": "sign",
        "psnr_floor": None,
        "eot_samples": 1,
    }
    assert (
        PGDConfig.for_method(build_method("decontext", prompts=["a"]), preset="paper").to_dict() == official
    )  # no stopping keys at all
    for spec in FAMILIES.values():
        for name in METHODS:
            method = build_method(name, **({"protector": "toy-decontext"} if name == "amortized" else {}))
            assert PGDConfig.for_method(method, spec.pgd_defaults, preset="paper") == PGDConfig.for_method(
                method, spec.pgd_defaults
            )
            assert PGDConfig.for_method(method, spec.pgd_defaults, preset="paper").stop_patience == 0
    fast = PGDConfig.for_method(build_method("decontext", prompts=["a"]), preset="fast")
    assert fast.stop_patience > 0 and fast.steps == PRESETS["fast"]["steps"] < 800
    assert (
        PGDConfig.for_method(None, preset="fast", steps=77, momentum=0.0).steps == 77
    )  # explicit flags override the preset
    assert PGDConfig.for_method(None, preset="fast", momentum=0.0).momentum == 0.0
    assert "stop_patience" in fast.to_dict()
    # a family's own settings of a preset lie over the shared ones, under the method's and the flags
    own = {"fast": {"steps": 300, "stop_window": 7}}
    family_fast = PGDConfig.for_method(None, {"eps": 25.5, "alpha": 1.0}, "fast", own)
    assert (family_fast.steps, family_fast.stop_window, family_fast.alpha) == (300, 7, 4.0)
    assert PGDConfig.for_method(None, {"alpha": 1.0}, "fast", own, steps=50).steps == 50
    assert PGDConfig.for_method(None, {"alpha": 1.0}, "paper", own).steps == PGDConfig.steps  # other presets: no change
    for spec in FAMILIES.values():  # every family's fast run has a budget of its own or the shared one
        steps = PGDConfig.for_method(None, spec.pgd_defaults, "fast", spec.presets).steps
        assert steps == spec.presets.get("fast", {}).get("steps", PRESETS["fast"]["steps"]) < spec.steps
    with pytest.raises(ValueError, match="paper preset never stops"):
        PGDConfig.for_method(None, preset="paper", stop_patience=5)
    with pytest.raises(ValueError, match="unknown preset"):
        PGDConfig.for_method(None, preset="quick")
    with pytest.raises(ValueError, match="stop_patience"):
        PGDConfig(stop_patience=-1)


def test_plateau_rule_against_a_hand_count():
    from decontext.pgd import Plateau

    rule = Plateau(patience=3, window=2, tol=0.1)
    losses = [0, 1, 2, 3, 3, 3, 3, 3, 3]  # 2-step means from step 1: 0.5 1.5 2.5 3 3 3 3 3
    stops = [rule.stop(step, loss) for step, loss in enumerate(losses)]
    # best mean 3.0 at step 4 (it rose 0.5 > 0.1 * 2.5 there); 3 steps later, at step 7, patience runs out
    assert stops == [False] * 7 + [True, True] and rule.best_step == 4
    never = Plateau(patience=0, window=2, tol=0.1)
    assert not any(never.stop(step, 0.0) for step in range(100))
    slow = Plateau(patience=5, window=1, tol=0.01)  # a slow but steady rise is progress, however small its scale
    assert not any(slow.stop(step, 1e-6 * step) for step in range(200))


def test_stopping_rule_ends_a_planted_plateau_and_never_under_the_paper_preset():
    from decontext.config import PGDConfig

    x0 = torch.full((1, 3, 8, 8), 0.5)
    config = PGDConfig.for_method(None, preset="fast", eps=32, alpha=2, steps=300, stop_patience=20, stop_window=5)
    stopped = PGD(config=config, progress=False).run(x0, _plateau_loss)
    assert (
        stopped.stop_reason.startswith("plateau")
        and stopped.steps_run < 100
        and len(stopped.history) == stopped.steps_run
    )
    assert torch.allclose(stopped.pixels, torch.full_like(x0, 0.6), atol=2 / 255)  # it stopped at the goal, not before
    paper = PGDConfig.for_method(None, preset="paper", eps=32, alpha=2, steps=300)
    full = PGD(config=paper, progress=False).run(x0, _plateau_loss)
    assert full.steps_run == 300 and full.stop_reason == "budget" and len(full.history) == 300
