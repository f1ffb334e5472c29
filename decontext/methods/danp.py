"""DANP: Dual Attention-Guided Noise Perturbation (Zhang, Dong, Shan, Chen; arXiv 2512.14333).

No public code exists; the abstract fixes the shape of the method and we chose the rest (docs/METHODS.md):

- Over several timesteps (a noise level drawn per PGD step from ``t_range``), read the text->image
  attention of the editor: per image query, the attention mass on the prompt's own tokens, mean over
  heads (``editor.text_attention``: UNet cross-attention on InstructPix2Pix; the target-query /
  text-key block of the joint attention on the MM-DiTs).
- A DYNAMIC THRESHOLD splits each map into the text-relevant region and the rest, recomputed at every
  step: ``tau = mean(m) + k * std(m)`` over the map's positions (``threshold_std`` = k), mask
  ``M = m > tau`` (no gradient through the mask).
- Attention term (maximised): ``mean(m outside M) - mean(m inside M)``, averaged over the probed
  layers: lowers the attention where the edit would go and raises it everywhere else.
- Noise term (maximised): the editor's own denoising error at that noise level,
  ``mean((prediction - target)^2)`` (epsilon on InstructPix2Pix, velocity on the flow editors).
- ``L = attention_weight * attention term + noise_weight * noise term``. With ``balance="grad"`` (the
  default, ours) PGD follows ``w_A g_A / mean|g_A| + w_N g_N / mean|g_N|``, the two terms' gradients
  each scaled to unit mean magnitude, as compositions do: on the toy Kontext the noise term's gradient
  is 8-33x the attention term's (6 draws on toy-v2; 0.3-1.1x on the toy InstructPix2Pix), so the plain
  sum would be the flow loss alone. ``balance="none"``: the plain weighted sum.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..editors.base import Editor
from . import METHODS
from .base import ProbedMethod, check_t_range, draw_prompts_and_sigmas, only
from .composite import unit_gradient, with_gradient

DEFAULTS = METHODS["danp"].defaults


def relevance_mask(maps: torch.Tensor, threshold_std: float) -> torch.Tensor:
    """(B, N) bool mask of the text-relevant positions of (B, N) attention maps: above mean + k * std of
    their own row (computed without gradient)."""
    maps = maps.detach()
    tau = maps.mean(dim=1, keepdim=True) + threshold_std * maps.std(dim=1, keepdim=True)
    return maps > tau


def region_contrast(maps: torch.Tensor, threshold_std: float) -> torch.Tensor:
    """(B,) mean attention outside the text-relevant region minus inside it (0 where a row has no
    relevant position or nothing outside it)."""
    inside = relevance_mask(maps, threshold_std).to(maps.dtype)
    outside = 1 - inside
    mean_in = (maps * inside).sum(1) / inside.sum(1).clamp_min(1)
    mean_out = (maps * outside).sum(1) / outside.sum(1).clamp_min(1)
    valid = (inside.sum(1) > 0) & (outside.sum(1) > 0)
    return torch.where(valid, mean_out - mean_in, torch.zeros_like(mean_in))


class DANP(ProbedMethod, spec="danp"):
    """Dual attention-guided noise perturbation.

    Args:
        blocks: attention layers whose text maps are read (``all``: every layer with text keys; or any
            ``resolve_blocks`` spec, e.g. ``down,mid`` on a UNet, ``double`` on FLUX).
        t_range: noise level drawn uniformly from [lo, hi) at each step.
        threshold_std: k of the dynamic threshold ``mean + k * std``.
        attention_weight, noise_weight: weights of the two terms.
        prompts: edit prompts (list or pool file); one is drawn per step.
        release_text_encoders: let the editor free its text encoders once the pool is embedded.
    """

    def __init__(
        self,
        blocks: str | Sequence[str] = DEFAULTS["blocks"],
        t_range: tuple[float, float] = DEFAULTS["t_range"],
        threshold_std: float = DEFAULTS["threshold_std"],
        attention_weight: float = DEFAULTS["attention_weight"],
        noise_weight: float = DEFAULTS["noise_weight"],
        balance: str = DEFAULTS["balance"],
        prompts: Sequence[str] | str | Path | None = DEFAULTS["prompts"],
        release_text_encoders: bool = True,
    ):
        if balance not in ("grad", "none"):
            raise ValueError(f"balance must be 'grad' or 'none', got {balance!r}")
        if attention_weight < 0 or noise_weight < 0 or attention_weight + noise_weight == 0:
            raise ValueError("danp weights must be >= 0 and not both 0")
        self.init_probing(blocks, prompts, release_text_encoders)
        self.t_range = check_t_range(t_range)
        self.threshold_std = float(threshold_std)
        self.attention_weight = float(attention_weight)
        self.noise_weight = float(noise_weight)
        self.balance = balance

    def config(self) -> dict:
        return {
            **self.probing_config(),
            "t_range": list(self.t_range),
            "threshold_std": self.threshold_std,
            "attention_weight": self.attention_weight,
            "noise_weight": self.noise_weight,
            "balance": self.balance,
        }

    def open_probe(self, editor: Editor):
        return editor.text_attention(self._blocks)

    def terms(
        self,
        editor: Editor,
        pixels: torch.Tensor,
        size: tuple[int, int],
        generator: torch.Generator,
        step: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(attention term, noise term), scalars, for one random draw of prompt, noise level and noise."""
        if self._probe is None:
            raise RuntimeError("DANP.loss runs inside `with method.session(editor):` (it installs the probes)")
        (index,), sigma = draw_prompts_and_sigmas(generator, len(self.prompts), self.t_range)
        condition = editor.condition(pixels, [self.prompts[index]], size, step=step)
        noise = editor.noise_like(condition, [generator])
        x_t, target = editor.flow_pair(condition, noise, sigma)
        probed = editor.probed_velocity(x_t, sigma, condition)
        prediction = probed.velocity
        noise_term = (prediction.float() - target.float()).pow(2).mean()
        attention = torch.stack(
            [region_contrast(probed.text_maps[b], self.threshold_std).mean() for b in self._blocks]
        ).mean()
        return attention, noise_term

    def loss(self, editor: Editor, pixels: torch.Tensor, size: tuple[int, int], step: int, generators):
        attention, noise_term = self.terms(editor, pixels, size, only(generators, self.name), step)
        total = self.attention_weight * attention + self.noise_weight * noise_term
        log = {"attention": float(attention.detach()), "noise_mse": float(noise_term.detach())}
        if self.balance == "none" or not pixels.requires_grad:  # nothing to balance when no gradient is wanted
            return total.reshape(1), log
        direction = torch.zeros_like(pixels, dtype=torch.float32)
        for weight, term in ((self.attention_weight, attention), (self.noise_weight, noise_term)):
            if weight:
                direction += weight * unit_gradient(term, pixels, retain_graph=True)
        return with_gradient(total, pixels, direction).reshape(1), log

    @torch.no_grad()
    def measure(self, editor: Editor, pixels, size, draws: int = 4, seed: int = 1234) -> dict[str, float]:
        generator = torch.Generator().manual_seed(seed)
        values = torch.tensor(
            [[float(v) for v in self.terms(editor, pixels, size, generator)] for _ in range(draws)]
        ).mean(0)
        return {"attention": float(values[0]), "noise_mse": float(values[1])}
