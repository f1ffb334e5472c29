"""DeContext (Shen, Cui, Yang, arXiv 2512.16625): detach the edit from its context.

Minimises the share of attention that target-image queries pay to context-image keys, averaged over
the selected blocks, at high-noise timesteps with a pure-noise target. PGD maximises
``L = 1 - r``, r the mean share. Defaults are the paper's official settings; every choice is a
constructor argument.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..editors.base import Editor
from . import METHODS, PAPER_BLOCKS, PAPER_T_RANGE  # noqa: F401 (PAPER_BLOCKS, PAPER_T_RANGE: re-exported)
from .base import ProbedMethod, check_t_range, draw_per_image

DEFAULTS = METHODS["decontext"].defaults  # the paper's official settings


class DeContext(ProbedMethod, spec="decontext"):
    """Attention-share minimisation.

    Args:
        blocks: which attention layers to probe (see ``editors.base.resolve_blocks``).
        t_range: sigma drawn uniformly from [lo, hi) at each step (paper: t in 980..999 of 1000).
        t_one_every: every k-th step (0, k, 2k, ...) uses sigma = 1 exactly (the official Step1X-Edit
            attack does this with k = 10); 0 = never.
        prompts: edit prompts (a list, or a pool file path); one is drawn per step. Default: the
            project's pool (data/prompts/edit_prompts.txt).
        prompts_per_step: how many prompts are drawn per step (batched in one forward).
        release_text_encoders: let the editor free its prompt encoders once the pool is prepared.
    """

    def __init__(
        self,
        blocks: str | Sequence[str] = DEFAULTS["blocks"],
        t_range: tuple[float, float] = DEFAULTS["t_range"],
        t_one_every: int = DEFAULTS["t_one_every"],
        prompts: Sequence[str] | str | Path | None = DEFAULTS["prompts"],
        prompts_per_step: int = DEFAULTS["prompts_per_step"],
        release_text_encoders: bool = True,
    ):
        if prompts_per_step < 1:
            raise ValueError("prompts_per_step must be >= 1")
        if t_one_every < 0:
            raise ValueError("t_one_every must be >= 0")
        self.init_probing(blocks, prompts, release_text_encoders)
        self.t_range = check_t_range(t_range)
        self.t_one_every = int(t_one_every)
        self.prompts_per_step = prompts_per_step

    def config(self) -> dict:
        return {
            **self.probing_config(),
            "t_range": list(self.t_range),
            "t_one_every": self.t_one_every,
            "prompts_per_step": self.prompts_per_step,
        }

    def open_probe(self, editor: Editor):
        return editor.probe(self._blocks)

    def shares(
        self,
        editor: Editor,
        pixels: torch.Tensor,
        size: tuple[int, int],
        generators: Sequence[torch.Generator],
        step: int | None = None,
    ) -> torch.Tensor:
        """(B,) mean context share over the selected blocks for one random draw of prompt(s), t and noise per
        image from its generator (one generator for B > 1 images: one draw shared by them). Call inside
        ``session``."""
        if self._probe is None:
            raise RuntimeError(
                "DeContext.shares/loss run inside `with method.session(editor):` (it installs the probes)"
            )
        count = self.prompts_per_step
        if count > 1 and pixels.shape[0] > 1:
            raise ValueError("prompts_per_step > 1 works on one image at a time")
        index, sigma = draw_per_image(generators, len(self.prompts), self.t_range, count)
        if self.t_one_every and step is not None and step % self.t_one_every == 0:
            sigma = torch.ones_like(sigma)
        condition = editor.condition(pixels, [self.prompts[i] for i in index], size, step=step)
        noise = editor.noise_like(condition, generators)  # one noise draw per row
        return editor.probed_velocity(noise, sigma, condition, stop_after=self._blocks[-1]).mean_share(self._blocks)

    def loss(self, editor: Editor, pixels: torch.Tensor, size: tuple[int, int], step: int, generators):
        shares = self.shares(editor, pixels, size, generators, step)
        per_image = shares.reshape(len(pixels), -1).mean(1)  # one image's prompts_per_step rows: their mean
        return 1.0 - per_image, {"share": float(shares.detach().mean())}

    @torch.no_grad()
    def measure(
        self, editor: Editor, pixels: torch.Tensor, size: tuple[int, int], draws: int = 4, seed: int = 1234
    ) -> dict[str, float]:
        """Mean share over ``draws`` fixed (prompt, t, noise) draws: comparable before and after protection."""
        generator = torch.Generator().manual_seed(seed)
        return {
            "share": float(
                torch.stack([self.shares(editor, pixels, size, [generator]).mean() for _ in range(draws)]).mean()
            )
        }
