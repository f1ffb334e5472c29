"""Run an editor over images x prompts x seeds, resumably, into the run-folder layout.

Outputs go to ``<output>/<image stem>/<prompt index>/seed<k>.png`` and ``<output>/index.json``
(docs/RUN_LAYOUT.md). Each PNG is written under a temporary name and renamed, so a killed run never
leaves a half-written image. Resume is exact: each edit's record holds the SHA-256 of its input and a
digest of the settings that made it (``settings_by_digest`` keeps them readable); a re-run skips an
edit only when both and its prompt text match, refuses the image otherwise (listing what differs)
unless ``overwrite``, and redoes edits that a killed run saved but had not yet recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .editors.base import Editor
from .images import atomic_save, list_images, load_image
from .prompts import Prompt
from .runs import (
    EDIT_MEMORY_HINT,
    Group,
    IndexFile,
    Job,
    Made,
    Output,
    Report,
    edit_output_path,
    output_lock,
    remove_stale_parts,
    run_relative,
    run_resumable,
    run_root_of,
)

# index["settings"] keys that do not change the pixels of an edit (where the inputs were, how many at once)
NOT_OUTPUT_SETTINGS = ("batch_size", "images", "prompts_file", "seeds")


@dataclass
class EditSettings:
    steps: int = 20
    guidance: float = 3.5
    resolution: str | int = 512
    batch_size: int = 1


def validate_seeds(seeds: list[int]) -> list[int]:
    bad = [s for s in seeds if s < 0 or s >= 2**63]
    if bad:
        raise ValueError(f"seed {bad[0]} is invalid: seeds must be integers in [0, 2**63)")
    if not seeds:
        raise ValueError("no seeds given")
    return list(dict.fromkeys(seeds))


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
) -> Report:
    """Edit every image with every (prompt, seed); see the module docstring for the layout and resume.
    ``Report.done`` / ``skipped`` hold (image stem, prompt index, seed) keys; ``failed`` names images."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with output_lock(output_dir / ".index.json.lock"):
        remove_stale_parts(output_dir)
        root = run_root_of(output_dir)
        run_settings = {
            **(record or {}),
            "steps": settings.steps,
            "guidance": settings.guidance,
            "resolution": settings.resolution,
            "batch_size": settings.batch_size,
            "model": editor.name,
            "editor": editor.family,
        }
        index = IndexFile(
            output_dir / "index.json",
            run_settings,
            "edits",
            ("image", "prompt_index", "seed"),
            ignore=NOT_OUTPUT_SETTINGS,
        )
        paths = list_images(images)
        # Prompt conditioning once for the whole run; then whatever the editor no longer needs can go.
        editor.prepare([p.text for p in prompts], release=release_text_encoders)
        groups = []
        for path in paths:
            source = {"input": run_relative(path, root)}
            if source["input"] is None:
                source["input_file"] = str(path.resolve())
            outputs = []
            for prompt in prompts:
                for seed in seeds:
                    fields = {
                        "image": path.stem,
                        **source,
                        "prompt": prompt.text,
                        "prompt_index": prompt.index,
                        "category": prompt.category,
                        "seed": seed,
                    }
                    out = edit_output_path(output_dir, path.stem, prompt.index, seed)
                    fields["output"] = run_relative(out, root)
                    outputs.append(Output((path.stem, prompt.index, seed), out, index.settings_for(fields), fields))
            groups.append(Group(path.name, path, outputs))

        def work(jobs: list[Job]) -> list[Made]:  # outputs of one image
            batch = [job.output for job in jobs]
            edited = editor.edit(
                image_to_pil(jobs[0].loaded),
                [o.fields["prompt"] for o in batch],
                [o.fields["seed"] for o in batch],
                settings.steps,
                settings.guidance,
                settings.resolution,
            )
            return [Made(lambda path, picture=picture: atomic_save(picture, path, format="PNG")) for picture in edited]

        with tqdm(
            total=sum(len(g.outputs) for g in groups), desc="edits", disable=not progress, dynamic_ncols=True
        ) as bar:
            return run_resumable(
                groups,
                index,
                work,
                load=load_image,
                batch_size=settings.batch_size,
                overwrite=overwrite,
                log=log,
                memory_hint=EDIT_MEMORY_HINT,
                progress=bar,
            )


def image_to_pil(image):
    from PIL import Image

    return Image.fromarray(image.rgb8, "RGB")
