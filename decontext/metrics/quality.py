"""No-reference image quality of the edited outputs: BRISQUE.

- ``brisque``: BRISQUE score of each edited output (0 ~ pristine, ~100 ~ heavily distorted).
  Direction: *higher* = better protection (the editor's output is more degraded).

Uses the ``brisque`` package (PyPI ``brisque`` 0.2.0, Apache-2.0), which ships its trained SVR model
and feature normalisation inside the wheel (``brisque/models/svm.txt``, ``normalize.pickle``), so it
works offline (piq and pyiqa download their BRISQUE weights at first use). Its ``BRISQUE.score``
fails with numpy 2 (some features come out as 1-element arrays that numpy 2 no longer converts with
``float``), so this module calls the package's own feature extraction and model and flattens the
features itself. Like the package, it works on the grey image in [0, 1] at full and half scale.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np

from decontext.metrics.base import EvalOptions, MetricBackend, MetricSpec, register
from decontext.metrics.run import EditRecord, RunData

Scorer = Callable[[np.ndarray], float]


class BrisqueScorer:
    """BRISQUE from the brisque package's shipped model; ``__call__(rgb uint8) -> score``."""

    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy.ndimage.filters deprecation inside the package
            import cv2
            from brisque import BRISQUE
            from libsvm import svmutil
        self._cv2 = cv2
        self._svm = svmutil
        self._impl = BRISQUE(url=False)
        self._lo = np.asarray(self._impl.scale_params["min_"], dtype=np.float64)
        self._hi = np.asarray(self._impl.scale_params["max_"], dtype=np.float64)

    def features(self, rgb: np.ndarray) -> np.ndarray:
        from skimage.color import rgb2gray

        grey = rgb2gray(np.asarray(rgb)[..., :3])
        half = self._cv2.resize(grey, None, fx=0.5, fy=0.5, interpolation=self._cv2.INTER_CUBIC)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            parts = [self._impl.calculate_brisque_features(g, kernel_size=7, sigma=7 / 6) for g in (grey, half)]
        return np.array([np.asarray(v, dtype=np.float64).reshape(-1)[0] for v in np.concatenate(parts)])

    def __call__(self, rgb: np.ndarray) -> float:
        feats = self.features(rgb)
        if not np.all(np.isfinite(feats)):
            return float("nan")  # e.g. a perfectly flat image has no texture statistics
        scaled = -1.0 + 2.0 * (feats - self._lo) / (self._hi - self._lo)
        nodes, _ = self._svm.gen_svm_nodearray([float(v) for v in scaled], isKernel=False)
        estimates = (self._svm.c_double * 1)()
        return float(self._svm.libsvm.svm_predict_probability(self._impl.model, nodes, estimates))


@register("brisque", order=60)
class BrisqueBackend(MetricBackend):
    metrics = (
        MetricSpec(
            "brisque",
            "higher",
            "edit",
            "BRISQUE no-reference quality of the edit (lower = better quality); higher = better protection",
        ),
    )

    def __init__(self, options: EvalOptions | None = None, scorer: Scorer | None = None) -> None:
        super().__init__(options)
        self.scorer = scorer

    def load(self) -> None:
        if self.scorer is None:
            try:
                self.scorer = BrisqueScorer()
            except Exception as exc:
                self._unavailable(
                    f"brisque package not usable ({type(exc).__name__}: {exc}); "
                    "pip install brisque==0.2.0 libsvm-official opencv-python-headless"
                )
                return
        self._ok()

    def score_edit(self, edit: EditRecord, run: RunData) -> dict[str, float]:
        return {"brisque": self.scorer(run.image(edit.output))}
