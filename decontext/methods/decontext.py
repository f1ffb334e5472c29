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

from ..prompts import load_prompts

PAPER_BLOCKS = "single:0-25/38"  # single-stream blocks 0..25 of FLUX's 38, scaled to other depths


class DeContext:
    """Attention-share minimisation.

    Args:
        blocks: which attention layers to probe (see ``editors.base.resolve_blocks``).
        t_range: sigma drawn uniformly from [lo, hi) at each step (paper: t in 980..999 of 1000).
        guidance: guidance-embedding value for guidance-distilled editors (Kontext: 3.5).
        prompts: edit prompts (a list, or a pool file path); one is drawn per step. Default: the
            project's pool (data/prompts/edit_prompts.txt).
        prompts_per_step: how many prompts are drawn per step (batched in one forward).
        release_text_encoders: free the text encoders once the pool is embedded.
    """

    name = "decontext"

    def __init__(
        self,
        blocks: str | Sequence[str] = PAPER_BLOCKS,
        t_range: tuple[float, float] = (0.98, 1.0),
        guidance: float = 3.5,
        prompts: Sequence[str] | str | Path | None = None,
        prompts_per_step: int = 1,
        release_text_encoders: bool = True,
    ):
        lo, hi = float(t_range[0]), float(t_range[1])
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"t_range must satisfy 0 <= lo <= hi <= 1, got {t_range}")
        if prompts_per_step < 1:
            raise ValueError("prompts_per_step must be >= 1")
        self.blocks_spec = blocks
        self.t_range = (lo, hi)
        self.guidance = guidance
        if prompts is None or isinstance(prompts, (str, Path)):
            self.prompts = [p.text for p in load_prompts(prompts)]
        else:
            self.prompts = [str(p) for p in prompts]
            if not self.prompts:
                raise ValueError("the prompt list is empty")
        self.prompts_per_step = prompts_per_step
        self.release_text_encoders = release_text_encoders
        self._embeddings = None
        self._blocks: list[str] | None = None

    def config(self) -> dict:
        return {
            "method": self.name,
            "blocks": self.blocks_spec if isinstance(self.blocks_spec, str) else list(self.blocks_spec),
            "resolved_blocks": self._blocks,
            "t_range": list(self.t_range),
            "guidance": self.guidance,
            "num_prompts": len(self.prompts),
            "prompts_per_step": self.prompts_per_step,
        }

    def prepare(self, editor) -> None:
        self._blocks = editor.resolve_blocks(self.blocks_spec)
        self._embeddings = editor.encode_prompts(self.prompts)
        if self.release_text_encoders:
            editor.release_text_encoders()

    def shares(self, editor, pixels: torch.Tensor, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
        """(B,) mean context share over the selected blocks for one random draw of prompt(s), t and noise."""
        if self._embeddings is None:
            self.prepare(editor)
        count = self.prompts_per_step
        index = torch.randint(len(self.prompts), (count,), generator=generator).tolist()
        lo, hi = self.t_range
        sigma = lo + (hi - lo) * torch.rand(count, generator=generator)
        if count > 1 and pixels.shape[0] > 1:
            raise ValueError("prompts_per_step > 1 works on one image at a time")
        context = editor.encode_context(pixels, size)
        noise, noise_ids = editor.target_like(context, generator)  # one noise draw per image
        target = noise.expand(count, -1, -1) if count > 1 else noise
        embeds, pooled = self._embeddings.select(index)
        probe = editor.install_probe(self._blocks)
        probe.clear()
        editor.forward(target, noise_ids, context, embeds, pooled, sigma, self.guidance, stop_after=self._blocks[-1])
        return probe.mean_share(self._blocks)

    def loss(self, editor, pixels: torch.Tensor, size: tuple[int, int], step: int, generator: torch.Generator):
        share = self.shares(editor, pixels, size, generator).mean()
        return 1.0 - share, {"share": float(share.detach())}

    @torch.no_grad()
    def measure(self, editor, pixels: torch.Tensor, size: tuple[int, int], draws: int = 4, seed: int = 1234) -> float:
        """Mean share over ``draws`` fixed (prompt, t, noise) draws: comparable before and after protection."""
        generator = torch.Generator().manual_seed(seed)
        return float(torch.stack([self.shares(editor, pixels, size, generator).mean() for _ in range(draws)]).mean())
