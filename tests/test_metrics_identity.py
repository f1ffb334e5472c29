"""Identity metrics: real MTCNN detection (weights ship in facenet-pytorch), FDFR, ISM with stand-in
embedding networks (FaceNet/ArcFace weights are not available offline), ArcFace alignment."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from decontext.metrics.arcface import ARCFACE_TEMPLATE, ArcFaceISMBackend, align_face
from decontext.metrics.base import EvalOptions
from decontext.metrics.identity import FaceDetector, FaceNetISMBackend, FDFRBackend, crop_face, shared_detector
from decontext.metrics.run import load_run
from tests.demo_run import make_demo_run

REPO = Path(__file__).resolve().parent.parent
FACES = Path(os.environ.get("DECONTEXT_FACES_DIR", REPO.parent / "shared" / "data" / "faces"))


@pytest.fixture(scope="module")
def detector():
    det = shared_detector("cpu")
    assert det.load(), det.error
    return det


class TinyEmbedder(torch.nn.Module):
    """Deterministic stand-in for FaceNet: (N, 3, H, W) -> (N, 8)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 5, stride=4)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.zero_()

    def forward(self, x):
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


def test_mtcnn_finds_astronaut_face_with_our_torch_and_numpy(detector):
    img = data.astronaut()
    face = detector.detect(img)
    assert face is not None and face.prob > 0.95
    x1, y1, x2, y2 = face.box
    assert 150 < x1 < 220 and 30 < y1 < 100 and 230 < x2 < 300 and 140 < y2 < 210
    assert face.landmarks.shape == (5, 2)
    assert face.landmarks[0, 0] < face.landmarks[1, 0]  # left eye left of right eye
    assert crop_face(img, face).shape == (160, 160, 3)
    assert np.__version__.split(".")[0] == "2"


def test_mtcnn_finds_nothing_in_blank_images(detector):
    assert detector.detect(np.full((160, 160, 3), 128, np.uint8)) is None
    assert detector.detect(np.zeros((64, 64, 3), np.uint8)) is None


@pytest.mark.faces
def test_mtcnn_on_real_celeba_faces(detector):
    if not FACES.is_dir():
        pytest.skip(f"{FACES} not present (set DECONTEXT_FACES_DIR to a folder of face photos)")
    files = sorted(p for p in FACES.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})[:6]
    assert files
    for f in files:
        img = np.asarray(Image.open(f).convert("RGB"))
        face = detector.detect(img)
        assert face is not None, f"no face found in {f.name}"
        assert face.prob > 0.9


@pytest.fixture()
def run(tmp_path):
    return load_run(make_demo_run(tmp_path / "run"))


def test_fdfr_blank_counts_as_failure_real_face_as_found(run, detector):
    backend = FDFRBackend(detector=detector)
    backend.load()
    assert backend.available
    clean = [e for e in run.edits if e.condition == "clean"]
    washed = [e for e in run.edits if e.condition == "protected" and e.stem == "a"]
    assert all(backend.score_edit(e, run)["fdfr"] == 0.0 for e in clean)
    assert all(backend.score_edit(e, run)["fdfr"] == 1.0 for e in washed)
    blank = run.source_dir.parent / "blank.png"
    Image.new("RGB", (128, 128), (128, 128, 128)).save(blank)
    e = clean[0]
    from dataclasses import replace

    assert backend.score_edit(replace(e, output=blank), run)["fdfr"] == 1.0


def test_ism_image_vs_itself_is_one(run, detector, tmp_path):
    backend = FaceNetISMBackend(detector=detector, network=TinyEmbedder())
    backend.load()
    assert backend.available
    backend.prepare(run)
    assert set(backend.references) == {"a", "b"}
    from dataclasses import replace

    e = next(e for e in run.edits if e.stem == "a")
    same = backend.score_edit(replace(e, output=run.source_path("a")), run)["ism_facenet"]
    assert same == pytest.approx(1.0, abs=1e-6)
    # an edit of the same photo is close to, but not exactly, 1; a washed-out edit has no face -> no ISM
    edited = backend.score_edit(next(x for x in run.edits if x.condition == "clean" and x.stem == "a"), run)
    assert -1.0 <= edited["ism_facenet"] <= 1.0
    washed = next(x for x in run.edits if x.condition == "protected" and x.stem == "a")
    assert backend.score_edit(washed, run) == {}


def test_identity_map_pools_references(tmp_path, detector):
    run = load_run(make_demo_run(tmp_path / "run"), identity_map={"a": "person", "b": "person"})
    backend = FaceNetISMBackend(detector=detector, network=TinyEmbedder())
    backend.load()
    backend.prepare(run)
    assert list(backend.references) == ["person"]
    ea = backend._embedding(run.source_path("a"), run)
    eb = backend._embedding(run.source_path("b"), run)
    np.testing.assert_allclose(backend.references["person"], (ea + eb) / 2, atol=1e-12)


def test_facenet_without_weights_is_unavailable_with_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torchhome"))
    b = FaceNetISMBackend(EvalOptions(weights_dir=tmp_path / "w"))
    b.load()
    assert not b.available
    assert "20180402-114759-vggface2.pt" in b.unavailable_reason and str(tmp_path / "w") in b.unavailable_reason
    # a corrupt weights file is reported, not used and not a crash
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "20180402-114759-vggface2.pt").write_bytes(b"not a checkpoint")
    b = FaceNetISMBackend(EvalOptions(weights_dir=tmp_path / "w"))
    b.load()
    assert not b.available and "could not load" in b.unavailable_reason


def test_arcface_alignment_puts_landmarks_on_template(detector):
    img = data.astronaut()
    face = detector.detect(img)
    crop = align_face(img, face.landmarks)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8 and crop.std() > 10
    # detecting again on the aligned crop (upscaled) puts the eyes near the template's eyes
    big = np.asarray(Image.fromarray(crop).resize((224, 224), Image.BICUBIC))
    again = detector.detect(big)
    assert again is not None
    np.testing.assert_allclose(again.landmarks[:2] / 2, ARCFACE_TEMPLATE[:2], atol=6)


def test_arcface_with_stand_in_embedder(run, detector, tmp_path):
    missing = ArcFaceISMBackend(EvalOptions(weights_dir=tmp_path), detector=detector)
    missing.load()
    assert not missing.available and "ArcFace" in missing.unavailable_reason

    def embed(blob):
        assert blob.shape == (1, 3, 112, 112) and blob.dtype == np.float32
        return blob.reshape(1, 3, 16, 7, 16, 7).mean(axis=(3, 5)).reshape(1, -1)

    b = ArcFaceISMBackend(detector=detector, embedder=embed)
    b.load()
    b.prepare(run)
    from dataclasses import replace

    e = next(e for e in run.edits if e.stem == "b")
    assert b.score_edit(replace(e, output=run.source_path("b")), run)["ism_arcface"] == pytest.approx(1.0, abs=1e-9)


def test_injected_detector_object_is_used():
    class Fake:
        def detect(self, img, landmarks=True):
            return None, [None], None

    det = FaceDetector(mtcnn=Fake())
    assert det.load() and det.detect(np.zeros((8, 8, 3), np.uint8)) is None
