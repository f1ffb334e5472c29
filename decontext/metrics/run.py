"""Reading a run folder (docs/RUN_LAYOUT.md) for evaluation: inputs, edits, images.

Nothing here writes. Problems (a missing index, an unreadable image) are collected in
``RunData.errors`` by name instead of raised, so that the rest of the run is still scored.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

CLEAN = "clean"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_SEED_FILE = re.compile(r"^seed(-?\d+)$")


class ImageLoadError(Exception):
    """An image that could not be read; ``str()`` names the file and the reason."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class RunInfo:
    """What run.json says (an empty dict when there is none)."""

    path: Path | None
    raw: dict

    @property
    def model(self) -> str:
        return str(self.raw.get("model", "unknown"))

    @property
    def editor(self) -> str:
        return str(self.raw.get("editor", "unknown"))


@dataclass(frozen=True)
class EditRecord:
    condition: str
    stem: str
    prompt_index: int
    prompt: str
    category: str
    seed: int
    output: Path  # absolute
    input: Path  # absolute: the image the editor saw

    @property
    def pair_key(self) -> tuple[str, int, int]:
        """Edits of different conditions with the same key are compared with each other."""
        return (self.stem, self.prompt_index, self.seed)


@dataclass
class RunData:
    info: RunInfo
    source_dir: Path
    input_dirs: dict[str, Path]  # condition -> folder of that condition's input images
    edits: list[EditRecord]
    identity_of: dict[str, str] = field(default_factory=dict)  # stem -> identity (default: the stem)
    errors: list[str] = field(default_factory=list)
    cache_size: int = 32

    def __post_init__(self) -> None:
        self._cache: OrderedDict[Path, np.ndarray] = OrderedDict()
        self._by_key: dict[tuple[str, tuple[str, int, int]], EditRecord] = {
            (e.condition, e.pair_key): e for e in self.edits
        }

    # -- structure --------------------------------------------------------------------------------
    @property
    def conditions(self) -> list[str]:
        """Conditions with edits, ``clean`` first, plus protected conditions that only have inputs."""
        names = {e.condition for e in self.edits} | set(self.input_dirs)
        return sorted(names, key=lambda c: (c != CLEAN, c))

    @property
    def stems(self) -> list[str]:
        found = {e.stem for e in self.edits} | {p.stem for p in _images_in(self.source_dir)}
        return sorted(found)

    def identity(self, stem: str) -> str:
        return self.identity_of.get(stem, stem)

    def source_path(self, stem: str) -> Path | None:
        return _find_image(self.source_dir, stem)

    def input_path(self, condition: str, stem: str) -> Path | None:
        folder = self.source_dir if condition == CLEAN else self.input_dirs.get(condition)
        return _find_image(folder, stem) if folder is not None else None

    def counterpart(self, edit: EditRecord, condition: str = CLEAN) -> EditRecord | None:
        """The edit of another condition with the same stem, prompt and seed."""
        return self._by_key.get((condition, edit.pair_key))

    # -- images -----------------------------------------------------------------------------------
    def image(self, path: Path | None) -> np.ndarray:
        """RGB uint8 array (H, W, 3); raises ImageLoadError naming the file."""
        if path is None:
            raise ImageLoadError(Path("<missing>"), "no such image")
        path = Path(path)
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        arr = load_rgb(path)
        self._cache[path] = arr
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return arr

    def note_error(self, message: str) -> None:
        if message not in self.errors:
            self.errors.append(message)


def load_rgb(path: Path) -> np.ndarray:
    if not path.is_file():
        raise ImageLoadError(path, "file not found")
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except Exception as exc:  # PIL raises many types for broken files
        raise ImageLoadError(path, f"unreadable image ({type(exc).__name__}: {exc})") from None


def _images_in(folder: Path | None) -> list[Path]:
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _find_image(folder: Path | None, stem: str) -> Path | None:
    if folder is None:
        return None
    for suffix in IMAGE_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.exists():
            return candidate
    return None


# -- loading --------------------------------------------------------------------------------------

def _prompt_lookup() -> dict[int, tuple[str, str]]:
    try:
        from decontext.prompts import load_prompts

        return {p.index: (p.text, p.category) for p in load_prompts()}
    except Exception:
        return {}


def _edits_from_index(condition: str, edits_dir: Path, base: Path, input_dir: Path | None,
                      errors: list[str]) -> list[EditRecord] | None:
    index = edits_dir / "index.json"
    if not index.is_file():
        return None
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        records = data["edits"] if isinstance(data, dict) else data
    except Exception as exc:
        errors.append(f"{index}: unreadable index ({type(exc).__name__}: {exc}); scanning the folder instead")
        return None
    edits: list[EditRecord] = []
    for i, rec in enumerate(records):
        try:
            stem = str(rec["image"])
            pidx = int(rec["prompt_index"])
            seed = int(rec["seed"])
            # The layout fixes where an edit lives; index paths are relative to the run folder.
            output = base / rec["output"] if rec.get("output") else None
            if output is None or not output.exists():
                output = edits_dir / stem / str(pidx) / f"seed{seed}.png"
            inp = base / rec["input"] if rec.get("input") else None
            if inp is None or not inp.exists():
                inp = _find_image(input_dir, stem) or (input_dir / f"{stem}.png" if input_dir else Path(stem))
            edits.append(EditRecord(condition, stem, pidx, str(rec.get("prompt", "")),
                                    str(rec.get("category", "default")), seed, output, inp))
        except (KeyError, TypeError, ValueError) as exc:
            errors.append(f"{index}: record {i} is malformed ({type(exc).__name__}: {exc}); skipped")
    return edits


