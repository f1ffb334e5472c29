"""PSNR and SSIM (torchmetrics): imperceptibility of the perturbation and clean-vs-protected edits.

Directions (better protection):
- ``psnr_input`` / ``ssim_input`` (source vs protected input): *higher* = the perturbation is less
  visible. This is the cost side of protection, not its effect.
- ``psnr_vs_clean`` / ``ssim_vs_clean`` (clean edit vs protected edit, same stem/prompt/seed):
  *lower* = the protection changed the editor's output more.

Identical images have infinite PSNR; values are capped at ``EvalOptions.psnr_cap_db`` (100 dB by
default) and the summary says so.
"""

from __future__ import annotations

import numpy as np

from decontext.metrics.base import MetricBackend, MetricSpec, register
from decontext.metrics.imageops import clean_edit_pair, input_pair, to_tensor
from decontext.metrics.run import EditRecord, RunData


def psnr(a: np.ndarray, b: np.ndarray, cap_db: float = 100.0) -> float:
    """PSNR in dB of two uint8 RGB images (data range 1.0), capped at ``cap_db``."""
    from torchmetrics.functional.image import peak_signal_noise_ratio  # slow import: only when used

    value = float(peak_signal_noise_ratio(to_tensor(b), to_tensor(a), data_range=1.0))
    if value > cap_db:  # identical images: inf
        return cap_db
    return value


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (Gaussian window 11, sigma 1.5) of two uint8 RGB images, data range 1.0."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return float(structural_similarity_index_measure(to_tensor(b), to_tensor(a), data_range=1.0))


@register("pixel", order=10)
class PixelBackend(MetricBackend):
    metrics = (
        MetricSpec(
            "psnr_input",
            "higher",
            "input",
            "PSNR (dB) source vs protected input; higher = less visible perturbation",
            "protected",
        ),
        MetricSpec(
            "ssim_input",
            "higher",
            "input",
            "SSIM source vs protected input; higher = less visible perturbation",
            "protected",
        ),
        MetricSpec(
            "psnr_vs_clean",
            "lower",
            "edit",
            "PSNR (dB) clean edit vs protected edit (same stem, prompt, seed); lower = better protection",
            "protected",
        ),
        MetricSpec(
            "ssim_vs_clean",
            "lower",
            "edit",
            "SSIM clean edit vs protected edit; lower = better protection",
            "protected",
        ),
    )

    def load(self) -> None:
        self._ok()  # no weights

    def score_input(self, condition: str, stem: str, run: RunData) -> dict[str, float]:
        pair = input_pair(condition, stem, run)
        if pair is None:
            return {}
        a, b = pair
        return {"psnr_input": psnr(a, b, self.options.psnr_cap_db), "ssim_input": ssim(a, b)}

    def score_edit(self, edit: EditRecord, run: RunData) -> dict[str, float]:
        pair = clean_edit_pair(edit, run)
        if pair is None:
            return {}
        a, b = pair
        return {"psnr_vs_clean": psnr(a, b, self.options.psnr_cap_db), "ssim_vs_clean": ssim(a, b)}
