"""Random noise of the same L-inf budget: the control every protection must beat.

Not an optimisation: ``perturb`` draws the perturbation directly (``sign``: every pixel moves by
exactly +-eps, like a saturated PGD result; ``uniform``: uniform in the eps-ball).
"""

from __future__ import annotations

import torch

from .base import Method, Option


class RandomNoise(Method):
    name = "noise"
    options = (Option("--distribution", "random-noise control: sign (every pixel +-eps, default) or uniform in the eps-ball", type=str, choices=("sign", "uniform")),)

    def __init__(self, distribution: str = "sign"):
        if distribution not in ("sign", "uniform"):
            raise ValueError(f"distribution must be 'sign' or 'uniform', got {distribution!r}")
        self.distribution = distribution

    def config(self) -> dict:
        return {"method": self.name, "distribution": self.distribution}

    def perturb(self, x0: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
        """``eps`` in 1/255 units; returns x0 + noise clamped to [0, 1]."""
        u = torch.rand(x0.shape, generator=generator) * 2 - 1
        noise = torch.sign(u) if self.distribution == "sign" else u
        return (x0 + noise.to(x0.device) * eps / 255.0).clamp(0, 1)