def _edits_from_tree(condition: str, edits_dir: Path, input_dir: Path | None) -> list[EditRecord]:
    prompts = _prompt_lookup()
    edits: list[EditRecord] = []
    for stem_dir in sorted(p for p in edits_dir.iterdir() if p.is_dir()):
        for pdir in sorted((p for p in stem_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
            for f in sorted(pdir.iterdir()):
                m = _SEED_FILE.match(f.stem)
                if not m or f.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                pidx = int(pdir.name)
                text, cat = prompts.get(pidx, ("", "default"))
                inp = _find_image(input_dir, stem_dir.name) or (input_dir / f"{stem_dir.name}.png" if input_dir else Path(stem_dir.name))
                edits.append(EditRecord(condition, stem_dir.name, pidx, text, cat, int(m.group(1)), f, inp))
    return edits


def _load_condition_edits(condition: str, edits_dir: Path, base: Path, input_dir: Path | None,
                          errors: list[str]) -> list[EditRecord]:
    edits = _edits_from_index(condition, edits_dir, base, input_dir, errors)
    if edits is None:
        edits = _edits_from_tree(condition, edits_dir, input_dir)
    return edits


def load_identity_map(path: Path) -> dict[str, str]:
    """A JSON object {stem: identity} or a CSV/TSV with two columns stem,identity (header optional)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: identity map must be a JSON object {{stem: identity}}")
        return {str(k): str(v) for k, v in data.items()}
    mapping: dict[str, str] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in re.split(r"[,\t]", line) if p.strip()]
        if len(parts) >= 2 and parts[0].lower() not in {"stem", "image"}:
            mapping[parts[0]] = parts[1]
    return mapping


def load_run(run_dir: Path, identity_map: dict[str, str] | None = None) -> RunData:
    """Read ``runs/<name>/`` following docs/RUN_LAYOUT.md."""
    from decontext.purify import condition_input_dir

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: run folder not found")
    errors: list[str] = []
    raw: dict = {}
    rj = run_dir / "run.json"
    if rj.is_file():
        try:
            raw = json.loads(rj.read_text(encoding="utf-8"))
        except Exception as exc:
            errors.append(f"{rj}: unreadable ({type(exc).__name__}: {exc})")
    source = run_dir / "source"
    input_dirs: dict[str, Path] = {}
    edits: list[EditRecord] = []
    edits_root = run_dir / "edits"
    if edits_root.is_dir():
        for cdir in sorted(p for p in edits_root.iterdir() if p.is_dir()):
            cond = cdir.name
            inp = source if cond == CLEAN else condition_input_dir(run_dir, cond)  # <cond>@<breaker>: purified/<breaker>/<cond>/
            if cond != CLEAN:
                input_dirs[cond] = inp
                if not inp.is_dir():
                    errors.append(f"{inp}: input folder of condition '{cond}' not found")
            edits += _load_condition_edits(cond, cdir, run_dir, inp, errors)
    else:
        errors.append(f"{edits_root}: no edits folder; only input images are scored")
    # protected/ with no edits still gets its imperceptibility scored
    if (run_dir / "protected").is_dir() and "protected" not in input_dirs:
        input_dirs["protected"] = run_dir / "protected"
    return RunData(RunInfo(rj if rj.is_file() else None, raw), source, input_dirs, edits,
                   identity_map or {}, errors)


def load_folders(source: Path, protected: Path | None = None, edits_clean: Path | None = None,
                 edits_protected: Path | None = None, identity_map: dict[str, str] | None = None,
                 run_json: Path | None = None) -> RunData:
    """Explicit folders instead of a run folder (conditions ``clean`` and ``protected``)."""
    errors: list[str] = []
    raw: dict = {}
    if run_json is not None and run_json.is_file():
        raw = json.loads(run_json.read_text(encoding="utf-8"))
    input_dirs: dict[str, Path] = {}
    edits: list[EditRecord] = []
    if protected is not None:
        input_dirs["protected"] = Path(protected)
    for cond, folder, inp in ((CLEAN, edits_clean, source), ("protected", edits_protected, protected)):
        if folder is None:
            continue
        folder = Path(folder)
        if not folder.is_dir():
            errors.append(f"{folder}: edits folder of condition '{cond}' not found")
            continue
        # index.json paths are relative to a run folder two levels up (runs/<name>/edits/<cond>)
        edits += _load_condition_edits(cond, folder, folder.parent.parent, Path(inp) if inp else None, errors)
    return RunData(RunInfo(run_json, raw), Path(source), input_dirs, edits, identity_map or {}, errors)
