"""decontext: protect images from in-context diffusion-transformer editors, and measure the protection.

The library in a few names, imported on first use (``import decontext`` alone does not import torch)::

    import decontext

    editor = decontext.load_editor("toy")                       # or a hub id / folder of a real editor
    method = decontext.build_method("decontext")                # METHODS lists every method
    config = decontext.ProtectConfig(pgd=decontext.PGDConfig.for_method(method, preset="fast"))
    result = decontext.protect(editor, method, pixels, config, seed=0)   # pixels: (B, 3, H, W) in [0, 1]

docs/USAGE.md opens with a complete example.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> (module, attribute): resolved lazily by __getattr__ (PEP 562)
_EXPORTS = {
    # the module itself, which is callable as its function: the import system sets this name to the submodule
    # whenever it is imported, so the package offers the one object under it (decontext/protect.py, end)
    "protect": ("decontext.protect", None),
    "protect_files": ("decontext.protect", "protect_files"),
    "ProtectResult": ("decontext.protect", "ProtectResult"),
    "ImageRecord": ("decontext.protect", "ImageRecord"),
    "load_editor": ("decontext.editors", "load_editor"),
    "EDITORS": ("decontext.editors", "EDITORS"),
    "METHODS": ("decontext.methods", "METHODS"),
    "build_method": ("decontext.methods", "build_method"),
    "PGDConfig": ("decontext.config", "PGDConfig"),
    "ProtectConfig": ("decontext.config", "ProtectConfig"),
    "PRESETS": ("decontext.config", "PRESETS"),
    "load_protector": ("decontext.methods.protector", "load_protector"),
    "load_image": ("decontext.images", "load_image"),
    "save_protected": ("decontext.images", "save_protected"),
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'decontext' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = (
        importlib.import_module(module) if attribute is None else getattr(importlib.import_module(module), attribute)
    )
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
