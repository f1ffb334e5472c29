"""Where the files shipped with decontext live: the prompt pools, the toy editors and the toy reader.

In a source checkout they are the repository's ``data/``; in an installed wheel, ``decontext/data``
(pyproject maps one onto the other). Nothing else finds them, so an install that is not editable works
from any folder.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir() -> Path:
    for candidate in (_PACKAGE / "data", _PACKAGE.parent / "data"):
        if (candidate / "prompts").is_dir():
            return candidate
    raise FileNotFoundError(
        f"decontext's data files (prompt pools, toy editors) are missing beside {_PACKAGE}: reinstall the package"
    )


def data_path(value: str | Path) -> Path:
    """A path as shipped settings write it (``data/prompts/toy_prompts.txt``: relative to the data folder)
    or any other path (as given)."""
    path = Path(value)
    if not path.is_absolute() and path.parts and path.parts[0] == "data":
        return data_dir().joinpath(*path.parts[1:])
    return path


def portable(path: str | Path) -> str:
    """A path to record in a file that travels (a trained protector's config): ``data/...`` for a shipped
    file (``data_path`` reads it back in a checkout or an installed wheel), else the path as given."""
    path = Path(path)
    try:
        return str(Path("data") / path.resolve().relative_to(data_dir().resolve()))
    except ValueError:
        return str(path)
