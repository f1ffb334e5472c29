"""Run an editor over images x prompts x seeds, resumably, into the run-folder layout.

Outputs go to ``<output>/<image stem>/<prompt index>/seed<k>.png`` and ``<output>/index.json``
(docs/RUN_LAYOUT.md). Each PNG is written under a temporary name and renamed, so a killed run never
leaves a half-written image; a re-run skips every edit whose PNG exists.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .editors.base import Editor
from .images import ImageLoadError, atomic_save, list_images, load_image
from .prompts import Prompt
from .protect import write_json_atomic


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


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path.resolve())


def _remove_stale_parts(output_dir: Path) -> None:
    for part in output_dir.rglob(".*.part"):
        part.unlink(missing_ok=True)


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
) -> EditReport:
    """Edit every image with every (prompt, seed); see the module docstring for the layout."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(output_dir)
    root = run_root_of(output_dir)
    index_path = output_dir / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    index["settings"] = {**(record or {}), "steps": settings.steps, "guidance": settings.guidance, "resolution": settings.resolution, "batch_size": settings.batch_size, "model": editor.name, "editor": editor.family}
    edits = {(e["image"], e["prompt_index"], e["seed"]): e for e in index.get("edits", [])}
    paths = list_images(images)
    # Prompt conditioning once for the whole run; then whatever the editor no longer needs can go.
    editor.prepare([p.text for p in prompts], release=release_text_encoders)
    report = EditReport()
    bar = tqdm(total=len(paths) * len(prompts) * len(seeds), desc="edits", disable=not progress, dynamic_ncols=True)
    for path in paths:
        jobs = [EditJob(p, s, output_dir / path.stem / str(p.index) / f"seed{s}.png") for p in prompts for s in seeds]
        todo = [job for job in jobs if not job.output.exists()]
        report.skipped += len(jobs) - len(todo)
        bar.update(len(jobs) - len(todo))
        if not todo:
            continue
        try:
            image = load_image(path)
        except ImageLoadError as exc:
            report.failed[path.name] = str(exc)
            log(f"error: {exc}")
            bar.update(len(todo))
            continue
        pil = image_to_pil(image)
        for start in range(0, len(todo), settings.batch_size):
            batch = todo[start : start + settings.batch_size]
            began = time.perf_counter()
            try:
                outputs = editor.edit(pil, [j.prompt.text for j in batch], [j.seed for j in batch], settings.steps, settings.guidance, settings.resolution)
            except Exception as exc:  # keep going with the next image; report at the end
                message = f"{path}: {type(exc).__name__}: {exc}"
                report.failed[path.name] = message
                log(f"error: {message}")
                bar.update(len(todo) - start)
                break
            seconds = (time.perf_counter() - began) / len(batch)
            for job, edited in zip(batch, outputs):
                atomic_save(edited, job.output, format="PNG")
                edits[(path.stem, job.prompt.index, job.seed)] = {
                    "image": path.stem,
                    "input": _relative(path, root),
                    "prompt": job.prompt.text,
                    "prompt_index": job.prompt.index,
                    "category": job.prompt.category,
                    "seed": job.seed,
                    "output": _relative(job.output, root),
                    "seconds": round(seconds, 4),
                }
                report.done += 1
            bar.update(len(batch))
            index["edits"] = sorted(edits.values(), key=lambda e: (e["image"], e["prompt_index"], e["seed"]))
            write_json_atomic(index, index_path)
    bar.close()
    index["edits"] = sorted(edits.values(), key=lambda e: (e["image"], e["prompt_index"], e["seed"]))
    write_json_atomic(index, index_path)
    return report


def image_to_pil(image):
    from PIL import Image

    return Image.fromarray(image.rgb8, "RGB")
