"""Protect files: load -> PGD with a method's loss -> save within budget -> manifest.

Shared by every attack CLI, so no per-model copy of the loop exists. A folder run is resumable: the
manifest records, per image, the input's SHA-256 and the settings that made the output, and a re-run
skips only outputs made with the same settings from the same bytes (anything else is refused unless
--overwrite). It keeps going past bad files (and past a GPU out-of-memory or a non-finite loss on one
image), writes its manifest atomically after each image, and holds a lock so that two processes never
write one manifest.
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

import torch

from .editors.base import Editor
from .methods.base import Method
from .names import shown
from .images import ImageLoadError, LoadedImage, list_images, load_image, max_level_diff, quantize, save_protected, write_json_atomic
from .pgd import PGD, PGDConfig

# What an out-of-memory message suggests, per command (only flags that command has)
ATTACK_MEMORY_HINT = ("reduce memory with --checkpointing (gradient checkpointing), --quantize 8bit|4bit (FLUX.1-Kontext, CUDA), "
                      "or a smaller --resolution; docs/PERFORMANCE.md lists what each needs")
EDIT_MEMORY_HINT = ("reduce memory with --offload (diffusers CPU offload), --quantize 8bit|4bit (FLUX.1-Kontext, CUDA), "
                    "--vae-tiling --vae-slicing, or a smaller --resolution")


@dataclass
class ProtectSettings:
    pgd: PGDConfig = field(default_factory=PGDConfig)  # budget, steps, update rule (``PGDConfig.for_method``)
    seed: int = 0
    resolution: str | int = "auto"
    measure_draws: int = 4  # fixed draws used to report the share before and after
    progress: bool = True
    eot: tuple[str, ...] = ()  # breakers (decontext.purify specs) the protection is optimised to survive


@dataclass
class ProtectOutcome:
    pixels: torch.Tensor
    working_size: tuple[int, int]
    before: dict[str, float]  # what the method measures (its ``measure()``), on the clean image
    after: dict[str, float]  # ... and on the protected one
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


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


def output_settings(editor: Editor, method: Method, settings: ProtectSettings) -> dict:
    """Everything the protected pixels depend on (not the device, the progress bar or the measurements),
    recorded per image in the manifest: a re-run skips an image only when these are equal."""
    config = {k: v for k, v in method.config().items() if not k.startswith("resolved")}  # filled by prepare()
    prompts = getattr(method, "prompts", None)
    if prompts:
        config["prompts_sha256"] = hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()
    return plain_json({"method": config, "pgd": settings.pgd.to_dict(), "eot": list(settings.eot), "resolution": settings.resolution,
                   "seed": settings.seed, "editor": {"family": editor.family, "model": editor.name, "dtype": str(editor.dtype)}})


def resume_decision(entry: dict | None, output_exists: bool, settings: dict, input_sha: str | None, overwrite: bool, what: str) -> tuple[str, str]:
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
        problem = f"{what} exists but no manifest entry says how it was made (not made by this tool, or by a version before exact resume)"
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


def remove_stale_parts(folder: Path) -> None:
    """Delete the temporary files (``atomic_write``'s ``.<name>.*.part``) that a killed run left behind.
    Only under the folder's lock: another live writer's temporary file must not vanish."""
    for part in folder.rglob(".*.part"):
        part.unlink(missing_ok=True)


class OutputBusyError(RuntimeError):
    """Another process holds the output folder's lock."""


@contextlib.contextmanager
def output_lock(lock_path: Path):
    """Hold an exclusive lock on ``lock_path`` for the length of a run: a second process writing the same
    manifest is refused at once (with the holder's pid) instead of losing entries."""
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
            raise OutputBusyError(f"{shown(lock_path.parent)} is being written by {holder}; wait for it to finish or choose another --output") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}")
        handle.flush()
        yield
    finally:
        handle.close()


