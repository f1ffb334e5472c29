"""Where a trained protector lives and what it says of itself, without torch: the command lines check a
protector against the editor family, the method and the budget before anything heavy loads.

A protector is a folder with ``protector.json`` (architecture, eps, editor family and model, method and
options, working size, recipe, data digest, validation) and ``protector.safetensors``; shipped ones are
``data/protectors/<name>/`` and load by name.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

CONFIG_FILE, WEIGHTS_FILE = "protector.json", "protector.safetensors"


def protector_folder(name_or_path: str | Path) -> Path:
    """A protector's folder: a shipped one by name (``toy-decontext``), or a folder holding protector.json."""
    from ..assets import data_dir

    path = Path(name_or_path)
    if (path / CONFIG_FILE).is_file():
        return path
    shipped = data_dir() / "protectors" / str(name_or_path)
    if "/" not in str(name_or_path) and (shipped / CONFIG_FILE).is_file():
        return shipped
    names = sorted(p.name for p in (data_dir() / "protectors").glob("*") if (p / CONFIG_FILE).is_file())
    raise FileNotFoundError(
        f"no protector {str(name_or_path)!r}: neither a folder with {CONFIG_FILE} nor a shipped one "
        f"({', '.join(names) or 'none shipped'})"
    )


def read_config(name_or_path: str | Path) -> dict:
    """protector.json of a protector (no torch: the command lines check it before loading anything)."""
    folder = protector_folder(name_or_path)
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder / CONFIG_FILE}: unreadable protector config ({exc})") from None
    for key in ("architecture", "eps", "editor", "method"):
        if key not in config:
            raise ValueError(f"{folder / CONFIG_FILE}: not a protector config (no {key!r})")
    return config


def weights_digest(name_or_path: str | Path) -> str:
    """SHA-256 of a protector's weights file (what manifests record)."""
    return hashlib.sha256((protector_folder(name_or_path) / WEIGHTS_FILE).read_bytes()).hexdigest()


def shipped_protectors() -> list[str]:
    from ..assets import data_dir

    return sorted(p.name for p in (data_dir() / "protectors").glob("*") if (p / CONFIG_FILE).is_file())


def transfer_problems(config: dict, family: str, method: str | None, eps: float) -> list[str]:
    """Why a protector trained as ``config`` does not fit a run of ``method`` (None: --method amortized,
    which uses whatever it was trained on) at ``eps`` against ``family``: another family, another method, a
    larger budget than the run allows. Empty when it fits."""
    problems = []
    trained_family = config["editor"].get("family")
    if trained_family != family:
        problems.append(f"it was trained against the {trained_family} editor, not {family}")
    trained_method = config["method"].get("method")
    if method is not None and trained_method != method:
        problems.append(f"it was trained with the {trained_method} method, not {method}")
    if float(config["eps"]) > float(eps) + 1e-9:
        problems.append(
            f"it was trained for eps {float(config['eps']):g}/255, larger than this run's {float(eps):g}/255"
        )
    return problems
