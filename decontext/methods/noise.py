"""Random noise of the same L-inf budget: the control every protection must beat.

Not an optimisation: the perturbation is PGD's random start and nothing after it (``pgd_defaults``:
no steps). ``sign``: every pixel moves by exactly +-eps, like a saturated PGD result; ``uniform``:
uniform in the eps-ball. Its loss is flat, so steps a user asks for anyway leave the start unchanged.
"""

from __future__ import annotations

import torch

from . import METHODS
from .base import Method

DEFAULTS = METHODS["noise"].defaults


class RandomNoise(Method, spec="noise"):
    def __init__(self, distribution: str = DEFAULTS["distribution"]):
        if distribution not in ("sign", "uniform"):
            raise ValueError(f"distribution must be 'sign' or 'uniform', got {distribution!r}")
        self.distribution = distribution

    @property
    def pgd_defaults(self) -> dict:
        return {"steps": 0, "start": self.distribution}

    def config(self) -> dict:
        return {"method": self.name, "distribution": self.distribution}

    def loss(self, editor, pixels: torch.Tensor, size, step: int, generators):
        return (pixels * 0).flatten(1).sum(1), {}
