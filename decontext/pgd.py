"""One L-inf PGD engine, generic over any differentiable loss of pixels in [0, 1].

It knows nothing about diffusion: a method hands it ``loss_fn(x, step, generator)`` returning a
scalar to MAXIMISE (optionally with a dict of floats to log). Budgets and step sizes are given in
1/255 units of the [0, 1] scale, as on the command line (``eps=12.75`` means 12.75/255).

Each step: g = d loss / d x; with momentum, g <- mu * g_prev + g / mean|g| (MI-FGSM);
x <- clip(x0 + clip(x + alpha * sign(g) - x0, -eps, eps), 0, 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm.auto import tqdm

LossOutput = torch.Tensor | tuple[torch.Tensor, dict]
LossFn = Callable[[torch.Tensor, int, torch.Generator], LossOutput]
Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class PGDResult:
    pixels: torch.Tensor  # adversarial image, same shape/dtype/device as the input, in [0, 1]
    history: list[dict] = field(default_factory=list)  # one dict per step: step, loss, and the method's floats

    @property
    def losses(self) -> list[float]:
        return [h["loss"] for h in self.history]


class PGD:
    """L-inf projected gradient ascent.

    Args:
        eps: budget in 1/255 units (L-inf radius around the clean image).
        alpha: step size in 1/255 units.
        steps: number of sign steps.
        momentum: MI-FGSM decay (0 = plain PGD, the DeContext default).
        random_start: start from a uniform point in the eps-ball instead of the clean image.
        seed: seeds the generator handed to the loss (prompt/timestep/noise draws) and the random start.
        transform: optional differentiable EOT transform ``t(x, generator) -> x'`` applied before the loss.
        progress: show a tqdm bar.
    """

    def __init__(
        self,
        eps: float = 12.75,
        alpha: float = 0.6375,
        steps: int = 800,
        momentum: float = 0.0,
        random_start: bool = False,
        seed: int = 0,
        transform: Transform | None = None,
        progress: bool = True,
        desc: str = "PGD",
    ):
        if eps < 0 or alpha <= 0 or steps < 0:
            raise ValueError(f"need eps >= 0, alpha > 0, steps >= 0 (got eps={eps}, alpha={alpha}, steps={steps})")
        if not 0.0 <= momentum < 1.0 + 1e-9:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.eps = eps / 255.0
        self.alpha = alpha / 255.0
        self.steps = int(steps)
        self.momentum = momentum
        self.random_start = random_start
        self.seed = seed
        self.transform = transform
        self.progress = progress
        self.desc = desc

    def project(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return (x0 + (x - x0).clamp(-self.eps, self.eps)).clamp(0.0, 1.0)

    def run(self, x0: torch.Tensor, loss_fn: LossFn, callback: Callable[[int, dict], None] | None = None) -> PGDResult:
        x0 = x0.detach().float()
        generator = torch.Generator().manual_seed(self.seed)
        x = x0.clone()
        if self.random_start and self.eps > 0:
            start = torch.rand(x0.shape, generator=generator).to(x0.device) * 2 - 1
            x = self.project(x0 + start * self.eps, x0)
        velocity = torch.zeros_like(x0)
        history: list[dict] = []
        bar = tqdm(range(self.steps), desc=self.desc, disable=not self.progress, leave=False, dynamic_ncols=True)
        for step in bar:
            x.requires_grad_(True)
            inputs = self.transform(x, generator) if self.transform is not None else x
            output = loss_fn(inputs, step, generator)
            loss, info = output if isinstance(output, tuple) else (output, {})
            if loss.dim() != 0:
                raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
            (grad,) = torch.autograd.grad(loss, x)
            with torch.no_grad():
                grad = grad.float()
                if self.momentum > 0:
                    velocity = self.momentum * velocity + grad / grad.abs().mean().clamp_min(1e-12)
                    grad = velocity
                x = self.project(x.detach() + self.alpha * grad.sign(), x0)
            record = {"step": step, "loss": float(loss.detach())}
            record.update({k: float(v) for k, v in info.items()})
            history.append(record)
            if self.progress:
                bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k != "step"})
            if callback is not None:
                callback(step, record)
        return PGDResult(x.detach(), history)
