"""Run folders (docs/RUN_LAYOUT.md): who may write them, what a re-run skips, where each file lives.

Every command that writes outputs shares this bookkeeping: one writer per folder (a lock), a record
file (the protection ``manifest.json`` or an editing / text-to-image ``index.json``), the SHA-256 of
each input, the exact-resume decision, per-image seeds, the layout's path rules, and ONE resumable
per-file loop (``run_resumable``) that protection, editing and text-to-image all run. A command
supplies its outputs, its record file and its work; the loop decides what to skip, refuse or redo,
records an output as ``pending`` before it appears and ``done`` once it is in place, and keeps going
past a failing input.

    python -m decontext runs init --input photos/ --run runs/demo --model toy --editor flux_kontext
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
import time
import traceback
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable, Iterable, Sequence

from .names import shown

EDITS = "edits"  # runs/<name>/edits/<condition>/...
SOURCE = "source"  # runs/<name>/source/<stem>.png: the clean inputs (condition "clean")
PURIFIED = "purified"  # runs/<name>/purified/<breaker label>/<condition>/<stem>.png
SEPARATOR = "@"  # edits/<condition>@<breaker label>: the edits of the purified copies of <condition>


# ---------------------------------------------------------------------------------------------- seeds, hashes, settings
def image_seed(seed: int, name: str) -> int:
    """Per-image seed that does not depend on the order or sharding of a batch. File names that are not
    valid UTF-8 (their bytes kept as surrogates by Python) hash by their bytes."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode("utf-8", "surrogateescape"))) % (2**31)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_sha256(path: Path) -> str:
    """The input's SHA-256, or ``unreadable: ...`` (the loader then names the problem)."""
    try:
        return file_sha256(path)
    except OSError as exc:
        return f"unreadable: {exc}"


def plain_json(value):
    """JSON's view of a value (tuples -> lists, paths -> strings), so recorded and current settings compare equal."""
    return json.loads(json.dumps(value, default=str))


def settings_differences(recorded: dict, current: dict, prefix: str = "") -> list[str]:
    """'key: recorded -> current' for every leaf that differs (both JSON-like)."""
    out = []
    for key in sorted(set(recorded) | set(current), key=str):
        a, b = recorded.get(key, "(absent)"), current.get(key, "(absent)")
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += settings_differences(a, b, name + ".")
        elif a != b:
            out.append(f"{name}: {a} -> {b}")
    return out


def settings_digest(settings: dict, ignore: Sequence[str] = ()) -> tuple[str, dict]:
    """(digest, the settings it stands for) of ``settings`` without the keys in ``ignore``."""
    kept = plain_json({k: v for k, v in settings.items() if k not in ignore})
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode("utf-8")).hexdigest()[:16], kept


def resume_decision(
    entry: dict | None, output_exists: bool, settings: dict, input_sha: str | None, overwrite: bool, what: str
) -> tuple[str, str]:
    """("skip" | "run" | "refuse", why) for one output of a re-run.

    Skipped only when the recorded entry is done, with the same settings, from the same input bytes
    (``input_sha`` None: the output has no input file, e.g. a text-to-image generation). An output made
    otherwise (other settings, changed input, no record at all: maybe the user's own file) is refused
    unless ``overwrite``; a run that was interrupted before it recorded its output ("pending") is redone."""
    if not output_exists:
        return "run", ""
    if entry is not None and entry.get("status") == "failed" and "previous" in entry:
        entry = entry["previous"]  # a redo that failed left the older output and its record in place
    if entry is None or "settings" not in entry or (input_sha is not None and "input_sha256" not in entry):
        problem = (
            f"{what} exists but no manifest entry says how it was made "
            "(not made by this tool, or by a version before exact resume)"
        )
    else:
        differences = settings_differences(entry["settings"], settings)
        if input_sha is not None and entry["input_sha256"] != input_sha:
            differences.insert(0, "the input file's bytes changed since")
        if not differences:
            return ("skip", "") if entry.get("status") == "done" else ("run", "interrupted before it was recorded")
        problem = f"{what} was made with other settings or input: " + "; ".join(differences)
    if overwrite:
        return "run", problem
    return "refuse", problem + "; not overwritten (pass --overwrite to redo it, or choose another --output)"


