"""What a ``--model`` value names, and how a pipeline folder is read: one place for every editor and tool.

A ``--model`` is ``tiny`` (built in memory by the family's editor), a toy by name (``toy``, ``toy-v2``,
...: a folder of the package's data), a local folder in diffusers' layout, or a hub id. A folder may
ship ``decontext_toy.json``: its own defaults (working resolution, sampler settings, prompt pool) and,
under ``shared_components``, the components it stores once with another folder
(``{"vae": "toy_editor", ...}``: the sibling folder that holds them); ``load_pipeline`` reads those
from there, so identical weights are kept once.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

SETTINGS = "decontext_toy.json"


def model_folder(model: str, family: str) -> Path | None:
    """The folder a ``--model`` names (a toy's, or an existing path), else None (``tiny`` or a hub id)."""
    from ..toy.names import is_toy_model, toy_editor_dir

    if model == "tiny":
        return None
    if is_toy_model(model, family):
        folder = toy_editor_dir(model, family)
        if not (folder / "model_index.json").is_file():
            raise FileNotFoundError(f"{folder}: the toy editor {model!r} is missing (docs/TOY.md says how to train it)")
        return folder
    path = Path(model)
    if path.exists():
        if path.is_dir() and not (path / "model_index.json").is_file():
            raise FileNotFoundError(f"{path}: not a diffusers pipeline folder (no model_index.json)")
        return path
    return None


def shipped_settings(folder: str | Path | None) -> dict:
    """A folder's ``decontext_toy.json`` (its own defaults), or {}."""
    if folder is None:
        return {}
    settings = Path(folder) / SETTINGS
    return json.loads(settings.read_text()) if settings.is_file() else {}


def shared_components(folder: Path, dtype=None) -> dict:
    """The components ``folder`` stores with another folder, loaded from there (as ``from_pretrained``
    keyword arguments), each with the class its model_index.json names."""
    shared = shipped_settings(folder).get("shared_components", {})
    if not shared:
        return {}
    index = json.loads((folder / "model_index.json").read_text())
    loaded = {}
    for name, home in shared.items():
        library, class_name = index[name]
        source = folder.parent / home / name
        if not source.is_dir():
            raise FileNotFoundError(f"{folder}: its {name} is stored in {source}, which is missing")
        component = getattr(importlib.import_module(library), class_name).from_pretrained(str(source))
        loaded[name] = component.to(dtype) if dtype is not None and hasattr(component, "to") else component
    return loaded


def component_dir(folder: str | Path, name: str) -> Path:
    """Where ``folder``'s component ``name`` is stored (its own subfolder, or the folder it shares it with)."""
    folder = Path(folder)
    home = shipped_settings(folder).get("shared_components", {}).get(name)
    return folder.parent / home / name if home else folder / name


def load_pipeline(pipeline_class, id_or_dir: str | Path, dtype=None, **kwargs):
    """``pipeline_class.from_pretrained`` for a folder (read locally, with its shared components) or a hub id."""
    path = Path(id_or_dir)
    local = path.exists()
    if local:
        kwargs = {**shared_components(path, dtype), **kwargs}
    if dtype is not None:
        kwargs["dtype"] = dtype
    return pipeline_class.from_pretrained(str(id_or_dir), local_files_only=local, **kwargs)
