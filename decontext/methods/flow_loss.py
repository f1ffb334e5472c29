"""diff-PGD baseline for flow-matching editors: maximise the editor's own training loss.

At a random sigma the target tokens are the image's own latents noised along the flow, and the
editor predicts the velocity it was trained to predict there, with the image as context
(``editor.flow_pair``). PGD maximises the mean squared error of that prediction (full forward:
every block is needed for the output).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..editors.base import Editor
from . import METHODS
from .base import Method, check_t_range, draw_per_image, image_means, prompt_list

DEFAULTS = METHODS["flow_loss"].defaults


class FlowLoss(Method, spec="flow_loss"):
    def __init__(
        self,
        t_range: tuple[float, float] = DEFAULTS["t_range"],
        prompts: Sequence[str] | str | Path | None = DEFAULTS["prompts"],
        release_text_encoders: bool = True,
    ):
        self.t_range = check_t_range(t_range)
        self.prompts = prompt_list(prompts)
        self.release_text_encoders = release_text_encoders

    def config(self) -> dict:
        return {"method": self.name, "t_range": list(self.t_range), "num_prompts": len(self.prompts)}

    def prepare(self, editor: Editor) -> None:
        editor.prepare(self.prompts, release=self.release_text_encoders)

    def _error(self, editor: Editor, pixels, size, generators, step=None) -> torch.Tensor:
        """(B,) flow-matching errors, each image's from its generator's draws of prompt, sigma and noise."""
        indices, sigma = draw_per_image(generators, len(self.prompts), self.t_range)
        condition = editor.condition(pixels, [self.prompts[i] for i in indices], size, step=step)
        noise = editor.noise_like(condition, generators)
        x_t, target = editor.flow_pair(condition, noise, sigma)
        velocity = editor.velocity(x_t, sigma, condition)
        return image_means((velocity.float() - target.float()).pow(2))

    def loss(self, editor: Editor, pixels: torch.Tensor, size: tuple[int, int], step: int, generators):
        error = self._error(editor, pixels, size, generators, step)
        return error, {"flow_mse": float(error.detach().mean())}

    @torch.no_grad()
    def measure(self, editor: Editor, pixels, size, draws: int = 4, seed: int = 1234) -> dict[str, float]:
        generator = torch.Generator().manual_seed(seed)
        return {
            "flow_mse": float(
                torch.stack([self._error(editor, pixels, size, [generator]).mean() for _ in range(draws)]).mean()
            )
        }
