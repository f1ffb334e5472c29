"""Reading a run folder (docs/RUN_LAYOUT.md) for evaluation: inputs, edits, images.

Nothing here writes. Problems (a missing index, an unreadable image) are collected in
``RunData.errors`` by name instead of raised, so that the rest of the run is still scored.

Nothing read from a run folder's files (index.json, run.json) is trusted as a path: an index path
must be relative and stay inside the run folder (no absolute path, no ``..``), a stem must be a plain
file name, and an image of the run is read only if its real location (symlinks resolved) is inside the
run folder or inside one of the run's layout folders (``source/``, ``edits/<condition>/``... may
themselves be symlinks, as a sweep's points share ``source/`` and ``edits/clean/``; a file or a
subfolder inside them may not lead elsewhere). Anything else is reported as a problem and not read.
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
from PIL import Image

# ImageLoadError: re-exported
from decontext.images import IMAGE_SUFFIXES, ImageLoadError, check_declared_size  # noqa: F401

CLEAN = "clean"
_SEED_FILE = re.compile(r"^seed(-?\d+)$", re.ASCII)
_DIGITS = re.compile(r"\d+", re.ASCII)


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
    # The folders the run was read from (absolute, symlinks NOT resolved) and the real folders (resolved)
    # their images may come from. An image path inside ``folders`` (one the run's files led to) is read
    # only if its real location is inside ``roots``: a symlink in the run cannot lead out of it. Paths
    # outside ``folders`` were given by the calling code, not read from the run, and are not restricted.
    folders: tuple[Path, ...] = ()
    roots: tuple[Path, ...] = ()

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
        if self.roots and any(_lexically_inside(path, f) for f in self.folders) and not _within(path, self.roots):
            raise ImageLoadError(path, "leads outside the run folder (a symlink); refused, not read")
        arr = load_rgb(path)
        self._cache[path] = arr
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return arr

    def protection(self, condition: str) -> str | None:
        """How a condition's inputs were protected, in words, from the manifest ``decontext attack`` left in
        their folder (``decontext, fast preset, 200 steps, eps 12.75/255``); None without one."""
        folder = self.input_dirs.get(condition.partition("@")[0]) if condition != CLEAN else None
        return describe_protection(folder / "manifest.json") if folder is not None else None

    def note_error(self, message: str) -> None:
        if message not in self.errors:
            self.errors.append(message)


def load_rgb(path: Path) -> np.ndarray:
    """RGB uint8 array of an image file; any failure is an ImageLoadError naming the file.

    An image that declares more pixels than Pillow's decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``) is refused from its header, before anything is decoded.
    """
    path = Path(path)
    if not path.is_file():  # a FIFO or a device named like an image is never opened (it could block)
        raise ImageLoadError(path, "not a regular file" if path.exists() else "file not found")
    try:
        with Image.open(path) as im:
            check_declared_size(path, im.size)  # before any pixel memory is allocated
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except ImageLoadError:
        raise
    except Exception as exc:  # PIL raises many types for broken files
        raise ImageLoadError(path, f"unreadable image ({type(exc).__name__}: {exc})") from None


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _within(path: Path, roots: tuple[Path, ...]) -> bool:
    """Whether ``path``, symlinks resolved, lies inside one of ``roots`` (already resolved)."""
    try:
        real = _real(path)
    except (OSError, ValueError):
        return False
    return any(real == r or real.is_relative_to(r) for r in roots)


def _lexically_inside(path: Path, base: Path) -> bool:
    """Whether ``path`` is ``base`` or below it as written (``..`` collapsed, symlinks not followed)."""
    norm = Path(os.path.abspath(path))
    base = Path(os.path.abspath(base))
    return norm == base or norm.is_relative_to(base)


def _relative_path(value, base: Path) -> Path | None:
    """``base / value`` for a path read from an index, or None if it is not a plain relative path that stays
    inside ``base`` (absolute, a drive, ``..``, a NUL byte, not a string)."""
    if not isinstance(value, str) or not value or "\x00" in value:
        return None
    if PurePosixPath(value).is_absolute() or PureWindowsPath(value).drive or PureWindowsPath(value).root:
        return None
    parts = PurePosixPath(value.replace("\\", "/")).parts
    if ".." in parts or not parts:
        return None
    return base.joinpath(*parts)


_REFUSED = object()


def _index_path(value, base: Path, expected: Path | None, roots: tuple[Path, ...]):
    """The path an index entry names: None when it names none, ``_REFUSED`` when it leads out of the run.

    A value that is just another spelling of ``expected`` (the layout's path; e.g. the absolute path an
    editor wrote because edits/ is a symlink to another disk) is ``expected``.
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise TypeError(f"a path must be a string, not {type(value).__name__}")
    if expected is not None and "\x00" not in value:
        try:
            if _real(base / value) == _real(expected):  # base / an absolute path is that path
                return expected
        except (OSError, ValueError):
            pass
    path = _relative_path(value, base)
    if path is None or (roots and not _within(path, roots)):
        return _REFUSED
    return path


