"""Run an editor over images x prompts x seeds, resumably, into the run-folder layout.

Outputs go to ``<output>/<image stem>/<prompt index>/seed<k>.png`` and ``<output>/index.json``
(docs/RUN_LAYOUT.md). Each PNG is written under a temporary name and renamed, so a killed run never
leaves a half-written image. Resume is exact: each edit's record holds the SHA-256 of its input and a
digest of the settings that made it (``settings_by_digest`` keeps them readable); a re-run skips an
edit only when both and its prompt text match, refuses the image otherwise (listing what differs)
unless ``overwrite``, and redoes edits that a killed run saved but had not yet recorded.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .editors.base import Editor
from .images import ImageLoadError, atomic_save, list_images, load_image, write_json_atomic
from .prompts import Prompt
from .protect import (EDIT_MEMORY_HINT, file_sha256, free_gpu_memory, output_lock, plain_json, remove_stale_parts, resume_decision)
from .names import shown

# index["settings"] keys that do not change the pixels of an edit (where the inputs were, how many at once)
NOT_OUTPUT_SETTINGS = ("batch_size", "images", "prompts_file", "seeds")


@dataclass
class EditSettings:
    steps: int = 20
    guidance: float = 3.5
    resolution: str | int = 512
    batch_size: int = 1


@dataclass
class EditJob:
    prompt: Prompt
    seed: int
    output: Path


@dataclass
class EditReport:
    done: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def validate_seeds(seeds: list[int]) -> list[int]:
    bad = [s for s in seeds if s < 0 or s >= 2**63]
    if bad:
        raise ValueError(f"seed {bad[0]} is invalid: seeds must be integers in [0, 2**63)")
    if not seeds:
        raise ValueError("no seeds given")
    return list(dict.fromkeys(seeds))


def run_root_of(output_dir: Path) -> Path:
    """The run folder that index paths are relative to: ``runs/<name>`` for ``runs/<name>/edits/<cond>``,
    else the output folder itself."""
    return output_dir.parent.parent if output_dir.parent.name == "edits" else output_dir


def _relative(path: Path, root: Path) -> str | None:
    """``path`` relative to the run folder; None when it lies outside (an index only names files of its
    run: evaluation refuses anything else, and the absolute path is kept apart as ``input_file``)."""
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return None


def edit_settings_digest(settings: dict) -> tuple[str, dict]:
    """(digest, the settings it stands for) of what an edit's pixels depend on."""
    kept = plain_json({k: v for k, v in settings.items() if k not in NOT_OUTPUT_SETTINGS})
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode("utf-8")).hexdigest()[:16], kept


def indexed_record(entry: dict | None, known: dict) -> dict | None:
    """An index record as ``resume_decision`` reads it: the settings its digest stands for (``known`` =
    the index's ``settings_by_digest``) plus its prompt text; None for a record without a digest."""
    if entry is None or "settings_digest" not in entry:
        return None
    recorded = known.get(entry["settings_digest"], {"(unknown settings)": entry["settings_digest"]})
    return {**entry, "settings": {**recorded, "prompt": entry.get("prompt")}}


