"""Protect files: load -> PGD with a method's loss -> save within budget -> manifest.

Shared by every attack CLI, so no per-model copy of the loop exists. A folder run is resumable (done
outputs are skipped), keeps going past bad files, and writes its manifest atomically after each image.
"""

from __future__ import annotations

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
from .images import ImageLoadError, atomic_write, LoadedImage, list_images, load_image, max_level_diff, save_protected
from .pgd import PGD, PGDConfig


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
    """Per-image seed that does not depend on the order or sharding of a batch."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode("utf-8"))) % (2**31)


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


def write_json_atomic(data, path: Path) -> None:
    text = json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


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
) -> BatchReport:
    """Protect a file or every image of a folder into ``output_dir/<stem>.png`` + ``manifest.json``.

    ``shard=(rank, world)`` protects only the rank's share of the inputs (for multi-process runs).
    A method that does not apply to the editor is a ValueError before anything is written.
    """
    method.check_applies(editor)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    inputs = list_images(input_path)
    pairs, problems = plan_outputs(inputs, output_dir)
    rank, world = shard
    pairs = pairs[rank::world]
    manifest_path = output_dir / manifest_name
    manifest = _read_manifest(manifest_path)
    manifest.update({"args": args_record or {}, "method": method.config(), "pgd": settings.pgd.to_dict(), "eot": list(settings.eot), "editor": {"family": editor.family, "model": editor.name}, "versions": library_versions()})
    images = manifest.setdefault("images", {})
    report = BatchReport()
    if rank == 0:
        for name, message in problems.items():
            report.failed[name] = message
            images[Path(name).name] = {"input": name, "status": "failed", "error": message}
            log(f"error: {message}")
    prepared = False
    for index, (path, out) in enumerate(pairs):
        key = path.name
        if out.exists():
            report.skipped.append(key)
            entry = images.setdefault(key, {"input": str(path), "output": str(out)})
            entry.setdefault("status", "done")
            log(f"[{index + 1}/{len(pairs)}] {key}: already protected ({out}), skipped")
            continue
        try:
            image = load_image(path)
            if not prepared:
                method.prepare(editor)
                prepared = True
                manifest["method"] = method.config()
            outcome = protect_image(editor, method, image, settings, name=path.stem)
            saved = save_protected(outcome.pixels, image, settings.pgd.eps, out)
            entry = {
                "input": str(path),
                "output": str(out),
                "status": "done",
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
            images[key] = entry
            report.done.append(key)
            measured = "".join(f" {k} {v:.4f} -> {outcome.after[k]:.4f}," for k, v in outcome.before.items() if k in outcome.after)
            log(f"[{index + 1}/{len(pairs)}] {key}:{measured} max diff {entry['max_abs_diff_levels']} levels, {outcome.seconds:.1f}s -> {out}")
        except ImageLoadError as exc:
            report.failed[key] = str(exc)
            images[key] = {"input": str(path), "status": "failed", "error": str(exc)}
            log(f"error: {exc}")
        except Exception as exc:  # keep the batch going; say what broke
            message = f"{path}: {type(exc).__name__}: {exc}"
            report.failed[key] = message
            images[key] = {"input": str(path), "status": "failed", "error": message, "traceback": traceback.format_exc(limit=5)}
            log(f"error: {message}")
        write_json_atomic(manifest, manifest_path)
    write_json_atomic(manifest, manifest_path)
    return report


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
