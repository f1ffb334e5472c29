"""Editors: one module per model family, registered here by one line each.

``load_editor(model, family)`` builds an editor from a ``--model`` value; the CLIs name their family
(``attack/attack_kontext.py`` -> ``flux_kontext``, ``attack/attack_step1x.py`` -> ``step1x_edit``,
``attack/attack_ip2p.py`` -> ``instruct_pix2pix``, ``attack/attack_flux2.py`` -> ``flux2``,
``attack/attack_qwen_edit.py`` -> ``qwen_image_edit``).
"""

from __future__ import annotations

import importlib

import torch

from .base import Condition, Editor, Layout, resolve_blocks

# family -> "module:class". Adding an editor = its module + one line here.
EDITORS = {
    "flux_kontext": "decontext.editors.flux_kontext:FluxKontextEditor",
    "step1x_edit": "decontext.editors.step1x_edit:Step1XEditor",
    "instruct_pix2pix": "decontext.editors.instruct_pix2pix:InstructPix2PixEditor",
    "flux2": "decontext.editors.flux2:Flux2Editor",
    "qwen_image_edit": "decontext.editors.qwen_image_edit:QwenImageEditEditor",
}


def editor_class(family: str) -> type:
    if family not in EDITORS:
        raise ValueError(f"unknown editor family {family!r} (choose from {', '.join(EDITORS)})")
    module, _, name = EDITORS[family].partition(":")
    return getattr(importlib.import_module(module), name)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r} (choose from auto, {', '.join(table)})")
    return table[dtype]


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_editor(model: str, family: str = "flux_kontext", device: str | torch.device | None = "auto", dtype: str | torch.dtype = "auto", **options) -> Editor:
    """An editor of ``family`` for a ``--model`` value (``tiny``, a hub id, a folder, ...); ``options``
    are the family's own (see its ``load``)."""
    cls = editor_class(family)
    device = resolve_device(device)
    return cls.load(model, device=device, dtype=resolve_dtype(dtype, device), **options)


__all__ = ["Condition", "EDITORS", "Editor", "Layout", "editor_class", "load_editor", "resolve_blocks", "resolve_dtype", "resolve_device"]