def run_edits(
    editor: Editor,
    images: str | Path,
    prompts: list[Prompt],
    seeds: list[int],
    output_dir: str | Path,
    settings: EditSettings,
    record: dict | None = None,
    progress: bool = True,
    release_text_encoders: bool = True,
    log=print,
    overwrite: bool = False,
) -> EditReport:
    """Edit every image with every (prompt, seed); see the module docstring for the layout and resume."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with output_lock(output_dir / ".index.json.lock"):
        return _edit_locked(editor, images, prompts, seeds, output_dir, settings, record, progress, release_text_encoders, log, overwrite)


def _edit_locked(editor, images, prompts, seeds, output_dir: Path, settings: EditSettings, record, progress, release_text_encoders, log, overwrite) -> EditReport:
    remove_stale_parts(output_dir)
    root = run_root_of(output_dir)
    index_path = output_dir / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    index["settings"] = {**(record or {}), "steps": settings.steps, "guidance": settings.guidance, "resolution": settings.resolution, "batch_size": settings.batch_size, "model": editor.name, "editor": editor.family}
    digest, current = edit_settings_digest(index["settings"])
    known = index.setdefault("settings_by_digest", {})
    known[digest] = current
    edits = {(e["image"], e["prompt_index"], e["seed"]): e for e in index.get("edits", [])}
    paths = list_images(images)
    # Prompt conditioning once for the whole run; then whatever the editor no longer needs can go.
    editor.prepare([p.text for p in prompts], release=release_text_encoders)
    report = EditReport()
    bar = tqdm(total=len(paths) * len(prompts) * len(seeds), desc="edits", disable=not progress, dynamic_ncols=True)

    def save_index():
        index["edits"] = sorted(edits.values(), key=lambda e: (e["image"], e["prompt_index"], e["seed"]))
        write_json_atomic(index, index_path)

    for path in paths:
        jobs = [EditJob(p, s, output_dir / path.stem / str(p.index) / f"seed{s}.png") for p in prompts for s in seeds]
        try:
            input_sha = file_sha256(path)
        except OSError as exc:
            input_sha = f"unreadable: {exc}"
        todo, refused, redone = [], [], {}
        for job in jobs:
            recorded = indexed_record(edits.get((path.stem, job.prompt.index, job.seed)), known)
            decision, why = resume_decision(recorded, job.output.exists(), {**current, "prompt": job.prompt.text}, input_sha, overwrite, shown(job.output))
            if decision == "skip":
                continue
            if decision == "refuse":
                refused.append(why)
                continue
            todo.append(job)
            if why:
                redone[job.output] = why
        report.skipped += len(jobs) - len(todo) - len(refused)
        bar.update(len(jobs) - len(todo))
        if refused:
            report.failed[path.name] = refused[0] + (f" (and {len(refused) - 1} more edits of this image)" if len(refused) > 1 else "")
            log(f"error: {shown(report.failed[path.name])}")
        if not todo:
            continue
        try:
            image = load_image(path)
        except ImageLoadError as exc:
            report.failed[path.name] = str(exc)
            log(f"error: {shown(exc)}")
            bar.update(len(todo))
            continue
        pil = image_to_pil(image)
        source = {"input": _relative(path, root)}
        if source["input"] is None:
            source["input_file"] = str(path.resolve())
        for start in range(0, len(todo), settings.batch_size):
            batch = todo[start : start + settings.batch_size]
            began = time.perf_counter()
            try:
                outputs = editor.edit(pil, [j.prompt.text for j in batch], [j.seed for j in batch], settings.steps, settings.guidance, settings.resolution)
            except Exception as exc:  # keep going with the next image; report at the end
                if isinstance(exc, torch.cuda.OutOfMemoryError):
                    message = f"{path}: out of GPU memory while editing; {EDIT_MEMORY_HINT}"
                    free_gpu_memory()
                else:
                    message = f"{path}: {type(exc).__name__}: {exc}"
                report.failed[path.name] = message
                log(f"error: {shown(message)}")
                bar.update(len(todo) - start)
                break
            seconds = (time.perf_counter() - began) / len(batch)
            records = []
            for job in batch:
                entry = {
                    "image": path.stem,
                    **source,
                    "prompt": job.prompt.text,
                    "prompt_index": job.prompt.index,
                    "category": job.prompt.category,
                    "seed": job.seed,
                    "output": _relative(job.output, root),
                    "seconds": round(seconds, 4),
                    "input_sha256": input_sha,
                    "settings_digest": digest,
                    "status": "pending",
                }
                if job.output in redone:
                    entry["redone"] = redone[job.output]
                edits[(path.stem, job.prompt.index, job.seed)] = entry
                records.append(entry)
            save_index()  # pending first: a kill before the PNGs are in place leaves records that say the files are ours
            for job, edited, entry in zip(batch, outputs, records):
                atomic_save(edited, job.output, format="PNG")
                entry["status"] = "done"
                report.done += 1
            bar.update(len(batch))
            save_index()
    bar.close()
    save_index()
    return report


def image_to_pil(image):
    from PIL import Image

    return Image.fromarray(image.rgb8, "RGB")
