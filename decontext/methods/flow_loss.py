"""diff-PGD baseline for flow-matching editors: maximise the editor's own training loss.

At a random sigma the target tokens are the image's own latents noised along the flow
``x_sigma = (1 - sigma) * z + sigma * noise``; the editor predicts the velocity ``noise - z`` with the
image as context. PGD maximises the mean squared error of that prediction (full forward: every
block is needed for the output).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..prompts import load_prompts


class FlowLoss:
    name = "flow_loss"

    def __init__(self, t_range: tuple[float, float] = (0.0, 1.0), guidance: float = 3.5, prompts: Sequence[str] | str | Path | None = None, release_text_encoders: bool = True):
        lo, hi = float(t_range[0]), float(t_range[1])
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"t_range must satisfy 0 <= lo <= hi <= 1, got {t_range}")
        self.t_range = (lo, hi)
        self.guidance = guidance
        if prompts is None or isinstance(prompts, (str, Path)):
            self.prompts = [p.text for p in load_prompts(prompts)]
        else:
            self.prompts = list(prompts)
        self.release_text_encoders = release_text_encoders
        self._embeddings = None

    def config(self) -> dict:
        return {"method": self.name, "t_range": list(self.t_range), "guidance": self.guidance, "num_prompts": len(self.prompts)}

    def prepare(self, editor) -> None:
        self._embeddings = editor.encode_prompts(self.prompts)
        if self.release_text_encoders:
            editor.release_text_encoders()

    def loss(self, editor, pixels: torch.Tensor, size: tuple[int, int], step: int, generator: torch.Generator):
        if self._embeddings is None:
            self.prepare(editor)
        editor.remove_probe()
        index = int(torch.randint(len(self.prompts), (1,), generator=generator))
        lo, hi = self.t_range
        sigma = lo + (hi - lo) * torch.rand(1, generator=generator)
        context = editor.encode_context(pixels, size)
        noise, ids = editor.target_like(context, generator)
        s = sigma.to(context.tokens.device, context.tokens.dtype)
        noisy = (1 - s) * context.tokens + s * noise
        embeds, pooled = self._embeddings.select(index)
        velocity = editor.forward(noisy, ids, context, embeds, pooled, sigma, self.guidance)
        error = (velocity.float() - (noise - context.tokens).float()).pow(2).mean()
        return error, {"flow_mse": float(error.detach())}