def protect_image(editor: Editor, method: Method, image: LoadedImage, settings: ProtectSettings, name: str = "image") -> ProtectOutcome:
    """Run PGD on one loaded image with ``method``'s loss; returns the adversarial pixels (not saved)."""
    start = time.perf_counter()
    height, width = image.pixels.shape[-2:]
    size = editor.working_size(height, width, settings.resolution)
    x0 = image.pixels.to(editor.device)
    seed = image_seed(settings.seed, name)
    draws = settings.measure_draws
    with method.session(editor):  # e.g. probes: installed for this image only, removed after
        method.start(editor, x0, size)
        before = method.measure(editor, x0, size, draws) if draws else {}
        history: list[dict] = []
        pgd = PGD(config=settings.pgd, seed=seed, progress=settings.progress, desc=f"{method.name} {name}", transform=eot_transform(settings.eot, editor))
        if hasattr(method, "perturb"):  # no optimisation (e.g. the random-noise control), under the same budget
            pixels = pgd.project(method.perturb(x0, settings.pgd.eps, torch.Generator().manual_seed(seed)), x0)
        else:
            result = pgd.run(x0, lambda x, step, gen: method.loss(editor, x, size, step, gen))
            pixels, history = result.pixels, result.history
        after = method.measure(editor, pixels, size, draws) if draws else {}
    return ProtectOutcome(pixels.detach().cpu(), size, before, after, history, time.perf_counter() - start)


def eot_transform(specs, editor=None):
    """The EOT transform of breaker specs (``decontext.purify.EOT``), or None without any."""
    if not specs:
        return None
    from .purify import EOT, parse_breakers

    return EOT(parse_breakers(list(specs)), editor)


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


@dataclass
class BatchReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def plan_outputs(inputs: list[Path], output_dir: Path) -> tuple[list[tuple[Path, Path]], dict[str, str]]:
    """Pair inputs with ``output_dir/<stem>.png``; refuse clashes that would lose or overwrite data."""
    pairs, problems, seen = [], {}, {}
    resolved_inputs = {p.resolve() for p in inputs}
    for path in inputs:
        out = output_dir / f"{path.stem}.png"
        if path.stem in seen:
            problems[str(path)] = f"{path}: same name as {seen[path.stem]}; both would be saved as {out.name}"
            continue
        if out.resolve() in resolved_inputs:
            problems[str(path)] = f"{path}: the output {out} would overwrite an input; choose another --output"
            continue
        seen[path.stem] = path
        pairs.append((path, out))
    return pairs, problems


def protect_paths(
    editor: Editor,
    method: Method,
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    settings: ProtectSettings,
    args_record: dict | None = None,
    shard: tuple[int, int] = (0, 1),
    manifest_name: str = "manifest.json",
    log=print,
    overwrite: bool = False,
) -> BatchReport:
    """Protect a file or every image of a folder into ``output_dir/<stem>.png`` + ``manifest.json``.

    ``shard=(rank, world)`` protects only the rank's share of the inputs (for multi-process runs).
    A method that does not apply to the editor is a ValueError before anything is written. Resume is
    exact (``resume_decision``); ``overwrite`` redoes outputs made with other settings. A second
    process on the same manifest is refused (OutputBusyError) before anything is written.
    """
    method.check_applies(editor)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with output_lock(output_dir / f".{manifest_name}.lock"):
        return _protect_locked(editor, method, input_path, output_dir, settings, args_record, shard, manifest_name, log, overwrite)


