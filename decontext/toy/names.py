"""The trained toy editors by name (light: no torch / diffusers import, so editors can resolve names).

``--model toy`` is the embedded default; every trained version stays loadable by its own name so the
numbers measured on it remain reproducible (docs/TOY.md, docs/EVIDENCE.md).
"""

from __future__ import annotations

from pathlib import Path

from ..assets import data_dir, data_path

DATA = data_dir()

TOY_EDITORS = {
    "toy-v1": DATA / "toy_editor",  # the first toy (2026-11-23): reads identity from context in the late steps
    "toy-v2": DATA / "toy_editor_v2",  # FLUX-like training (timestep density, text-to-image base); no built-in bias
    "toy-v2-early": DATA / "toy_editor_v2_early",  # toy-v2 + an EXPLICIT bias: context only informative at high noise
    "toy-v2-fine": DATA
    / "toy_editor_v2_fine",  # toy-v2 with a 2x VAE: 256 tokens per image; identity is no longer read late
    "toy-v3": DATA / "toy_editor_v3",  # world v3 (identity is shape), toy-v2-fine's recipe; its own VAE and reader
    "toy-ip2p": DATA / "toy_ip2p",  # an InstructPix2Pix (UNet) on the same world: the second family, for transfer
}
TOY_FAMILIES = {"toy-ip2p": "instruct_pix2pix"}  # editor family of each toy; the others are flux_kontext
TOY_DEFAULTS = {"flux_kontext": "toy-v1", "instruct_pix2pix": "toy-ip2p"}  # what ``--model toy`` loads per family
TOY_DEFAULT = TOY_DEFAULTS["flux_kontext"]  # the embedded default (the README's main command)
READER_DIR = (
    DATA / "toy_reader"
)  # world v1's reader, the instrument of every v1 editor; a v3 editor names its own in decontext_toy.json


def toy_family(name: str) -> str:
    """Editor family (a key of decontext.editors.EDITORS) of a toy editor name."""
    return TOY_FAMILIES.get(name, "flux_kontext")


def toy_versions(family: str = "flux_kontext") -> list[str]:
    """The shipped toy editors of one family."""
    return [name for name in TOY_EDITORS if toy_family(name) == family]


def is_toy_model(name: str | None, family: str | None = None) -> bool:
    """``toy`` or the name of a shipped toy editor (``toy-v1``, ``toy-ip2p``, ...), of ``family`` if given."""
    if name == "toy":
        return family is None or family in TOY_DEFAULTS
    return name in TOY_EDITORS and (family is None or toy_family(name) == family)


def toy_editor_dir(name: str = "toy", family: str = "flux_kontext") -> Path:
    """Folder of a toy editor; ``toy`` = the family's default (``TOY_DEFAULTS``)."""
    key = TOY_DEFAULTS.get(family, TOY_DEFAULT) if name == "toy" else name
    if key not in TOY_EDITORS:
        raise ValueError(
            f"unknown toy editor {name!r}: 'toy' (= {TOY_DEFAULTS.get(family, TOY_DEFAULT)}) "
            f"or one of {sorted(TOY_EDITORS)}"
        )
    return TOY_EDITORS[key]


def repo_path(value: str | Path | None, default: Path) -> Path:
    """A path from a shipped settings file (``data/...`` is in the package's data folder), or ``default``."""
    return data_path(value) if value else default


def toy_prompts(name: str = "toy", family: str = "flux_kontext") -> Path:
    """The edit-prompt pool a toy editor was trained on (its decontext_toy.json ``prompts_file``)."""
    import json

    settings = toy_editor_dir(name, family) / "decontext_toy.json"
    shipped = json.loads(settings.read_text()) if settings.is_file() else {}
    return repo_path(shipped.get("prompts_file"), DATA / "prompts" / "toy_prompts.txt")


def toy_settings(model: str | Path = "toy", family: str = "flux_kontext") -> dict:
    """A toy editor's ``decontext_toy.json`` (by name, or a trained editor folder); {} when it has none."""
    import json

    folder = toy_editor_dir(str(model), family) if is_toy_model(str(model)) else Path(model)
    settings = folder / "decontext_toy.json"
    return json.loads(settings.read_text()) if settings.is_file() else {}


def toy_world_name(model: str | Path = "toy", family: str = "flux_kontext") -> str:
    """The world a toy editor was trained on (``decontext.toy.worlds``): its settings' ``world``, else v1."""
    from .worlds import DEFAULT_WORLD

    return toy_settings(model, family).get("world", DEFAULT_WORLD)


def toy_reader_dir(model: str | Path = "toy", family: str = "flux_kontext") -> Path:
    """The attribute reader that measures a toy editor: the one its settings name, else v1's."""
    return repo_path(toy_settings(model, family).get("reader"), READER_DIR)
