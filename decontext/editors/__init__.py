"""Editors: one module per model family. ``load_editor`` maps a ``--model`` value to an editor."""

from __future__ import annotations

from pathlib import Path

import torch

from .base import ContextLatents, Editor, Layout, PromptEmbeddings, resolve_blocks

REPO_ROOT = Path(__file__).resolve().parents[2]
TOY_EDITOR_DIR = REPO_ROOT / "data" / "toy_editor"


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r} (choose from auto, {', '.join(table)})")
    return table[dtype]


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_editor(model: str, device: str | None = "auto", dtype: str | torch.dtype = "auto", seed: int = 0, offload: bool = False, quantize: str | None = None):
    """``tiny`` (random weights, smoke path), ``toy`` (the trained embedded editor), or a
    FLUX.1-Kontext hub id / local diffusers folder."""
    from .flux_kontext import FluxKontextEditor

    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    if quantize is not None and model == "tiny":
        raise ValueError("--quantize loads a saved model (hub id, folder or 'toy'); the in-memory tiny model has no weights to quantise")
    if model == "tiny":
        if offload:
            raise ValueError("--offload is for real models on a GPU, not the tiny model")
        return FluxKontextEditor.tiny(seed=seed, device=device, dtype=dtype)
    if model == "toy":
        if not (TOY_EDITOR_DIR / "model_index.json").is_file():
            raise FileNotFoundError(f"{TOY_EDITOR_DIR}: the toy editor is missing (bash scripts/train_toy_editor.sh makes it)")
        editor = FluxKontextEditor.from_pretrained(TOY_EDITOR_DIR, dtype=dtype, device=device, offload=offload, quantize=quantize)
        editor.name = "toy"
        return editor
    return FluxKontextEditor.from_pretrained(model, dtype=dtype, device=device, offload=offload, quantize=quantize)


__all__ = ["ContextLatents", "Editor", "Layout", "PromptEmbeddings", "resolve_blocks", "load_editor", "resolve_dtype", "resolve_device"]