def _refused(index: Path, i: int, what: str, value, instead: Path) -> str:
    return (
        f"{index}: record {i}: {what} {value!r} leads outside the run folder; refused, not read "
        f"(using {instead} instead)"
    )


def _plain_name(value) -> str:
    """A stem read from an index: a single file-name component, or ValueError."""
    stem = str(value)
    if not stem or stem in (".", "..") or any(c in stem for c in "/\\\x00"):
        raise ValueError(f"image {stem!r} is not a plain file name")
    return stem


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


def describe_protection(manifest: Path) -> str | None:
    """``decontext, fast preset, 200 steps, eps 12.75/255`` from a protection manifest; None when there is
    no readable one. Only strings and numbers are read from it (for display), never paths."""
    try:
        data = json.loads(Path(manifest).read_text(encoding="utf-8"))
        args, pgd = data.get("args") or {}, data.get("pgd") or {}
        method = str((data.get("method") or {}).get("method") or args.get("method") or "")
        if not method:
            return None
        parts = [method]
        if args.get("preset"):
            parts.append(f"{args['preset']} preset")
        if isinstance(pgd.get("steps"), int) and pgd["steps"] > 0:
            parts.append(f"{pgd['steps']} steps" + (" at most (stopping rule)" if pgd.get("stop_patience") else ""))
        if isinstance(pgd.get("eps"), (int, float)):
            parts.append(f"eps {pgd['eps']:g}/255")
        return ", ".join(parts)
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def recorded_model(*folders: Path | None) -> dict:
    """``{"model": ..., "editor": ...}`` as the project's commands recorded them in these folders (an edits
    folder's index.json settings, a protection manifest's editor); empty when none does."""
    for folder in folders:
        if folder is None:
            continue
        for name in ("index.json", "manifest.json"):
            try:
                data = json.loads((Path(folder) / name).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if not isinstance(data, dict):
                continue
            settings, editor = data.get("settings") or {}, data.get("editor") or {}
            model = settings.get("model") or editor.get("model")
            family = settings.get("editor") or editor.get("family")
            if isinstance(model, str) and isinstance(family, str):
                return {"model": model, "editor": family}
    return {}


# -- loading --------------------------------------------------------------------------------------


def _prompt_lookup() -> dict[int, tuple[str, str]]:
    try:
        from decontext.prompts import load_prompts

        return {p.index: (p.text, p.category) for p in load_prompts()}
    except Exception:
        return {}


def _edits_from_index(
    condition: str, edits_dir: Path, base: Path, input_dir: Path | None, errors: list[str], roots: tuple[Path, ...]
) -> list[EditRecord] | None:
    index = edits_dir / "index.json"
    if not index.is_file():
        return None
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        records = data["edits"] if isinstance(data, dict) else data
        if not isinstance(records, list):
            raise TypeError(f"the edits are a {type(records).__name__}, not a list")
    except Exception as exc:
        errors.append(f"{index}: unreadable index ({type(exc).__name__}: {exc}); scanning the folder instead")
        return None

    edits: list[EditRecord] = []
    for i, rec in enumerate(records):
        try:
            if not isinstance(rec, dict):
                raise TypeError(f"a {type(rec).__name__}, not an object")
            stem = _plain_name(rec["image"])
            pidx = int(rec["prompt_index"])
            seed = int(rec["seed"])
            # The layout fixes where an edit lives; index paths are relative to the run folder. A path that
            # leads out of the run is refused (reported, never read) and the layout's path is used instead.
            layout_output = edits_dir / stem / str(pidx) / f"seed{seed}.png"
            output = _index_path(rec.get("output"), base, layout_output, roots)
            if output is _REFUSED:
                errors.append(_refused(index, i, "output", rec["output"], layout_output))
            if not isinstance(output, Path) or not output.exists():
                output = layout_output
            layout_input = _find_image(input_dir, stem) or (input_dir / f"{stem}.png" if input_dir else Path(stem))
            inp = _index_path(rec.get("input"), base, layout_input, roots)
            if inp is _REFUSED:
                errors.append(_refused(index, i, "input", rec["input"], layout_input))
            if not isinstance(inp, Path) or not inp.exists():
                inp = layout_input
            edits.append(
                EditRecord(
                    condition,
                    stem,
                    pidx,
                    str(rec.get("prompt", "")),
                    str(rec.get("category", "default")),
                    seed,
                    output,
                    inp,
                )
            )
        except Exception as exc:  # a damaged or hand-edited record: KeyError, TypeError, ValueError, OverflowError...
            errors.append(f"{index}: record {i} is malformed ({type(exc).__name__}: {exc}); skipped")
    listed = {_real(e.output) for e in edits}
    unlisted = [f for f in _seed_files(edits_dir) if _real(f) not in listed]
    if unlisted:
        names = ", ".join(str(f) for f in unlisted[:3]) + (" ..." if len(unlisted) > 3 else "")
        errors.append(
            f"{index}: {len(unlisted)} edit file(s) in the folder are not listed and not scored "
            f"(an interrupted run?): {names}"
        )
    return edits


def _seed_files(edits_dir: Path) -> list[Path]:
    """Files laid out as ``<stem>/<prompt_index>/seed<k>.<image suffix>`` under ``edits_dir``, sorted."""
    found = []
    for stem_dir in sorted(p for p in edits_dir.iterdir() if p.is_dir()):
        for pdir in sorted(
            (p for p in stem_dir.iterdir() if p.is_dir() and _DIGITS.fullmatch(p.name)), key=lambda p: int(p.name)
        ):
            for f in sorted(pdir.iterdir()):
                if _SEED_FILE.match(f.stem) and f.suffix.lower() in IMAGE_SUFFIXES:
                    found.append(f)
    return found


def _edits_from_tree(condition: str, edits_dir: Path, input_dir: Path | None) -> list[EditRecord]:
    prompts = _prompt_lookup()
    edits: list[EditRecord] = []
    for f in _seed_files(edits_dir):
        stem, pidx, seed = f.parent.parent.name, int(f.parent.name), int(_SEED_FILE.match(f.stem).group(1))
        text, cat = prompts.get(pidx, ("", "default"))
        inp = _find_image(input_dir, stem) or (input_dir / f"{stem}.png" if input_dir else Path(stem))
        edits.append(EditRecord(condition, stem, pidx, text, cat, seed, f, inp))
    return edits


def _load_condition_edits(
    condition: str, edits_dir: Path, base: Path, input_dir: Path | None, errors: list[str], roots: tuple[Path, ...]
) -> list[EditRecord]:
    try:
        edits = _edits_from_index(condition, edits_dir, base, input_dir, errors, roots)
        if edits is None:
            edits = _edits_from_tree(condition, edits_dir, input_dir)
    except OSError as exc:  # an unreadable folder
        errors.append(f"{edits_dir}: edits of condition '{condition}' unreadable ({type(exc).__name__}: {exc})")
        return []
    if not edits:
        errors.append(
            f"{edits_dir}: no edits found for condition '{condition}' "
            "(no index.json records and no <stem>/<prompt_index>/seed<k>.png files)"
        )
    return edits


def _read_run_json(path: Path, errors: list[str]) -> dict:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise TypeError(f"a {type(raw).__name__}, not an object")
        return raw
    except Exception as exc:
        errors.append(f"{path}: unreadable ({type(exc).__name__}: {exc})")
        return {}


def _roots(base: Path | None, folders: list[Path]) -> tuple[Path, ...]:
    """Real locations images may come from: ``base`` and those of ``folders`` (lexically inside ``base``
    when it is given), which may be symlinks to elsewhere."""
    out = [_real(base)] if base is not None else []
    for f in folders:
        if f is not None and (base is None or _lexically_inside(f, base)):
            out.append(_real(f))
    return tuple(dict.fromkeys(out))


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
    """Read ``runs/<name>/`` following docs/RUN_LAYOUT.md.

    A damaged or half-written folder still loads: every problem (no edits folder, an empty condition, an
    index that is not JSON or names missing or out-of-folder files, a missing input folder) is listed in
    ``RunData.errors``.
    """
    from decontext.runs import condition_input_dir

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: run folder not found")
    errors: list[str] = []
    rj = run_dir / "run.json"
    raw = _read_run_json(rj, errors) if rj.is_file() else {}
    source = run_dir / "source"
    if not source.is_dir():
        errors.append(f"{source}: source folder not found; nothing to compare the inputs with")
    input_dirs: dict[str, Path] = {}
    edits: list[EditRecord] = []
    edits_root = run_dir / "edits"
    cdirs: list[Path] = []
    if edits_root.is_dir():
        try:
            cdirs = sorted(p for p in edits_root.iterdir() if p.is_dir())
        except OSError as exc:
            errors.append(f"{edits_root}: unreadable ({type(exc).__name__}: {exc})")
        if not cdirs:
            errors.append(f"{edits_root}: no condition folders; only input images are scored")
    else:
        errors.append(f"{edits_root}: no edits folder; only input images are scored")
    conds = {cdir.name: (source if cdir.name == CLEAN else condition_input_dir(run_dir, cdir.name)) for cdir in cdirs}
    # protected/ with no edits still gets its imperceptibility scored
    if (run_dir / "protected").is_dir() and "protected" not in conds:
        conds["protected"] = run_dir / "protected"
    roots = _roots(run_dir, [source, edits_root, *cdirs, *conds.values()])
    for cond, inp in conds.items():
        if cond != CLEAN:
            input_dirs[cond] = inp
            if not inp.is_dir():
                errors.append(f"{inp}: input folder of condition '{cond}' not found")
    for cdir in cdirs:  # <cond>@<breaker>: inputs in purified/<breaker>/<cond>/
        edits += _load_condition_edits(cdir.name, cdir, run_dir, conds[cdir.name], errors, roots)
    return RunData(
        RunInfo(rj if rj.is_file() else None, raw),
        source,
        input_dirs,
        edits,
        identity_map or {},
        errors,
        folders=(Path(os.path.abspath(run_dir)),),
        roots=roots,
    )


def load_folders(
    source: Path,
    protected: Path | None = None,
    edits_clean: Path | None = None,
    edits_protected: Path | None = None,
    identity_map: dict[str, str] | None = None,
    run_json: Path | None = None,
) -> RunData:
    """Explicit folders instead of a run folder (conditions ``clean`` and ``protected``).

    Images are read only from inside the given folders (symlinks resolved)."""
    from decontext.runs import run_root_of

    errors: list[str] = []
    raw: dict = {}
    if run_json is not None and run_json.is_file():
        raw = _read_run_json(run_json, errors)
    if not raw.get("model"):  # what the project's commands recorded in the folders themselves
        raw = {**raw, **recorded_model(edits_protected, edits_clean, protected)}
    input_dirs: dict[str, Path] = {}
    edits: list[EditRecord] = []
    if protected is not None:
        input_dirs["protected"] = Path(protected)
    given = [Path(p) for p in (source, protected, edits_clean, edits_protected) if p is not None]
    roots = _roots(None, given)
    for cond, folder, inp in ((CLEAN, edits_clean, source), ("protected", edits_protected, protected)):
        if folder is None:
            continue
        folder = Path(folder)
        if not folder.is_dir():
            errors.append(f"{folder}: edits folder of condition '{cond}' not found")
            continue
        # index.json paths are relative to the folder the edit command took as its run: runs/<name> for
        # runs/<name>/edits/<cond>, else the edits folder itself (decontext.runs.run_root_of, the writer's rule)
        edits += _load_condition_edits(cond, folder, run_root_of(folder), Path(inp) if inp else None, errors, roots)
    return RunData(
        RunInfo(run_json, raw),
        Path(source),
        input_dirs,
        edits,
        identity_map or {},
        errors,
        folders=tuple(Path(os.path.abspath(p)) for p in given),
        roots=roots,
    )
