"""Identity metrics: FDFR (face detection failure rate) and ISM (identity score matching).

- ``fdfr``: 1 when MTCNN finds no face in the edited output, else 0; its mean is the FDFR.
  Direction: *higher* = better protection (the editor no longer produces a recognisable face).
- ``ism_facenet``: cosine between the FaceNet (InceptionResnetV1, VGGFace2) embedding of the face in
  the edited output and the mean embedding of the identity's clean image(s). Edits without a
  detected face have no ISM (they count in FDFR instead). Direction: *lower* = better protection.

Detection and cropping use facenet-pytorch's MTCNN, whose weights ship inside its wheel. The
identity of an image is its stem unless an identity map is given (several stems -> one identity;
the reference is the mean of their clean-image embeddings).

FaceNet weights (``20180402-114759-vggface2.pt``) are looked up in ``--weights-dir`` (also
``<weights-dir>/facenet``) and in facenet-pytorch's cache ``$TORCH_HOME/checkpoints``; they are
never downloaded here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from decontext.metrics.base import PHOTOGRAPHS_ONLY, EvalOptions, MetricBackend, MetricSpec, photographs, register
from decontext.metrics.run import EditRecord, ImageLoadError, RunData
from decontext.metrics.weights import find_file, missing_reason, torch_home

FACENET_FILE = "20180402-114759-vggface2.pt"


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
    prob: float
    landmarks: np.ndarray  # (5, 2): left eye, right eye, nose, mouth left, mouth right


class CachedDetector:
    """What the ISM/FDFR backends need of a face detector: ``load() -> bool`` (``error`` says why not),
    ``describe()``, ``detect(img) -> Face | None``, and ``detect_file``, which detects once per file of a run."""

    def __init__(self) -> None:
        self._cache: dict[Path, Face | None] = {}
        self.error: str | None = None

    def detect(self, img: np.ndarray) -> Face | None:
        raise NotImplementedError

    def detect_file(self, path: Path, run: RunData) -> Face | None:
        if path not in self._cache:
            self._cache[path] = self.detect(run.image(path))
        return self._cache[path]


class FaceDetector(CachedDetector):
    """MTCNN (facenet-pytorch) returning the largest face of an image, with a per-file cache."""

    def __init__(self, device: str = "cpu", mtcnn: object | None = None) -> None:
        super().__init__()
        self.device = device
        self._mtcnn = mtcnn

    def load(self) -> bool:
        if self._mtcnn is not None:
            return True
        try:
            from facenet_pytorch import MTCNN
        except Exception as exc:  # ImportError, or a broken install
            self.error = (
                f"facenet-pytorch is not importable ({type(exc).__name__}: {exc}); "
                "install it with `pip install --no-deps facenet-pytorch==2.6.0` (scripts/setup.sh)"
            )
            return False
        try:
            self._mtcnn = MTCNN(keep_all=True, device=self.device)
        except Exception as exc:
            self.error = f"MTCNN could not be built ({type(exc).__name__}: {exc})"
            return False
        return True

    def describe(self) -> str:
        return "faces found by MTCNN (facenet-pytorch, weights from its wheel)"

    def detect(self, img: np.ndarray) -> Face | None:
        if self._mtcnn is None and not self.load():
            raise RuntimeError(self.error)
        if hasattr(self._mtcnn, "min_face_size"):
            # Faces smaller than 1/12 of the short side are ignored: edits of portraits keep the face
            # large, and a smaller pyramid makes MTCNN several times faster on 512 px images.
            self._mtcnn.min_face_size = max(20, min(img.shape[:2]) // 12)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # MTCNN runs many tiny convolutions: threads only add overhead
        try:
            with torch.no_grad():
                boxes, probs, points = self._mtcnn.detect(Image.fromarray(img), landmarks=True)
        finally:
            torch.set_num_threads(threads)
        if boxes is None or len(boxes) == 0:
            return None
        areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
        i = int(np.argmax(areas))
        return Face(tuple(float(v) for v in boxes[i]), float(probs[i]), np.asarray(points[i], dtype=np.float64))


_SHARED: dict[str, FaceDetector] = {}


def shared_detector(device: str) -> FaceDetector:
    """One MTCNN per device for all identity backends of a process (detections are cached)."""
    if device not in _SHARED:
        _SHARED[device] = FaceDetector(device)
    return _SHARED[device]


def crop_face(img: np.ndarray, face: Face, size: int = 160) -> np.ndarray:
    """The face box (clamped to the image), resized to size x size (bilinear): uint8 (size, size, 3)."""
    h, w = img.shape[:2]
    x1, y1, x2, y2 = face.box
    box = (max(0, int(round(x1))), max(0, int(round(y1))), min(w, int(round(x2))), min(h, int(round(y2))))
    if box[2] <= box[0] or box[3] <= box[1]:
        box = (0, 0, w, h)
    return np.asarray(Image.fromarray(img).crop(box).resize((size, size), Image.BILINEAR))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else float("nan")


@register("fdfr", applies=photographs, order=30, why_not=PHOTOGRAPHS_ONLY)
class FDFRBackend(MetricBackend):
    metrics = (
        MetricSpec(
            "fdfr",
            "higher",
            "edit",
            "1 if no face is detected in the edit (MTCNN); mean = FDFR; higher = better protection",
        ),
    )

    def __init__(self, options: EvalOptions | None = None, detector: FaceDetector | None = None) -> None:
        super().__init__(options)
        self.detector = detector or shared_detector(self.options.device)

    def load(self) -> None:
        if self.detector.load():
            self.source = self.detector.describe()
            self._ok()
        else:
            self._unavailable(self.detector.error or "MTCNN unavailable")

    def score_edit(self, edit: EditRecord, run: RunData) -> dict[str, float]:
        return {"fdfr": 0.0 if self.detector.detect_file(edit.output, run) is not None else 1.0}


class ISMBackend(MetricBackend):
    """Shared logic of the identity-similarity backends; subclasses embed one detected face."""

    metric_name = "ism"
    unit_norm = True  # embeddings are L2-normalised before the identity mean (cosine-trained networks)

    def __init__(self, options: EvalOptions | None = None, detector: FaceDetector | None = None) -> None:
        super().__init__(options)
        self.detector = detector or shared_detector(self.options.device)
        self.references: dict[str, np.ndarray] = {}

    def embed_face(self, img: np.ndarray, face: Face) -> np.ndarray:
        raise NotImplementedError

    def _embedding(self, path: Path, run: RunData) -> np.ndarray | None:
        face = self.detector.detect_file(path, run)
        if face is None:
            return None
        emb = np.asarray(self.embed_face(run.image(path), face), dtype=np.float64).ravel()
        if not self.unit_norm:
            return emb
        norm = np.linalg.norm(emb)
        return emb / norm if norm > 0 else emb

    def compare(self, emb: np.ndarray, ref: np.ndarray) -> dict[str, float]:
        """The metric values of one edit's embedding against its identity's mean clean embedding."""
        return {self.metric_name: cosine(emb, ref)}

    def prepare(self, run: RunData) -> None:
        groups: dict[str, list[np.ndarray]] = {}
        for stem in run.stems:
            identity = run.identity(stem)
            path = run.source_path(stem)
            if path is None:
                continue
            try:
                emb = self._embedding(path, run)
            except ImageLoadError as exc:
                run.note_error(str(exc))
                continue
            if emb is None:
                run.note_error(f"{path}: no face detected in the clean image; not used as {self.name} reference")
                continue
            groups.setdefault(identity, []).append(emb)
        self.references = {k: np.mean(v, axis=0) for k, v in groups.items()}

    def score_edit(self, edit: EditRecord, run: RunData) -> dict[str, float]:
        ref = self.references.get(run.identity(edit.stem))
        if ref is None:
            return {}
        emb = self._embedding(edit.output, run)
        if emb is None:
            return {}
        return self.compare(emb, ref)


def fixed_standardization(crop: np.ndarray) -> torch.Tensor:
    """facenet-pytorch's input convention: (x - 127.5) / 128, shape (1, 3, H, W)."""
    t = torch.from_numpy(np.array(crop, dtype=np.float32)).permute(2, 0, 1)
    return ((t - 127.5) / 128.0).unsqueeze(0)


