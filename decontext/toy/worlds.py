"""The toy worlds by name (light: no torch import).

``v1`` (``decontext.toy.world``): identity is mostly colour (skin, eyes, hair colour) plus a hair style.
``v3`` (``decontext.toy.world3``): identity is shape (face outline, hair silhouette, eye geometry, nose);
colours are nuisance. Both modules have one interface (``SIZE``, ``ATTRIBUTES``, ``N_VALUES``,
``Identity``, ``eval_identities``, ``train_identities``, ``sample_scene``, ``apply_edit``,
``edit_region``, ``render``, ``labels``, ``importance``, ``EDITS``, ``BG_STATES``), and the same six edits,
so the prompt pool, the reader's edit heads and every consumer serve both. A toy editor's folder names
its world in ``decontext_toy.json`` (``"world"``; absent = ``v1``), a reader folder in its config.json.
"""

from __future__ import annotations

import importlib
from types import ModuleType

WORLDS = {"v1": "decontext.toy.world", "v3": "decontext.toy.world3"}
DEFAULT_WORLD = "v1"  # what a folder that names no world was trained on
EDIT_HEADS = ("hat", "glasses", "background", "smile")  # the reader's edit-state heads, after the identity heads


def get_world(name: str | None = None) -> ModuleType:
    """The world module named ``name`` (None = v1)."""
    key = name or DEFAULT_WORLD
    if key not in WORLDS:
        raise ValueError(f"unknown toy world {name!r}; expected one of {sorted(WORLDS)}")
    return importlib.import_module(WORLDS[key])


def heldout_scenes(world: ModuleType, count: int, seed: int) -> list:
    """The first ``count`` held-out identities of ``world`` (never trained on), one clean scene each with
    nuisance from ``seed + index``: the faces of ``decontext toy-faces``, the demo and the toy benches."""
    return [world.sample_scene(identity, seed=seed + i) for i, identity in enumerate(world.eval_identities()[:count])]


def reader_heads(world: ModuleType) -> dict[str, int]:
    """The attribute reader's heads for a world: its identity attributes, then the edit state."""
    heads = {attribute: world.N_VALUES[attribute] for attribute in world.ATTRIBUTES}
    heads.update(hat=2, glasses=2, background=len(world.BG_STATES), smile=2)
    return heads
