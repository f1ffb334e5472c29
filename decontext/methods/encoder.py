"""PhotoGuard's encoder attack (Salman et al., 2023), on the editor's own VAE.

Pulls the latent tokens of the protected image toward those of a flat grey image, so whatever the
editor reads from the image latents looks like grey. Maximises ``-||E(x) - E(grey)||^2``. With ``decoys``
(a folder of photos of other people, or ``toy-train``; ``methods.decoys``) the target of each photo is instead
the decoy whose latents lie farthest from the clean photo's: ``-||E(x) - E(decoy)||^2``.
PGD as PhotoGuard runs it: a random start in the eps-ball and the step decaying linearly to 1/100 of
its first value (``pgd_defaults``).
"""

from __future__ import annotations

import torch

from ..editors.base import Editor
from . import METHODS
from .base import Method, image_means
from .decoys import Decoys, DecoyTarget

DEFAULTS = METHODS["encoder"].defaults


class EncoderAttack(DecoyTarget, Method, spec="encoder"):
    """Args:
    target_value: grey level in [0, 1] of the target image (without decoys).
    decoys: a folder of decoy photos or ``toy-train``: each photo's target is the farthest of them (None: grey).
    """

    def __init__(self, target_value: float = DEFAULTS["target_value"], decoys: str | None = DEFAULTS["decoys"]):
        if not 0.0 <= target_value <= 1.0:
            raise ValueError(f"target_value must be in [0, 1], got {target_value}")
        self.target_value = target_value
        self.decoys = None if decoys is None else Decoys(decoys)
        self._target: dict[tuple[int, int], torch.Tensor] = {}

    def config(self) -> dict:
        return self.with_decoys({"method": self.name, "target_value": self.target_value})

    def _target_tokens(self, editor: Editor, size: tuple[int, int]) -> torch.Tensor:
        size = tuple(size)
        if size not in self._target:
            grey = torch.full((1, 3, *size), self.target_value)
            with torch.no_grad():
                self._target[size] = editor.image_latents(grey, size).float()
        return self._target[size]

    def _distance(self, editor: Editor, pixels, size) -> torch.Tensor:
        """(B,) mean squared distance of each image's latents to its target's (grey, or its decoy)."""
        if self.decoys is not None:
            target = self.decoys.targets(editor, pixels, size)
        else:
            target = self._target_tokens(editor, size)
        squared = (editor.image_latents(pixels, size).float() - target).pow(2)
        return image_means(squared)

    def loss(self, editor: Editor, pixels: torch.Tensor, size: tuple[int, int], step: int, generators):
        distance = self._distance(editor, pixels, size)
        return -distance, {"latent_mse": float(distance.detach().mean())}

    @torch.no_grad()
    def measure(self, editor: Editor, pixels, size, draws: int = 4, seed: int = 1234) -> dict[str, float]:
        return {"latent_mse": float(self._distance(editor, pixels, size).mean())}
