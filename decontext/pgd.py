"""One L-inf PGD engine, generic over any differentiable loss of pixels in [0, 1].

It knows nothing about diffusion: a method hands it ``loss_fn(x, step, generators)`` returning one
loss per image to MAXIMISE (optionally with a dict of floats to log); every image has its own
generator, and a single image is a batch of one. Budgets and step sizes are given in 1/255 units of
the [0, 1] scale, as on the command line (``eps=12.75`` means 12.75/255); ``config.fraction`` converts.

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

from .config import (  # noqa: F401 (STARTS, UPDATES: re-exported)
    SCHEDULES,
    STARTS,
    UPDATES,
    PGDConfig,
    fraction,
    levels,
)

LossOutput = torch.Tensor | tuple[torch.Tensor, dict]
LossFn = Callable[[torch.Tensor, int, list[torch.Generator]], LossOutput]
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
    history: list[dict] = field(default_factory=list)  # per step: step, mean loss of the active images, alpha, info
    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)  # steps done -> pixels (``run(snapshots=...)``)
    image_steps: list[int] = field(default_factory=list)  # per image: steps it ran
    # per image: why it stopped, "budget" (every configured step ran) or the stopping rule's account (``Plateau``)
    image_reasons: list[str] = field(default_factory=list)
    image_losses: list[list[float]] = field(default_factory=list)  # per image: its loss at each step it ran

    @property
    def losses(self) -> list[float]:
        return [h["loss"] for h in self.history]

    @property
    def steps_run(self) -> int:
        """The most steps any image ran."""
        return max(self.image_steps, default=0)

    @property
    def stop_reason(self) -> str:
        """Why the images stopped: their common reason, or "per image"."""
        return self.image_reasons[0] if len(set(self.image_reasons)) == 1 else "per image"


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
        self.eps = fraction(self.config.eps)
        self.alpha = fraction(self.config.alpha)
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
        seeds: Sequence[int] | None = None,
        *,
        callback: Callable[[int, dict], None] | None = None,
        snapshots=(),
        start_pixels: torch.Tensor | None = None,
    ) -> PGDResult:
        """Maximise ``loss_fn`` from ``x0`` (B, ...): every image as if alone, a batch of one being the plain case.

        ``seeds`` (one per image; default ``seed``, ``seed + 1``, ...): image i has its own generator, which
        draws its random start, its EOT transforms and every draw of the loss; ``loss_fn(x, step, generators)``
        gets the active images' generators in row order and returns one loss per image, (B,) (a scalar counts
        as every image's). Each image also has its own step normalisation and its own stopping rule (a stopped
        image leaves the batch), so its result does not depend on the batch it ran in.
        ``snapshots``: step counts after which the pixels are also kept (``PGDResult.snapshots``), e.g. to
        score a run at 50, 100 and 200 steps in one go. ``start_pixels``: where to start (projected onto the
        budget), e.g. an amortized protector's output, instead of the clean image or a random point
        (``start``); no random start is drawn then."""
        x0 = x0.detach().float()
        batch = x0.shape[0]
        seeds = [self.seed + i for i in range(batch)] if seeds is None else [int(s) for s in seeds]
        if len(seeds) != batch:
            raise ValueError(f"{len(seeds)} seeds for {batch} images")
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        x = x0.clone()
        if start_pixels is not None:
            if start_pixels.shape != x0.shape:
                raise ValueError(
                    f"start pixels of shape {tuple(start_pixels.shape)} for images of shape {tuple(x0.shape)}"
                )
            x = self.project(start_pixels.detach().float().to(x0.device), x0)
        elif self.start != "clean" and self.eps > 0:
            # The first draw of each generator: uniform in the ball, or its sign (every pixel +-eps).
            start = torch.cat([torch.rand((1, *x0.shape[1:]), generator=g) for g in generators]).to(x0.device) * 2 - 1
            x = self.project(x0 + (start.sign() if self.start == "sign" else start) * self.eps, x0)
        # Per-image optimiser state: MI-FGSM's velocity and Adam's moments (update "adam").
        state = {"velocity": torch.zeros_like(x0), "first": torch.zeros_like(x0), "second": torch.zeros_like(x0)}
        history: list[dict] = []
        bar = tqdm(range(self.steps), desc=self.desc, disable=not self.progress, leave=False, dynamic_ncols=True)
        samples = int(self.config.eot_samples) if self.transform is not None else 1
        kept_steps, kept = set(int(k) for k in snapshots), {}
        if 0 in kept_steps:
            kept[0] = x.detach().clone()
        rule = self.config.stop_patience, self.config.stop_window, self.config.stop_tol
        plateaus = [Plateau(*rule) for _ in range(batch)]
        active = list(range(batch))  # the images still being optimised
        steps_run, reasons = [0] * batch, ["budget"] * batch
        image_losses: list[list[float]] = [[] for _ in range(batch)]
        for step in bar:
            rows = slice(None) if len(active) == batch else torch.tensor(active, device=x.device)
            part = x[rows].detach().requires_grad_(True)
            grad, losses, info = self._gradient(part, loss_fn, step, [generators[i] for i in active], samples)
            if not (torch.isfinite(losses).all() and torch.isfinite(grad).all()):  # e.g. an fp16 overflow
                what = "loss" if not torch.isfinite(losses).all() else "gradient"
                raise NonFiniteError(
                    f"non-finite {what} at PGD step {step} (loss {float(losses.mean()):.4g}); nothing is saved for "
                    "this image. In float16 try --dtype bfloat16 or float32"
                )
            alpha = step_size(self.schedule, self.alpha, step, self.steps)
            with torch.no_grad():
                x[rows] = self.project(part.detach() + alpha * self._direction(grad, state, rows, step), x0[rows])
            values = losses.detach().reshape(-1).expand(len(active)).tolist()
            record = {"step": step, "loss": sum(values) / len(values)}
            if self.schedule != "constant":
                record["alpha"] = levels(alpha)
            record.update({k: float(v) for k, v in info.items()})
            history.append(record)
            if self.progress:
                bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k != "step"})
            if callback is not None:
                callback(step, record)
            if step + 1 in kept_steps:
                kept[step + 1] = x.detach().clone()
            for i, value in zip(active, values, strict=True):
                steps_run[i] = step + 1
                image_losses[i].append(value)
                if plateaus[i].stop(step, value):
                    reasons[i] = plateaus[i].reason()
            active = [i for i in active if reasons[i] == "budget"]
            if not active:
                break
        bar.close()
        return PGDResult(x.detach(), history, kept, steps_run, reasons, image_losses)

    def _direction(self, grad: torch.Tensor, state: dict, rows, step: int) -> torch.Tensor:
        """The update direction of the active ``rows`` from their gradient (momentum and the update rule);
        the rows' optimiser ``state`` moves on."""
        grad = grad.float()
        if self.momentum > 0:  # MI-FGSM, each image's gradient scaled by its own mean |g|
            state["velocity"][rows] = self.momentum * state["velocity"][rows] + grad / _per_image(
                grad.abs().mean, grad
            ).clamp_min(1e-12)
            grad = state["velocity"][rows]
        if self.update == "sign":
            return grad.sign()
        if self.update == "adam":
            beta1, beta2 = ADAM_BETAS
            # scale-free, so Adam's 1e-8 never dominates
            scaled = grad / _per_image(grad.abs().mean, grad).clamp_min(1e-30)
            state["first"][rows] = state["first"][rows] * beta1 + scaled * (1 - beta1)
            state["second"][rows] = state["second"][rows] * beta2 + scaled * scaled * (1 - beta2)
            first = state["first"][rows] / (1 - beta1 ** (step + 1))
            second = state["second"][rows] / (1 - beta2 ** (step + 1))
            return first / (second.sqrt() + 1e-8)
        return grad / _per_image(lambda **kw: grad.pow(2).mean(**kw).sqrt(), grad).clamp_min(1e-30)

    def _gradient(self, x, loss_fn: LossFn, step: int, generators: list[torch.Generator], samples: int):
        """(d loss / d x, (B,) losses, info) at ``x``: the losses are summed for the gradient, so each image
        gets the gradient of its own loss; with a transform, the mean over ``samples`` draws of it, each
        image transformed with its own generator (one backward per draw, so memory does not grow with the
        samples)."""
        grad, losses, infos = None, [], []
        for _ in range(samples):
            inputs = x if self.transform is None else self._transformed(x, generators)
            output = loss_fn(inputs, step, generators)
            loss, info = output if isinstance(output, tuple) else (output, {})
            if loss.dim() > 1 or (loss.dim() == 1 and loss.shape[0] != x.shape[0]):
                raise ValueError(f"loss_fn must return a scalar or one loss per image, got shape {tuple(loss.shape)}")
            (sample_grad,) = torch.autograd.grad(loss.sum(), x)
            grad = sample_grad if grad is None else grad + sample_grad
            losses.append(loss.detach().float().reshape(-1))
            infos.append(info)
        if samples == 1:
            return grad, losses[0], infos[0]
        info = {k: sum(float(i[k]) for i in infos) / samples for k in infos[0]}
        return grad / samples, torch.stack(losses).mean(0), info

    def _transformed(self, x: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        if len(generators) == 1:
            return self.transform(x, generators[0])
        return torch.cat([self.transform(x[i : i + 1], g) for i, g in enumerate(generators)])


def _per_image(reduce, tensor: torch.Tensor) -> torch.Tensor:
    """``reduce`` (e.g. ``t.abs().mean``) over every dimension but the first, shaped to broadcast per image."""
    return reduce(dim=tuple(range(1, tensor.dim())), keepdim=True)
