"""Write held-out toy faces as PNG files (the inputs of scripts/demo.sh and toy experiments).

    python -m decontext toy-faces --count 20 --out runs/demo/source

Faces are the first ``count`` held-out identities (never trained on) of a toy world (default: the world
of the default toy editor, ``--model toy``), each with nuisance drawn from ``seed + index``; files are
named ``id<identity index>.png``. Existing files are kept.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from decontext.images import atomic_save
from decontext.toy.worlds import get_world, heldout_scenes


def export_faces(out: str | Path, count: int = 20, seed: int = 42, world_name: str | None = None) -> list[Path]:
    if world_name is None:
        from decontext.toy.names import toy_world_name

        world_name = toy_world_name("toy")
    world = get_world(world_name)
    held_out = len(world.eval_identities())
    if not 1 <= count <= held_out:
        raise ValueError(
            f"count must be between 1 and {held_out} (world {world.NAME}'s held-out identities), got {count}"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for scene in heldout_scenes(world, count, seed):
        path = out / f"id{scene.identity.index:03d}.png"
        if not path.exists():
            atomic_save(Image.fromarray(world.render(scene)), path, format="PNG")
        paths.append(path)
    return paths
