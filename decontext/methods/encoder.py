"""PhotoGuard's encoder attack (Salman et al., 2023), on the editor's own VAE.

Pulls the VAE latent of the protected image toward the latent of a flat grey image, so whatever the
editor reads from the context latents looks like grey. Maximises ``-||E(x) - E(grey)||^2``.
"""

from __future__ import annotations

import torch


class EncoderAttack:
    name = "encoder"

    def __init__(self, target_value: float = 0.5):
        self.target_value = target_value
        self._target: dict[tuple[int, int], torch.Tensor] = {}

    def config(self) -> dict:
        return {"method": self.name, "target_value": self.target_value}

    def prepare(self, editor) -> None:
        pass

    def _target_tokens(self, editor, size: tuple[int, int]) -> torch.Tensor:
        if size not in self._target:
            grey = torch.full((1, 3, *size), self.target_value)
            with torch.no_grad():
                self._target[size] = editor.encode_context(grey, size).tokens.float()
        return self._target[size]

    def loss(self, editor, pixels: torch.Tensor, size: tuple[int, int], step: int, generator: torch.Generator):
        tokens = editor.encode_context(pixels, size).tokens.float()
        distance = (tokens - self._target_tokens(editor, size)).pow(2).mean()
        return -distance, {"latent_mse": float(distance.detach())}
