"""One L-inf PGD engine, generic over any differentiable loss of pixels in [0, 1].

It knows nothing about diffusion: a method hands it ``loss_fn(x, step, generator)`` returning a
scalar to MAXIMISE (optionally with a dict of floats to log). Budgets and step sizes are given in
1/255 units of the [0, 1] scale, as on the command line (``eps=12.75`` means 12.75/255).

Each step k of n: g = d loss / d x; with momentum, g <- mu * g_prev + g / mean|g| (MI-FGSM);
x <- P(x + alpha_k * u(g)), where alpha_k follows the step-size schedule (``SCHEDULES``: constant,
linear = PhotoGuard's decay to alpha/100, or cosine to alpha/100), u is the update rule (``UPDATES``:
``sign`` = sign(g), every pixel moves by alpha; ``l2`` = g / rms(g), a step of root-mean-square alpha
that moves the pixels with large gradients most; ``adam`` = m / (sqrt(v) + 1e-8) with Adam's bias-corrected
moments of g, a per-pixel step of at most about alpha that shrinks where the gradient's sign keeps
flipping), and P projects onto the budget: the L-inf ball of
radius eps around the clean image, the [0, 1] range, and, with ``psnr_floor``, the L2 ball of the
perturbation whose PSNR is that floor (the perturbation is scaled down when its rms exceeds
10^(-floor/20); scaling keeps it inside the other two sets).

What a method prefers (PhotoGuard's encoder attack: a random start and the linear schedule) is its
``pgd_defaults``; ``PGDConfig.for_method`` lays explicit choices over them, and the config used is
what manifests record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .config import SCHEDULES, STARTS, UPDATES, PGDConfig  # noqa: F401 (PGDConfig, SCHEDULES, UPDATES: re-exported)

LossOutput = torch.Tensor | tuple[torch.Tensor, dict]
LossFn = Callable[[torch.Tensor, int, torch.Generator], LossOutput]
Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

FINAL_FRACTION = 0.01  # the decaying schedules end at alpha * FINAL_FRACTION (PhotoGuard's alpha/100)
ADAM_BETAS = (0.9, 0.999)  # Adam's moment decays (Kingma and Ba's defaults)


def psnr_radius(psnr_db: float) -> float:
    """Root-mean-square perturbation (on the [0, 1] scale) whose PSNR is ``psnr_db``."""
    return 10.0 ** (-psnr_db / 20.0)


def step_size(schedule: str, alpha: float, step: int, steps: int) -> float:
    """The step of ``schedule`` at ``step`` (0-based) of ``steps``.

    constant: alpha; linear: alpha - (alpha - alpha/100) * step / steps (PhotoGuard's rule);
    cosine: alpha/100 + (alpha - alpha/100) * (1 + cos(pi * step / steps)) / 2.
    """
    if schedule == "constant":
        return alpha
    low = alpha * FINAL_FRACTION
    progress = step / max(steps, 1)
    if schedule == "linear":
        return alpha - (alpha - low) * progress
    if schedule == "cosine":
        return low + (alpha - low) * (1 + math.cos(math.pi * progress)) / 2
    raise ValueError(f"unknown step-size schedule {schedule!r} (choose from {', '.join(SCHEDULES)})")


class Plateau:
    """The stopping rule. The loss is noisy (each step draws its own prompt, noise level and noise), so the
    rule reads the mean loss over the last ``window`` steps. A step counts as progress when that mean rises
    above its best so far by more than ``tol`` times the gain made so far (best minus the first full
    window's mean): a scale-free test, the same for a share in [0, 1] and an encoder's squared error. The run
    stops once ``patience`` steps have passed without progress. ``patience`` 0: never (the paper's)."""

    def __init__(self, patience: int, window: int, tol: float):
        self.patience, self.window, self.tol = int(patience), int(window), float(tol)
        self.losses: list[float] = []
        self.first: float | None = None
        self.best: float | None = None
        self.best_step = 0

    def stop(self, step: int, loss: float) -> bool:
        if self.patience <= 0:
            return False
        self.losses.append(loss)
        if len(self.losses) < self.window:
            return False
        mean = sum(self.losses[-self.window :]) / self.window
        if self.best is None:
            self.first = self.best = mean
            self.best_step = step
        elif mean > self.best + self.tol * (self.best - self.first):
            self.best, self.best_step = mean, step
        return step - self.best_step >= self.patience

    def reason(self) -> str:
        return (
            f"plateau: no rise of the {self.window}-step mean loss by more than {self.tol:g} of the gain so far "
            f"since step {self.best_step} (patience {self.patience})"
        )


class NonFiniteError(ArithmeticError):
    """The loss or its gradient stopped being finite; the run stops instead of stepping on NaNs."""


@dataclass
class PGDResult:
    pixels: torch.Tensor  # adversarial image, same shape/dtype/device as the input, in [0, 1]
    history: list[dict] = field(default_factory=list)  # one dict per step: step, loss, alpha, and the method's floats
    snapshots: dict[int, torch.Tensor] = field(
        default_factory=dict
    )  # steps done -> pixels then (``run(snapshots=...)``)
    steps_run: int = 0  # the most steps any image ran
    stop_reason: str = (
        "budget"  # "budget": every configured step ran; "plateau: ...": the stopping rule ended it (``Plateau``)
    )
    image_steps: list[int] = field(default_factory=list)  # per image: steps it ran
    image_reasons: list[str] = field(default_factory=list)  # per image: why it stopped

    @property
    def losses(self) -> list[float]:
        return [h["loss"] for h in self.history]


class PGD:
    """L-inf projected gradient ascent.

    Args:
        eps, alpha, steps, momentum, schedule, start, update, psnr_floor: see ``PGDConfig`` (or pass ``config``).
        seed: seeds the generator handed to the loss (prompt/timestep/noise draws) and a random start.
        transform: optional differentiable EOT transform ``t(x, generator) -> x'`` applied before the loss;
            each step averages the gradients of ``config.eot_samples`` draws of it (``decontext.purify.EOT``).
        progress: show a tqdm bar.
    """

    def __init__(
        self,
        eps: float = PGDConfig.eps,
        alpha: float = PGDConfig.alpha,
        steps: int = PGDConfig.steps,
        momentum: float = PGDConfig.momentum,
        start: str = PGDConfig.start,
        seed: int = 0,
        transform: Transform | None = None,
        progress: bool = True,
        desc: str = "PGD",
        schedule: str = PGDConfig.schedule,
        update: str = PGDConfig.update,
        psnr_floor: float | None = PGDConfig.psnr_floor,
        config: PGDConfig | None = None,
    ):
        self.config = config or PGDConfig(
            eps=eps,
            alpha=alpha,
            steps=steps,
            momentum=momentum,
            schedule=schedule,
            start=start,
            update=update,
            psnr_floor=psnr_floor,
        )
        self.eps = self.config.eps / 255.0
        self.alpha = self.config.alpha / 255.0
        self.steps = int(self.config.steps)
        self.momentum = self.config.momentum
        self.schedule = self.config.schedule
        self.start = self.config.start
        self.update = self.config.update
        # A hair inside the floor, so rounding the saved file to 8 bits cannot push the PSNR below it.
        self.rms_cap = None if self.config.psnr_floor is None else 0.995 * psnr_radius(self.config.psnr_floor)
        self.seed = seed
        self.transform = transform
        self.progress = progress
        self.desc = desc

    def project(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Onto the budget: L-inf ball, [0, 1], and (with a PSNR floor) the L2 ball, per image."""
        x = (x0 + (x - x0).clamp(-self.eps, self.eps)).clamp(0.0, 1.0)
        if self.rms_cap is None:
            return x
        delta = x - x0
        rms = delta.flatten(1).pow(2).mean(1).sqrt().reshape(-1, *([1] * (delta.dim() - 1)))
        return x0 + delta * (self.rms_cap / rms.clamp_min(1e-30)).clamp(max=1.0)

    def run(
        self,
        x0: torch.Tensor,
        loss_fn: LossFn,
        callback: Callable[[int, dict], None] | None = None,
        snapshots=(),
        seeds: Sequence[int] | None = None,
        start_pixels: torch.Tensor | None = None,
    ) -> PGDResult:
        """Maximise ``loss_fn`` from ``x0``; ``snapshots``: step counts after which the pixels are also kept
        (``PGDResult.snapshots``), e.g. to score a run at 50, 100 and 200 steps in one go.

        ``seeds`` (one per image): the images of ``x0`` are protected together but each as if alone: its
        own generator (start and every draw of the loss, which then gets the list of the active images'
        generators and returns one loss per image), its own step normalisation, its own stopping rule (a
        stopped image leaves the batch). Without: one generator (``seed``) for the whole batch.
        ``start_pixels``: where to start (projected onto the budget), e.g. an amortized protector's output,
        instead of the clean image or a random point (``start``); no random start is drawn then."""
        x0 = x0.detach().float()
        batch = x0.shape[0]
        per_image = seeds is not None
        if per_image and len(seeds) != batch:
            raise ValueError(f"{len(seeds)} seeds for {batch} images")
        generators = (
            [torch.Generator().manual_seed(int(s)) for s in seeds]
            if per_image
            else [torch.Generator().manual_seed(self.seed)]
        )
        x = x0.clone()
        if start_pixels is not None:
            if start_pixels.shape != x0.shape:
                raise ValueError(
                    f"start pixels of shape {tuple(start_pixels.shape)} for images of shape {tuple(x0.shape)}"
                )
            x = self.project(start_pixels.detach().float().to(x0.device), x0)
        elif self.start != "clean" and self.eps > 0:
            # The first draw of each generator: uniform in the ball, or its sign (every pixel +-eps).
            shape = (1, *x0.shape[1:]) if per_image else x0.shape
            start = torch.cat([torch.rand(shape, generator=g) for g in generators]).to(x0.device) * 2 - 1
            x = self.project(x0 + (start.sign() if self.start == "sign" else start) * self.eps, x0)
        velocity = torch.zeros_like(x0)
        first, second = torch.zeros_like(x0), torch.zeros_like(x0)  # Adam's moments (update "adam")
        history: list[dict] = []
        bar = tqdm(range(self.steps), desc=self.desc, disable=not self.progress, leave=False, dynamic_ncols=True)
        samples = int(self.config.eot_samples) if self.transform is not None else 1
        kept_steps, kept = set(int(k) for k in snapshots), {}
        if 0 in kept_steps:
            kept[0] = x.detach().clone()
        rule = self.config.stop_patience, self.config.stop_window, self.config.stop_tol
        plateaus = [Plateau(*rule) for _ in range(batch if per_image else 1)]
        active = list(range(batch))  # the images still being optimised
        steps_run, reasons = [0] * batch, ["budget"] * batch
        for step in bar:
            rows = slice(None) if len(active) == batch else torch.tensor(active, device=x.device)
            part = x[rows].detach().requires_grad_(True)
            drawn = [generators[i] for i in active] if per_image else generators[0]
            grad, losses, info = self._gradient(part, loss_fn, step, drawn, samples)
            if not (torch.isfinite(losses).all() and torch.isfinite(grad).all()):  # e.g. an fp16 overflow
                what = "loss" if not torch.isfinite(losses).all() else "gradient"
                raise NonFiniteError(
                    f"non-finite {what} at PGD step {step} (loss {float(losses.mean()):.4g}); nothing is saved for this "
                    "image. In float16 try --dtype bfloat16 or float32"
                )
            alpha = step_size(self.schedule, self.alpha, step, self.steps)
            with torch.no_grad():
                grad = grad.float()
                if self.momentum > 0:  # MI-FGSM, each image's gradient scaled by its own mean |g|
                    velocity[rows] = self.momentum * velocity[rows] + grad / _per_image(
                        grad.abs().mean, grad
                    ).clamp_min(1e-12)
                    grad = velocity[rows]
                if self.update == "sign":
                    direction = grad.sign()
                elif self.update == "adam":
                    beta1, beta2 = ADAM_BETAS
                    scaled = grad / _per_image(grad.abs().mean, grad).clamp_min(
                        1e-30
                    )  # scale-free, so Adam's 1e-8 never dominates
                    first[rows] = first[rows] * beta1 + scaled * (1 - beta1)
                    second[rows] = second[rows] * beta2 + scaled * scaled * (1 - beta2)
                    direction = (first[rows] / (1 - beta1 ** (step + 1))) / (
                        (second[rows] / (1 - beta2 ** (step + 1))).sqrt() + 1e-8
                    )
                else:
                    direction = grad / _per_image(lambda **kw: grad.pow(2).mean(**kw).sqrt(), grad).clamp_min(1e-30)
                x[rows] = self.project(part.detach() + alpha * direction, x0[rows])
            values = losses.detach().reshape(-1).tolist()
            record = {"step": step, "loss": sum(values) / len(values)}
            if per_image and batch > 1:
                record["losses"] = dict(zip(active, values, strict=False))
            if self.schedule != "constant":
                record["alpha"] = alpha * 255.0
            record.update({k: float(v) for k, v in info.items()})
            history.append(record)
            if self.progress:
                bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k not in ("step", "losses")})
            if callback is not None:
                callback(step, record)
            if step + 1 in kept_steps:
                kept[step + 1] = x.detach().clone()
            for i in active:
                steps_run[i] = step + 1
            if per_image:
                stopped = [i for i, value in zip(active, values, strict=False) if plateaus[i].stop(step, value)]
                for i in stopped:
                    reasons[i] = plateaus[i].reason()
                active = [i for i in active if i not in stopped]
            elif plateaus[0].stop(step, record["loss"]):
                reasons = [plateaus[0].reason()] * batch
                active = []
            if not active:
                break
        bar.close()
        return PGDResult(
            x.detach(),
            history,
            kept,
            max(steps_run),
            reasons[0] if len(set(reasons)) == 1 else "per image",
            steps_run,
            reasons,
        )

    def _gradient(self, x, loss_fn: LossFn, step: int, generator, samples: int):
        """(d loss / d x, losses, info) at ``x``: the loss is a scalar or one value per image (summed for the
        gradient, so each image gets the gradient of its own loss); with a transform, the mean over
        ``samples`` draws of it (one backward per draw, so memory does not grow with the samples)."""
        grad, losses, infos = None, [], []
        for _ in range(samples):
            inputs = self.transform(x, generator) if self.transform is not None else x
            output = loss_fn(inputs, step, generator)
            loss, info = output if isinstance(output, tuple) else (output, {})
            if loss.dim() > 1 or (loss.dim() == 1 and loss.shape[0] != x.shape[0]):
                raise ValueError(f"loss_fn must return a scalar or one loss per image, got shape {tuple(loss.shape)}")
            (sample_grad,) = torch.autograd.grad(loss.sum(), x)
            grad = sample_grad if grad is None else grad + sample_grad
            losses.append(loss.detach().float())
            infos.append(info)
        if samples == 1:
            return grad, losses[0], infos[0]
        info = {k: sum(float(i[k]) for i in infos) / samples for k in infos[0]}
        return grad / samples, torch.stack(losses).mean(0), info


def _per_image(reduce, tensor: torch.Tensor) -> torch.Tensor:
    """``reduce`` (e.g. ``t.abs().mean``) over every dimension but the first, shaped to broadcast per image."""
    return reduce(dim=tuple(range(1, tensor.dim())), keepdim=True)