def _protect_locked(editor, method, input_path, output_dir: Path, settings: ProtectSettings, args_record, shard, manifest_name, log, overwrite) -> BatchReport:
    inputs = list_images(input_path)
    pairs, problems = plan_outputs(inputs, output_dir)
    rank, world = shard
    if world == 1:  # the shards of a multi-process run write side by side, each under its own manifest's lock
        remove_stale_parts(output_dir)
    pairs = pairs[rank::world]
    manifest_path = output_dir / manifest_name
    manifest = _read_manifest(manifest_path)
    manifest.update({"args": args_record or {}, "method": method.config(), "pgd": settings.pgd.to_dict(), "eot": list(settings.eot), "editor": {"family": editor.family, "model": editor.name}, "versions": library_versions()})
    images = manifest.setdefault("images", {})
    current = output_settings(editor, method, settings)
    report = BatchReport()
    if rank == 0:
        for name, message in problems.items():
            report.failed[name] = message
            images[Path(name).name] = {"input": name, "status": "failed", "error": message}
            log(f"error: {shown(message)}")
    prepared = False
    for index, (path, out) in enumerate(pairs):
        key = path.name
        counter = f"[{index + 1}/{len(pairs)}] {shown(key)}"
        try:
            input_sha = file_sha256(path)
        except OSError as exc:
            input_sha = f"unreadable: {exc}"  # load_image below names the problem
        decision, why = resume_decision(images.get(key), out.exists(), current, input_sha, overwrite, f"{out}")
        if decision == "skip":
            report.skipped.append(key)
            log(f"{counter}: already protected with the same settings ({shown(out)}), skipped")
            continue
        if decision == "refuse":
            report.failed[key] = why
            log(f"error: {shown(why)}")
            continue
        previous = images.get(key)
        try:
            image = load_image(path)
            if not prepared:
                method.prepare(editor)
                prepared = True
                manifest["method"] = method.config()
            outcome = protect_image(editor, method, image, settings, name=path.stem)
            if max_level_diff(quantize(outcome.pixels, image.rgb8, settings.pgd.eps), image.rgb8) == 0:
                raise ValueError(f"the protection changed no pixel of this {image.size[0]}x{image.size[1]} image "
                                 f"(working size {outcome.working_size[1]}x{outcome.working_size[0]}); nothing was saved")
            # Recorded as pending before the output appears: a crash between the two leaves an entry that
            # says the file is ours (same settings, same input), so the re-run redoes it instead of refusing.
            images[key] = {"input": str(path), "output": str(out), "status": "pending", "settings": current, "input_sha256": input_sha}
            write_json_atomic(manifest, manifest_path)
            saved = save_protected(outcome.pixels, image, settings.pgd.eps, out)
            entry = {
                "input": str(path),
                "output": str(out),
                "status": "done",
                "input_sha256": input_sha,
                "settings": current,
                "size": [image.size[0], image.size[1]],
                "working_size": [outcome.working_size[1], outcome.working_size[0]],
                "before": outcome.before,
                "after": outcome.after,
                "max_abs_diff_levels": max_level_diff(saved, image.rgb8),
                "seconds": round(outcome.seconds, 3),
                "seed": image_seed(settings.seed, path.stem),
                "loss_first": outcome.history[0]["loss"] if outcome.history else None,
                "loss_last": outcome.history[-1]["loss"] if outcome.history else None,
            }
            if why:
                entry["redone"] = why  # --overwrite, or an interrupted earlier run: say what was replaced
            images[key] = entry
            report.done.append(key)
            measured = "".join(f" {k} {v:.4f} -> {outcome.after[k]:.4f}," for k, v in outcome.before.items() if k in outcome.after)
            log(f"{counter}:{measured} max diff {entry['max_abs_diff_levels']} levels, {outcome.seconds:.1f}s -> {shown(out)}")
        except Exception as exc:  # keep the batch going; say what broke
            if isinstance(exc, ImageLoadError):
                message = str(exc)
            elif isinstance(exc, torch.cuda.OutOfMemoryError):
                message = f"{path}: out of GPU memory at this image's working size; {ATTACK_MEMORY_HINT}"
                free_gpu_memory()
            else:
                message = f"{path}: {type(exc).__name__}: {exc}"
            report.failed[key] = message
            failed = {"input": str(path), "status": "failed", "error": message}
            if not isinstance(exc, ImageLoadError):
                failed["traceback"] = traceback.format_exc(limit=5)
            if previous is not None and previous.get("status") == "done" and out.exists():
                failed["previous"] = previous  # the older output is still there: keep its record
            images[key] = failed
            log(f"error: {shown(message)}")
        write_json_atomic(manifest, manifest_path)
    write_json_atomic(manifest, manifest_path)
    return report


def free_gpu_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def merge_manifests(output_dir: str | os.PathLike, world: int, manifest_name: str = "manifest.json") -> Path:
    """Fold the per-process manifests ``manifest.rank<r>.json`` into ``manifest.json`` (kept entries of
    earlier runs stay), then remove the parts."""
    output_dir = Path(output_dir)
    target = output_dir / manifest_name
    merged = _read_manifest(target)
    images = merged.setdefault("images", {})
    parts = [output_dir / f"{Path(manifest_name).stem}.rank{r}.json" for r in range(world)]
    for part in parts:
        data = _read_manifest(part)
        images.update(data.pop("images", {}))
        for key, value in data.items():
            merged.setdefault(key, value)
    merged["processes"] = world
    write_json_atomic(merged, target)
    for part in parts:
        part.unlink(missing_ok=True)
    return target


def _read_manifest(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, json.JSONDecodeError):
        print(f"warning: {path} is not valid JSON; starting a new manifest (the old file is kept as {path.name}.bad)", file=sys.stderr)
        os.replace(path, path.with_name(path.name + ".bad"))
        return {}