def library_versions() -> dict:
    versions = {"python": platform.python_version()}
    for module in ("torch", "diffusers", "transformers", "accelerate", "numpy", "PIL"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:  # pragma: no cover - absent optional module
            versions[module] = None
    from . import __version__

    versions["decontext"] = __version__
    return versions


# ---------------------------------------------------------------------------------------------- one writer per folder
class OutputBusyError(RuntimeError):
    """Another process holds the output folder's lock."""


@contextlib.contextmanager
def output_lock(lock_path: Path):
    """Hold an exclusive lock on ``lock_path`` for the length of a run: a second process writing the same
    record file is refused at once (with the holder's pid) instead of losing entries."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock, as before
        yield
        return
    handle = open(lock_path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise OutputBusyError(
                f"{shown(lock_path.parent)} is being written by {holder}; "
                "wait for it to finish or choose another --output"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}")
        handle.flush()
        yield
    finally:
        handle.close()


def remove_stale_parts(folder: Path) -> None:
    """Delete the temporary files (``atomic_write``'s ``.<name>.*.part``) that a killed run left behind.
    Only under the folder's lock: another live writer's temporary file must not vanish."""
    for part in folder.rglob(".*.part"):
        part.unlink(missing_ok=True)


def read_record_file(path: Path) -> dict:
    """A manifest or index as a dict; a broken one is set aside as ``<name>.bad`` (never deleted) and a
    new one starts."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, json.JSONDecodeError):
        print(
            f"warning: {path} is not valid JSON; starting a new record file (the old file is kept as {path.name}.bad)",
            file=sys.stderr,
        )
        os.replace(path, path.with_name(path.name + ".bad"))
        return {}


def merge_manifests(output_dir: str | os.PathLike, world: int, manifest_name: str = "manifest.json") -> Path:
    """Fold the per-process manifests ``manifest.rank<r>.json`` into ``manifest.json`` (kept entries of
    earlier runs stay), then remove the parts."""
    from .images import write_json_atomic

    output_dir = Path(output_dir)
    target = output_dir / manifest_name
    merged = read_record_file(target)
    images = merged.setdefault("images", {})
    parts = [output_dir / f"{Path(manifest_name).stem}.rank{r}.json" for r in range(world)]
    for part in parts:
        data = read_record_file(part)
        images.update(data.pop("images", {}))
        for key, value in data.items():
            merged.setdefault(key, value)
    merged["processes"] = world
    write_json_atomic(merged, target)
    for part in parts:
        part.unlink(missing_ok=True)
    return target


# ---------------------------------------------------------------------------------------------- path rules
def run_root_of(output_dir: Path) -> Path:
    """The run folder that index paths are relative to: ``runs/<name>`` for ``runs/<name>/edits/<cond>``,
    else the output folder itself."""
    output_dir = Path(output_dir)
    return output_dir.parent.parent if output_dir.parent.name == EDITS else output_dir


def run_relative(path: Path, root: Path) -> str | None:
    """``path`` relative to the run folder; None when it lies outside (a record only names files of its
    run: evaluation refuses anything else, and the absolute path is kept apart as ``input_file``)."""
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return None


def purified_condition(condition: str, label: str) -> str:
    """The condition name of ``condition``'s images purified by the breaker labelled ``label``."""
    return f"{condition}{SEPARATOR}{label}"


def condition_input_dir(run_dir: str | Path, condition: str) -> Path:
    """Where a condition's input images live: ``<run>/<condition>/``, or for a purified condition
    ``<condition>@<label>``, ``<run>/purified/<label>/<condition>/``."""
    run_dir = Path(run_dir)
    if SEPARATOR in condition:
        base, label = condition.split(SEPARATOR, 1)
        return run_dir / PURIFIED / label / base
    return run_dir / condition


def purified_path(run_dir: str | Path, label: str, condition: str, stem: str) -> Path:
    return Path(run_dir) / PURIFIED / label / condition / f"{stem}.png"


def edit_output_path(output_dir: Path, stem: str, prompt_index: int, seed: int) -> Path:
    """``<output>/<image stem>/<prompt index>/seed<k>.png``."""
    return Path(output_dir) / stem / str(prompt_index) / f"seed{seed}.png"


def plan_protected_outputs(inputs: list[Path], output_dir: Path) -> tuple[list[tuple[Path, Path]], dict[str, str]]:
    """Pair inputs with ``output_dir/<stem>.png``; refuse clashes that would lose or overwrite data."""
    pairs, problems, seen = [], {}, {}
    resolved_inputs = {p.resolve() for p in inputs}
    for path in inputs:
        out = Path(output_dir) / f"{path.stem}.png"
        if path.stem in seen:
            problems[str(path)] = f"{path}: same name as {seen[path.stem]}; both would be saved as {out.name}"
            continue
        if out.resolve() in resolved_inputs:
            problems[str(path)] = f"{path}: the output {out} would overwrite an input; choose another --output"
            continue
        seen[path.stem] = path
        pairs.append((path, out))
    return pairs, problems


# ---------------------------------------------------------------------------------------------- failures
ATTACK_MEMORY_HINT = (
    "reduce memory with --checkpointing (gradient checkpointing), --quantize 8bit|4bit (FLUX.1-Kontext, CUDA), "
    "or a smaller --resolution; docs/PERFORMANCE.md lists what each needs"
)
EDIT_MEMORY_HINT = (
    "reduce memory with --offload (diffusers CPU offload), --quantize 8bit|4bit (FLUX.1-Kontext, CUDA), "
    "--vae-tiling --vae-slicing, or a smaller --resolution"
)


def free_gpu_memory() -> None:
    import gc

    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def failure_message(where: str | Path, exc: BaseException, memory_hint: str) -> str:
    """What a failure of one input says: the loader's own message, the memory hint on a GPU out-of-memory
    (whose memory is given back), else the exception's type and text."""
    from .images import ImageLoadError

    if isinstance(exc, ImageLoadError):
        return str(exc)
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        free_gpu_memory()
        return f"{where}: out of GPU memory at this image's working size; {memory_hint}"
    return f"{where}: {type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------------------------- the resumable loop
@dataclass
class Output:
    """One file a command writes, and what a re-run compares before it skips it."""

    key: Hashable  # its record's key in the record file
    path: Path
    settings: dict  # everything the file depends on (compared on resume)
    fields: dict = field(default_factory=dict)  # the record's own fields (prompt, seed, ...), written with it


@dataclass
class Group:
    """The outputs made from one input file (or from none: text-to-image); the input is read once."""

    name: str  # how a failure of this input is named in the report
    input: Path | None
    outputs: list[Output]
    sha256: str | None = (
        None  # the input's SHA-256 when it was read elsewhere (a cluster's read stage); else hashed here
    )


@dataclass
class Made:
    """What the work made for one output: how to write it (called with its path; returns record fields
    that depend on the written file) and the record's fields."""

    write: Callable[[Path], dict | None]
    record: dict = field(default_factory=dict)


@dataclass
class Report:
    done: list = field(default_factory=list)  # keys of the outputs made now
    skipped: list = field(default_factory=list)  # keys of the outputs already made with the same settings
    failed: dict[str, str] = field(default_factory=dict)  # input name -> what went wrong

    @property
    def ok(self) -> bool:
        return not self.failed


class RecordFile:
    """A folder's record file (``manifest.json`` / ``index.json``) as the loop sees it. Subclasses say how
    records are stored; the loop only reads and writes them through these methods."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.data = read_record_file(self.path)

    def recorded(self, output: Output) -> dict | None:
        """The output's record as ``resume_decision`` reads it (with ``settings``), or None."""
        raise NotImplementedError

    def put(self, output: Output, record: dict) -> None:
        raise NotImplementedError

    def failed(self, group: Group, message: str, trace: str | None) -> None:
        """Record that ``group`` failed (record files that keep failures do; others leave it to the report)."""

    def save(self) -> None:
        from .images import write_json_atomic

        write_json_atomic(self.data, self.path)


@dataclass
class Job:
    """One output still to make, with its input loaded: what ``run_resumable`` hands its ``work`` in batches."""

    group: Group
    output: Output
    loaded: object
    input_sha: str | None = None
    redone: str | None = None  # why an existing output is made again (--overwrite, an interrupted run)


def run_resumable(
    groups: Iterable[Group],
    records: RecordFile,
    work: Callable[[list[Job]], list[Made]],
    load: Callable[[Path], object] | None = None,
    batch_size: int = 1,
    overwrite: bool = False,
    log=print,
    memory_hint: str = "",
    progress=None,
    on_done: Callable[[Group, list[Output], list[dict]], None] | None = None,
    on_skip: Callable[[Hashable], None] | None = None,
    batch_key: Callable[[Group, object], Hashable] | None = None,
) -> Report:
    """Make every output of every group that a re-run does not skip.

    For each group: the input's SHA-256, then per output the resume decision (skip / refuse / run); the
    input is loaded once (``load``) if anything is left to make; ``work(jobs)`` makes a batch of up to
    ``batch_size`` outputs; each output is recorded ``pending`` (saved) before its file appears, then
    written, then recorded ``done`` (saved). A batch holds the outputs of one input (the default), or,
    with ``batch_key(group, loaded)``, outputs of consecutive inputs whose keys are equal (e.g. images of
    one size protected together). A failing input (unreadable, a non-finite loss, out of memory, ...) is
    reported and recorded, every input of a failing batch with it, and the loop goes on with the next.
    ``progress``: a tqdm bar that advances by one per output decided; ``on_done(group, outputs, records)``
    / ``on_skip(key)``: say so."""
    report = Report()
    pending: list[Job] = []
    failed: set[str] = set()
    last_key: list = []

    def flush() -> None:
        batch = list(pending)
        pending.clear()
        if not batch:
            return
        began = time.perf_counter()
        try:
            made = work(batch)
            seconds = (time.perf_counter() - began) / len(batch)
            entries = []
            for job, piece in zip(batch, made, strict=True):
                entry = {**job.output.fields, **piece.record, "status": "pending", "settings": job.output.settings}
                entry.setdefault("seconds", round(seconds, 4))
                if job.input_sha is not None:
                    entry["input_sha256"] = job.input_sha
                if job.redone:
                    entry["redone"] = job.redone  # --overwrite, or an interrupted earlier run: what was replaced
                records.put(job.output, entry)
                entries.append(entry)
            records.save()  # pending first: a kill before the files are in place leaves records that say they are ours
            for job, piece, entry in zip(batch, made, entries, strict=False):
                entry.update(piece.write(job.output.path) or {})
                entry["status"] = "done"
                records.put(job.output, entry)
                report.done.append(job.output.key)
            records.save()
        except Exception as exc:  # keep going with the next input; say what broke
            for group in {id(j.group): j.group for j in batch}.values():
                _fail(report, records, group, exc, memory_hint, log)
                failed.add(group.name)
            if progress is not None:
                progress.update(len(batch))
            return
        if progress is not None:
            progress.update(len(batch))
        if on_done is not None:
            for group in {id(j.group): j.group for j in batch}.values():
                mine = [(j.output, e) for j, e in zip(batch, entries, strict=False) if j.group is group]
                on_done(group, [o for o, _ in mine], [e for _, e in mine])

    for group in groups:
        input_sha = group.sha256 or (None if group.input is None else input_sha256(group.input))
        todo, refused, redone = [], [], {}
        for output in group.outputs:
            decision, why = resume_decision(
                records.recorded(output),
                output.path.exists(),
                output.settings,
                input_sha,
                overwrite,
                shown(output.path),
            )
            if decision == "skip":
                report.skipped.append(output.key)
                if on_skip is not None:
                    on_skip(output.key)
            elif decision == "refuse":
                refused.append(why)
            else:
                todo.append(output)
                if why:
                    redone[output.key] = why
        if progress is not None:
            progress.update(len(group.outputs) - len(todo))
        if refused:
            report.failed[group.name] = refused[0] + (
                f" (and {len(refused) - 1} more outputs of this input)" if len(refused) > 1 else ""
            )
            log(f"error: {shown(report.failed[group.name])}")
        if not todo:
            continue
        try:
            loaded = load(group.input) if (load is not None and group.input is not None) else None
        except Exception as exc:  # e.g. an unreadable image: named, and the next input goes on
            _fail(report, records, group, exc, memory_hint, log)
            if progress is not None:
                progress.update(len(todo))
            continue
        key = batch_key(group, loaded) if batch_key is not None else id(group)
        for output in todo:
            if pending and (len(pending) >= batch_size or key != last_key[0]):
                flush()
            if group.name in failed:  # an earlier batch of this input failed: the rest of it is not tried
                if progress is not None:
                    progress.update(1)
                continue
            pending.append(Job(group, output, loaded, input_sha, redone.get(output.key)))
            last_key[:] = [key]
    flush()
    records.save()
    return report


def _fail(report: Report, records: RecordFile, group: Group, exc: BaseException, memory_hint: str, log) -> None:
    from .images import ImageLoadError

    message = failure_message(group.input if group.input is not None else group.name, exc, memory_hint)
    report.failed[group.name] = message
    records.failed(group, message, None if isinstance(exc, ImageLoadError) else traceback.format_exc(limit=5))
    records.save()
    log(f"error: {shown(message)}")


class IndexFile(RecordFile):
    """``index.json`` of an editing or text-to-image folder: the run's settings once (``settings``, and by
    digest in ``settings_by_digest``), then one record per output in the list ``entries_key``, keyed by
    the fields named in ``key_fields``. A record names its settings by digest; resume compares the
    settings it stands for plus the record's prompt text (``compared_fields``)."""

    def __init__(
        self,
        path: Path,
        settings: dict,
        entries_key: str,
        key_fields: Sequence[str],
        ignore: Sequence[str] = (),
        compared_fields: Sequence[str] = ("prompt",),
    ):
        super().__init__(path)
        self.data["settings"] = settings
        self.digest, self.current = settings_digest(settings, ignore)
        self.known = self.data.setdefault("settings_by_digest", {})
        self.known[self.digest] = self.current
        self.entries_key, self.key_fields, self.compared_fields = entries_key, tuple(key_fields), tuple(compared_fields)
        self.entries = {tuple(e[k] for k in self.key_fields): e for e in self.data.get(entries_key, [])}

    def settings_for(self, fields: dict) -> dict:
        """What an output with these record fields is compared by: the run's settings and its own fields."""
        return {**self.current, **{k: fields.get(k) for k in self.compared_fields}}

    def recorded(self, output: Output) -> dict | None:
        entry = self.entries.get(output.key)
        if entry is None or "settings_digest" not in entry:
            return None
        recorded = self.known.get(entry["settings_digest"], {"(unknown settings)": entry["settings_digest"]})
        return {**entry, "settings": {**recorded, **{k: entry.get(k) for k in self.compared_fields}}}

    def put(self, output: Output, record: dict) -> None:
        entry = {k: v for k, v in record.items() if k != "settings"}
        entry["settings_digest"] = self.digest
        self.entries[output.key] = entry

    def save(self) -> None:
        self.data[self.entries_key] = sorted(self.entries.values(), key=lambda e: tuple(e[k] for k in self.key_fields))
        super().save()


class ManifestFile(RecordFile):
    """A protection folder's ``manifest.json``: the run's settings at the top, one record per input file
    name under ``images`` with its settings inline; failures are recorded too (a failed redo keeps the
    older output's record as ``previous``)."""

    def __init__(self, path: Path, header: dict):
        super().__init__(path)
        self.data.update(header)
        self.images = self.data.setdefault("images", {})

    def recorded(self, output: Output) -> dict | None:
        return self.images.get(output.key)

    def put(self, output: Output, record: dict) -> None:
        self.images[output.key] = record

    def failed(self, group: Group, message: str, trace: str | None) -> None:
        key = group.name
        previous = self.images.get(key)
        entry = {"input": str(group.input) if group.input is not None else key, "status": "failed", "error": message}
        if trace:
            entry["traceback"] = trace
        outputs = [o.path for o in group.outputs]
        if previous is not None and previous.get("status") == "done" and any(p.exists() for p in outputs):
            entry["previous"] = previous  # the older output is still there: keep its record
        self.images[key] = entry


class JournalFile(ManifestFile):
    """One worker's share of a protection folder's manifest, for workers that run side by side (cluster
    actors): it reads the records the folder had when the job started (``known``) plus its own, and saves
    by appending its new or changed records as JSON lines to its own journal (``journal_dir/<worker>.jsonl``,
    flushed and fsynced), so saving costs the same at the millionth image as at the first and a killed worker
    loses nothing it saved. ``merge_journals`` folds the journals into manifest.json."""

    def __init__(self, path: Path, header: dict, known: dict):
        self.path = Path(path)
        self.data = dict(header)
        self.images = dict(known)
        self._changed: dict = {}
        self._header = ""  # the header as last journaled (a line {"header": ...} whenever it changes)

    def put(self, output: Output, record: dict) -> None:
        super().put(output, record)
        self._changed[output.key] = record

    def failed(self, group: Group, message: str, trace: str | None) -> None:
        super().failed(group, message, trace)
        self._changed[group.name] = self.images[group.name]

    def save(self) -> None:
        header = json.dumps(self.data, default=str, sort_keys=True)
        if not self._changed and header == self._header:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = "" if header == self._header else json.dumps({"header": self.data}, default=str) + "\n"
        self._header = header
        lines += "".join(
            json.dumps({"key": key, "record": record}, default=str) + "\n" for key, record in self._changed.items()
        )
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())
        self._changed = {}


def merge_journals(
    output_dir: str | os.PathLike,
    journal_dir: str | os.PathLike,
    header: dict | None = None,
    manifest_name: str = "manifest.json",
) -> Path:
    """Fold every journal of ``journal_dir`` into ``output_dir/manifest.json`` (line order: a later record of
    an image replaces an earlier one; a line cut short by a kill is ignored), then remove the journals."""
    from .images import write_json_atomic

    target = Path(output_dir) / manifest_name
    merged = read_record_file(target)
    merged.update(header or {})
    images = merged.setdefault("images", {})
    journals = sorted(Path(journal_dir).glob("*.jsonl")) if Path(journal_dir).is_dir() else []
    for journal in journals:
        for line in journal.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # the last line of a worker killed while appending
            if "header" in entry:
                merged.update({k: v for k, v in entry["header"].items() if k != "images"})
            else:
                images[entry["key"]] = entry["record"]
    write_json_atomic(merged, target)
    for journal in journals:
        journal.unlink()
    return target


# ---------------------------------------------------------------------------------------------- starting a run folder
def prepare_sources(input_path: str | Path, source_dir: str | Path, log=print) -> tuple[list[Path], dict[str, str]]:
    """Write each readable input as ``source/<stem>.png`` (EXIF applied, RGB 8-bit: exactly the pixels
    the attack measures its budget against). Existing files are kept. Returns (written, failures)."""
    from PIL import Image

    from .images import ImageLoadError, atomic_save, list_images, load_image

    source_dir = Path(source_dir)
    source_dir.mkdir(parents=True, exist_ok=True)
    written, failed = [], {}
    for path in list_images(input_path):
        out = source_dir / f"{path.stem}.png"
        if out.exists():
            written.append(out)
            continue
        try:
            image = load_image(path)
        except ImageLoadError as exc:
            failed[path.name] = str(exc)
            log(f"error: {exc}")
            continue
        atomic_save(Image.fromarray(image.rgb8, "RGB"), out, format="PNG")
        written.append(out)
    return written, failed


def write_run_info(run_dir: str | Path, **info) -> Path:
    from .images import write_json_atomic

    run_dir = Path(run_dir)
    path = run_dir / "run.json"
    data = json.loads(path.read_text()) if path.is_file() else {"created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    data.update({k: v for k, v in info.items() if v is not None})
    write_json_atomic(data, path)
    return path
