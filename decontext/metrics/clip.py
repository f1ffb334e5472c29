"""CLIP metrics (CLIP ViT-B/32 through transformers' CLIPModel).

- ``clip_i``: cosine of the CLIP image embeddings of the clean source image and the edited output.
  Direction: *lower* = better protection (the output resembles the photo less).
- ``clip_s``: directional CLIP similarity: cosine between the image change
  ``E_img(edit) - E_img(source)`` and the text change ``E_txt(prompt) - E_txt(neutral)``, where the
  neutral text is ``--clip-neutral-text`` ("a photo of a person"). It measures how far the edit went
  in the direction the instruction asks. Direction: *lower* = better protection (the editor failed
  to carry out the edit on the protected photo). Undefined when the prompt text is unknown.

Both use the clean ``source/<stem>`` image as reference for every condition, so that clean and
protected conditions are compared against the same photo.

Weights: ``--clip-model`` (a local folder, or a hub id looked up in the Hugging Face cache only,
never downloaded; default ``openai/clip-vit-base-patch32``), or ``<weights-dir>/clip-vit-base-patch32``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from decontext.metrics.base import EvalOptions, MetricBackend, MetricSpec, register
from decontext.metrics.identity import cosine
from decontext.metrics.run import EditRecord, RunData


class CLIPEncoder(Protocol):
    def embed_images(self, images: list[np.ndarray]) -> np.ndarray: ...  # (N, D)

    def embed_texts(self, texts: list[str]) -> np.ndarray: ...  # (N, D)


def _features(out) -> torch.Tensor:
    """transformers 5 returns a model output whose pooler_output is the projected embedding."""
    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output


class HFCLIPEncoder:
    """CLIPModel + its image processor and tokenizer from a folder or the local HF cache."""

    def __init__(self, source: str | Path, device: str = "cpu") -> None:
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        kwargs = {"local_files_only": True}
        self.device = device
        self.model = CLIPModel.from_pretrained(str(source), **kwargs).eval().to(device)
        self.processor = AutoImageProcessor.from_pretrained(str(source), **kwargs)
        self.tokenizer = AutoTokenizer.from_pretrained(str(source), **kwargs)

    def embed_images(self, images: list[np.ndarray]) -> np.ndarray:
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)
        with torch.no_grad():
            return _features(self.model.get_image_features(pixel_values=pixels)).float().cpu().numpy()

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        tok = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(self.device)
        with torch.no_grad():
            out = self.model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
        return _features(out).float().cpu().numpy()


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64).ravel()
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


@register("clip", order=50)
class CLIPBackend(MetricBackend):
    metrics = (
        MetricSpec(
            "clip_i", "lower", "edit", "CLIP image-embedding cosine, clean source vs edit; lower = better protection"
        ),
        MetricSpec(
            "clip_s",
            "lower",
            "edit",
            "directional CLIP similarity of the edit vs the prompt; lower = the edit was carried out less",
        ),
    )

    def __init__(self, options: EvalOptions | None = None, encoder: CLIPEncoder | None = None) -> None:
        """``encoder`` (tests only): a stand-in with ``embed_images`` / ``embed_texts``."""
        super().__init__(options)
        self.encoder = encoder
        self._img_cache: dict[Path, np.ndarray] = {}
        self._txt_cache: dict[str, np.ndarray] = {}

    def load(self) -> None:
        if self.encoder is not None:
            self._ok()
            return
        candidates: list[str] = []
        problems: list[str] = []
        if self.options.weights_dir is not None:
            local = Path(self.options.weights_dir) / Path(self.options.clip_model).name
            if local.is_dir():
                candidates.append(str(local))
            else:
                problems.append(f"{local}: no such folder")
        candidates.append(self.options.clip_model)  # a folder, or a hub id looked up in the local cache only
        for cand in candidates:
            try:
                self.encoder = HFCLIPEncoder(cand, self.options.device)
            except Exception as exc:
                first = (str(exc).splitlines() or [""])[0]
                problems.append(f"{cand}: {type(exc).__name__}: {first[:200]}")
                continue
            self._ok()
            return
        self._unavailable(
            "CLIP weights not found offline ("
            + "; ".join(problems)
            + "). Pass --clip-model DIR or put the model in the Hugging Face cache (see docs/EVALUATION.md)."
        )

    def _image(self, path: Path, run: RunData) -> np.ndarray:
        if path not in self._img_cache:
            self._img_cache[path] = _unit(self.encoder.embed_images([run.image(path)])[0])
        return self._img_cache[path]

    def _text(self, text: str) -> np.ndarray:
        if text not in self._txt_cache:
            self._txt_cache[text] = _unit(self.encoder.embed_texts([text])[0])
        return self._txt_cache[text]

    def score_edit(self, edit: EditRecord, run: RunData) -> dict[str, float]:
        src_path = run.source_path(edit.stem)
        if src_path is None:
            return {}
        src = self._image(src_path, run)
        out = self._image(edit.output, run)
        values = {"clip_i": cosine(src, out)}
        if edit.prompt:
            text_dir = self._text(edit.prompt) - self._text(self.options.clip_neutral_text)
            values["clip_s"] = cosine(out - src, text_dir)
        return values
