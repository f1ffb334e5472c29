"""PhotoGuard's diffusion attack (Salman et al., 2023): through the editor's own sampler.

The encoder attack only moves the image's latents; this attack runs the editor end to end, from pure
noise through ``sample_steps`` deterministic denoising steps conditioned on the protected image and an
edit prompt, decodes the result, and pulls that EDIT toward a target image (flat grey by default; with
``decoys``, each photo's farthest decoy, ``methods.decoys``): ``L(x) = -mean((decode(sample(x, prompt)) -
target)^2)``. Gradients flow back through every sampler step (``editor.denoise``) and the decoder
(``editor.decode``), so the cost per PGD step is
``sample_steps`` denoiser forwards and backwards; PhotoGuard shortens the schedule for the same reason.
PGD as PhotoGuard runs it: a random start and the linear step decay (``pgd_defaults``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..editors.base import Editor
from . import METHODS
from .base import Method, draw_prompts_and_sigmas, only, prompt_list, sample
from .decoys import Decoys, DecoyTarget

DEFAULTS = METHODS["diffusion"].defaults


class DiffusionAttack(DecoyTarget, Method, spec="diffusion"):
    """Args:
    sample_steps: denoising steps of the differentiable edit (evenly spaced noise levels 1 -> 0).
    target_value: grey level in [0, 1] of the target image.
    prompts: edit prompts (list or pool file); one is drawn per step.
    release_text_encoders: let the editor free its text encoders once the pool is embedded.
    decoys: a folder of decoy photos or ``toy-train``: each edit is pulled toward the photo's farthest decoy.
    """

    def __init__(
        self,
        sample_steps: int = DEFAULTS["sample_steps"],
        target_value: float = DEFAULTS["target_value"],
        prompts: Sequence[str] | str | Path | None = DEFAULTS["prompts"],
        release_text_encoders: bool = True,
        decoys: str | None = DEFAULTS["decoys"],
    ):
        if sample_steps < 1:
            raise ValueError(f"sample_steps must be >= 1, got {sample_steps}")
        if not 0.0 <= target_value <= 1.0:
            raise ValueError(f"target_value must be in [0, 1], got {target_value}")
        self.sample_steps = int(sample_steps)
        self.target_value = float(target_value)
        self.prompts = prompt_list(prompts)
        self.release_text_encoders = release_text_encoders
        self.decoys = None if decoys is None else Decoys(decoys)

    def config(self) -> dict:
        return self.with_decoys(
            {
                "method": self.name,
                "sample_steps": self.sample_steps,
                "target_value": self.target_value,
                "num_prompts": len(self.prompts),
            }
        )

    def prepare(self, editor: Editor) -> None:
        editor.prepare(self.prompts, release=self.release_text_encoders)

    def edit(
        self, editor: Editor, pixels: torch.Tensor, size, generator: torch.Generator, step: int | None = None
    ) -> torch.Tensor:
        """The differentiable edit: (B, 3, H, W) pixels at the working size, for one draw of prompt and noise."""
        (index,), _ = draw_prompts_and_sigmas(generator, len(self.prompts), (0.0, 1.0))
        condition = editor.condition(pixels, [self.prompts[index]], size, step=step)
        return editor.decode(
            sample(editor, condition, editor.noise_like(condition, [generator]), self.sample_steps), condition
        )

    def _distance(self, editor, pixels, size, generator, step=None) -> torch.Tensor:
        edit = self.edit(editor, pixels, size, generator, step)
        target = self.target_value if self.decoys is None else self.decoys.target_pixels(editor, pixels, size)
        return (edit - target).pow(2).mean()

    def loss(self, editor: Editor, pixels: torch.Tensor, size: tuple[int, int], step: int, generators):
        distance = self._distance(editor, pixels, size, only(generators, self.name), step)
        return -distance.reshape(1), {"edit_mse": float(distance.detach())}

    @torch.no_grad()
    def measure(self, editor: Editor, pixels, size, draws: int = 4, seed: int = 1234) -> dict[str, float]:
        generator = torch.Generator().manual_seed(seed)
        return {
            "edit_mse": float(
                torch.stack([self._distance(editor, pixels, size, generator) for _ in range(draws)]).mean()
            )
        }
