"""Cells on a real editor (FLUX.1-Kontext; ``--model tiny`` for a smoke test) and a folder of face photos.

The same cells as on the toy (``cells.ToyEnvironment``: ``protect()``, the editor's own ``edit``, the same
attackers and cache); only the judge differs: the paper's identity score ISM, the cosine between the
face embeddings (ArcFace if its model is found, else FaceNet: ``decontext.metrics``) of each edit and of
its source photo, and its face detection failure (FDFR, MTCNN). ``identity`` in the records is ISM (NaN
where no face is found or no embedding network is available: the report says how many values it had);
``edit_success`` is 1 - FDFR (a face is still there to edit). Working size: the editor's own (64 px on
``tiny``, the pipeline's choice on real weights).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .cells import Cache, ToyEnvironment
from .spec import REAL_EDITORS, Spec


class FaceJudge:
    """MTCNN for faces; the first available embedding network of ArcFace and FaceNet for ISM."""

    def __init__(self, device: str = "cpu"):
        from ..metrics.arcface import ArcFaceISMBackend
        from ..metrics.base import EvalOptions
        from ..metrics.identity import FaceNetISMBackend, shared_detector

        self.detector = shared_detector(device)
        self.detector.load()
        self.embedder = None
        self.reasons = []
        for backend in (ArcFaceISMBackend(EvalOptions(device=device)), FaceNetISMBackend(EvalOptions(device=device))):
            backend.load()
            if backend.available:
                self.embedder = backend
                break
            self.reasons.append(f"{backend.name}: {backend.unavailable_reason}")

    def embedding(self, image: np.ndarray) -> np.ndarray | None:
        face = self.detector.detect(image)
        if face is None or self.embedder is None:
            return None
        emb = np.asarray(self.embedder.embed_face(image, face), dtype=np.float64).ravel()
        norm = np.linalg.norm(emb)
        return emb / norm if norm > 0 else emb

    def has_face(self, image: np.ndarray) -> bool:
        return self.detector.detect(image) is not None


class RealEnvironment(ToyEnvironment):
    def __init__(self, spec: Spec, editor_name: str, cache: Cache, model: str | None = None, log=print):
        from PIL import Image

        from ..editors import load_editor
        from ..images import list_images, load_image

        self.spec, self.cache, self.log = spec, cache, log
        family, default_model = REAL_EDITORS[editor_name]
        self.name = editor_name + (f"-{model}" if model else "")
        self.editor = load_editor(model or default_model, family)
        folder = Path(spec.identities["path"])
        photos = list_images(folder)[: int(spec.identities.get("count", 20))]
        size = int(spec.identities.get("size", 512))
        self.identities = [p.stem for p in photos]
        self.sources = np.stack(
            [np.asarray(Image.fromarray(load_image(p).rgb8).resize((size, size), Image.BICUBIC)) for p in photos]
        )
        self.prompts = list(spec.edits["prompts"])
        self.edit_names = list(self.prompts)
        self.attack_prompts = None  # each method's own default prompt pool
        self.settings = {
            "steps": int(spec.edits.get("steps", self.editor.recommended.get("num_inference_steps", 28))),
            "guidance": float(spec.edits.get("guidance", self.editor.recommended.get("guidance_scale", 2.5))),
        }
        self.resolution = getattr(self.editor, "default_resolution", "auto")
        from ..attackers import parse_attacker

        instructions = [
            a.params["instruction"] for a in map(parse_attacker, spec.attackers) if a.kind == "editor_clean"
        ]
        self.editor.prepare(self.prompts + instructions, release=False)  # every text the edits will need
        self.world = None
        self.edit_seed = int(spec.edits.get("seed", spec.seed))
        self.methods = {}
        self.judge = FaceJudge(str(getattr(self.editor, "device", "cpu")))
        for reason in self.judge.reasons:
            log(f"identity score: {reason}")

    def _score(self, images: np.ndarray) -> dict[str, np.ndarray]:
        from PIL import Image

        references = [self.judge.embedding(im) for im in self.sources]
        identity = np.full((len(self.prompts), len(images)), np.nan)
        success = np.zeros_like(identity)
        pils = [Image.fromarray(im) for im in images]
        seeds = [self.edit_seed + i for i in range(len(images))]
        for e, prompt in enumerate(self.prompts):
            edits = self.editor.edit(pils, [prompt] * len(pils), seeds, resolution=self.resolution, **self.settings)
            for i, edited in enumerate(edits):
                array = np.asarray(edited.convert("RGB"))
                success[e, i] = float(self.judge.has_face(array))
                emb = self.judge.embedding(array)
                if emb is not None and references[i] is not None:
                    identity[e, i] = float(np.dot(emb, references[i]))
        return {"identity": identity, "edit_success": success}