@register("ism_facenet", applies=photographs, order=40, why_not=PHOTOGRAPHS_ONLY)
class FaceNetISMBackend(ISMBackend):
    metric_name = "ism_facenet"
    metrics = (
        MetricSpec(
            "ism_facenet",
            "lower",
            "edit",
            "cosine of FaceNet embeddings, edit face vs mean clean embedding of the identity; "
            "lower = better protection",
        ),
    )

    def __init__(
        self,
        options: EvalOptions | None = None,
        detector: FaceDetector | None = None,
        network: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """``network`` (tests only): a stand-in mapping (N, 3, 160, 160) standardized crops to (N, D)."""
        super().__init__(options, detector)
        self.network = network

    def load(self) -> None:
        if not self.detector.load():
            self._unavailable(self.detector.error or "MTCNN unavailable")
            return
        if self.network is not None:
            self._ok()
            return
        path, tried = find_file(FACENET_FILE, self.options.weights_dir, ("facenet",), (torch_home() / "checkpoints",))
        if path is None:
            self._unavailable(
                missing_reason(
                    f"FaceNet weights ({FACENET_FILE})",
                    tried,
                    "Get them from the facenet-pytorch v2.2.9 release (see docs/EVALUATION.md).",
                )
            )
            return
        try:
            from facenet_pytorch import InceptionResnetV1

            model = InceptionResnetV1(pretrained=None, classify=False)
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("logits.")}
            model.load_state_dict(state, strict=True)
        except Exception as exc:
            self._unavailable(f"could not load FaceNet weights from {path}: {type(exc).__name__}: {exc}")
            return
        self.network = model.eval().to(self.options.device)
        self.source = (
            f"FaceNet InceptionResnetV1 (VGGFace2) weights {path}, on 160 px crops of {self.detector.describe()}"
        )
        self._ok()

    def embed_face(self, img: np.ndarray, face: Face) -> np.ndarray:
        x = fixed_standardization(crop_face(img, face, 160)).to(self.options.device)
        with torch.no_grad():
            return self.network(x)[0].detach().cpu().numpy()
