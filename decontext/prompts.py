"""Edit-prompt pools.

A pool file is plain text: one prompt per line, ``#`` starts a comment line, and a line ``[name]``
starts a category (prompts before any header belong to the category ``default``). The default pool
(``data/prompts/edit_prompts.txt``) follows the six categories of the DeContext paper.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .assets import data_dir

DEFAULT_POOL = data_dir() / "prompts" / "edit_prompts.txt"
_HEADER = re.compile(r"^\[([^\]]+)\]$")


@dataclass(frozen=True)
class Prompt:
    text: str
    category: str
    index: int  # position in the pool, stable across runs: it names output folders


class PromptFileError(ValueError):
    pass


def load_prompts(path: str | Path | None = None) -> list[Prompt]:
    """Read a prompt pool. Raises PromptFileError naming the file if it is missing or empty."""
    from .assets import data_path

    path = data_path(path) if path is not None else DEFAULT_POOL
    if not path.is_file():
        raise PromptFileError(f"{path}: prompt file not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise PromptFileError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    category = "default"
    prompts: list[Prompt] = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        header = _HEADER.match(line)
        if header:
            category = header.group(1).strip()
            continue
        prompts.append(Prompt(line, category, len(prompts)))
    if not prompts:
        raise PromptFileError(f"{path}: contains no prompts (one prompt per line expected)")
    return prompts


def select_prompts(pool: list[Prompt], indices: list[int] | None) -> list[Prompt]:
    """Pick prompts by pool index, with a clear error for an index the pool does not have."""
    if indices is None:
        return list(pool)
    bad = [i for i in indices if not 0 <= i < len(pool)]
    if bad:
        raise PromptFileError(
            f"prompt index {bad[0]} is out of range: the pool has {len(pool)} prompts (0..{len(pool) - 1})"
        )
    return [pool[i] for i in indices]
