"""ArcFace identity similarity (the DeContext paper's choice): ``ism_arcface``.

Same definition and direction as ``ism_facenet`` (*lower* = better protection), with an ArcFace
ONNX recognition model (e.g. insightface's ``w600k_r50.onnx`` from the buffalo_l pack or
``glintr100.onnx`` from antelopev2) run by onnxruntime. Faces are found by MTCNN and aligned to the
standard 112x112 ArcFace five-point template with a similarity transform. (The paper detects with
RetinaFace; MTCNN's five landmarks are the same points.)

Model lookup: ``--arcface-model FILE``, else in ``--weights-dir``: ``arcface.onnx``,
``w600k_r50.onnx``, ``arcface/w600k_r50.onnx``, ``buffalo_l/w600k_r50.onnx``, else insightface's
cache ``~/.insightface/models/buffalo_l/w600k_r50.onnx``. Needs ``pip install onnxruntime``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from skimage.transform import SimilarityTransform, warp

from decontext.metrics.base import PHOTOGRAPHS_ONLY, EvalOptions, MetricSpec, photographs, register
from decontext.metrics.identity import Face, FaceDetector, ISMBackend

# Landmark positions of the canonical 112x112 ArcFace crop (left eye, right eye, nose, mouth corners).
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

Embedder = Callable[[np.ndarray], np.ndarray]


def align_face(img: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp the face so that its five landmarks land on the ArcFace template: uint8 (size, size, 3)."""
    src = np.asarray(landmarks, dtype=np.float64)
    dst = ARCFACE_TEMPLATE * (size / 112.0)
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        tform = SimilarityTransform.from_estimate(src, dst)
    else:
        tform = SimilarityTransform()
        tform.estimate(src, dst)
    out = warp(img, tform.inverse, output_shape=(size, size), order=1, mode="constant", cval=0.0, preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def arcface_blob(crop: np.ndarray) -> np.ndarray:
    """RGB uint8 (112, 112, 3) -> float32 (1, 3, 112, 112), (x - 127.5) / 127.5."""
    return ((crop.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]


def _candidates(options: EvalOptions) -> tuple[list[Path], list[Path]]:
    tried: list[Path] = []
    if options.arcface_model is not None:
        tried.append(Path(options.arcface_model))
    if options.weights_dir is not None:
        w = Path(options.weights_dir)
        tried += [
            w / "arcface.onnx",
            w / "w600k_r50.onnx",
            w / "arcface" / "w600k_r50.onnx",
            w / "buffalo_l" / "w600k_r50.onnx",
        ]
    tried.append(Path.home() / ".insightface" / "models" / "buffalo_l" / "w600k_r50.onnx")
    return [p for p in tried if p.is_file()], tried


@register("ism_arcface", applies=photographs, order=45, why_not=PHOTOGRAPHS_ONLY)
class ArcFaceISMBackend(ISMBackend):
    metric_name = "ism_arcface"
    metrics = (
        MetricSpec(
            "ism_arcface",
            "lower",
            "edit",
            "cosine of ArcFace embeddings, edit face vs mean clean embedding of the identity; "
            "lower = better protection",
        ),
    )

    def __init__(
        self, options: EvalOptions | None = None, detector: FaceDetector | None = None, embedder: Embedder | None = None
    ) -> None:
        """``embedder`` (tests only): a stand-in mapping float32 (N, 3, 112, 112) to (N, D)."""
        super().__init__(options, detector)
        self.embedder = embedder

    def load(self) -> None:
        if not self.detector.load():
            self._unavailable(self.detector.error or "MTCNN unavailable")
            return
        if self.embedder is not None:
            self._ok()
            return
        found, tried = _candidates(self.options)
        if not found:
            self._unavailable(
                "ArcFace ONNX model not found (looked in: "
                + ", ".join(map(str, tried))
                + "). Pass --arcface-model or put w600k_r50.onnx in --weights-dir (see docs/EVALUATION.md)."
            )
            return
        try:
            import onnxruntime as ort
        except ImportError:
            self._unavailable(
                f"ArcFace model found at {found[0]} but onnxruntime is not installed (pip install onnxruntime)"
            )
            return
        try:
            session = ort.InferenceSession(str(found[0]), providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
        except Exception as exc:
            self._unavailable(f"could not load ArcFace model {found[0]}: {type(exc).__name__}: {exc}")
            return
        self.embedder = lambda blob: session.run(None, {name: blob})[0]
        self.source = (
            f"ArcFace ONNX model {found[0]} (onnxruntime), on 112 px five-point-aligned {self.detector.describe()}"
        )
        self._ok()

    def embed_face(self, img: np.ndarray, face: Face) -> np.ndarray:
        return np.asarray(self.embedder(arcface_blob(align_face(img, face.landmarks))))[0]
