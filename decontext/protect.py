"""Protect pixels: ``protect(editor, method, pixels, config, seed)``, the one library call.

It owns the sequence every caller needs: the method is prepared for the editor once, holds what it
needs on it for this image (e.g. attention probes), sees the clean pixels (``start``), is measured,
drives PGD from the configured start, and is measured again. The file driver below (``protect_files``),
the benches, the amortized trainer, cluster jobs and the app all call it; none restates it.

``protect_files`` adds what a folder of photos needs: the resumable per-file loop of ``decontext.runs``
(exact resume by input SHA-256 and settings, a lock, failures named while the batch goes on), 8-bit
saving that keeps the budget exactly, and the manifest.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .config import PGDConfig, ProtectConfig
from .editors.base import Editor
from .images import list_images, load_image, max_level_diff, quantize, save_protected
from .methods import METHODS
from .methods.base import Method
from .names import shown
from .pgd import PGD
from .runs import (
    ATTACK_MEMORY_HINT,
    Group,
    Job,
    Made,
    ManifestFile,
    Output,
    RecordFile,
    Report,
    image_seed,
    library_versions,
    output_lock,
    plain_json,
    plan_protected_outputs,
    remove_stale_parts,
    run_resumable,
)


@dataclass
class ImageRecord:
    """One image's protection: what the method measured before and after, the steps it ran and why it stopped."""

    before: dict[str, float]  # the method's ``measure()`` on the clean pixels ({} with no measure draws)
    after: dict[str, float]  # ... and on the protected ones
    steps_run: int  # the configured steps, or fewer when the stopping rule ended this image's run
    stop_reason: str  # "budget" (every configured step ran) or the stopping rule's account of why it stopped
    losses: list[float] = field(default_factory=list)  # its loss at each PGD step it ran


@dataclass
class ProtectResult:
    """A batch's protection: the pixels, one ``ImageRecord`` per image, and the run's step log. A single
    image is a batch of one; ``before``, ``after``, ``steps_run`` and ``stop_reason`` summarise the batch."""

    pixels: torch.Tensor  # (B, 3, H, W) protected pixels in [0, 1], original size, on the CPU (not yet 8-bit)
    perturbation: torch.Tensor  # pixels - clean pixels
    working_size: tuple[int, int]  # (H, W) inside the editor
    images: list[ImageRecord]  # one per image, in the batch's order
    history: list[dict] = field(default_factory=list)  # per PGD step: the active images' mean loss, method's floats
    seconds: float = 0.0
    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)  # steps done -> pixels then (``snapshots=``)

    @property
    def before(self) -> dict[str, float]:
        """The images' mean measure before protection."""
        return _mean([image.before for image in self.images])

    @property
    def after(self) -> dict[str, float]:
        return _mean([image.after for image in self.images])

    @property
    def steps_run(self) -> int:
        """The most PGD steps any image ran."""
        return max(image.steps_run for image in self.images)

    @property
    def stop_reason(self) -> str:
        """The images' common reason to stop, or "per image"."""
        reasons = {image.stop_reason for image in self.images}
        return reasons.pop() if len(reasons) == 1 else "per image"


def eot_transform(specs, editor=None, extra=()):
    """The EOT transform of breaker specs and ``extra`` cases shaped like breakers (the trainer's attackers in
    the loop; ``decontext.purify.EOT``), or None without any."""
    if not specs and not extra:
        return None
    from .purify import EOT, parse_breakers

    return EOT((parse_breakers(list(specs)) if specs else []) + list(extra), editor)


def protect(
    editor: Editor,
    method: Method,
    pixels: torch.Tensor,
    config: ProtectConfig | None = None,
    seed: int = 0,
    transform=None,
    *,
    seeds: Sequence[int] | None = None,
    progress: bool = False,
    desc: str | None = None,
    snapshots=(),
) -> ProtectResult:
    """Protect ``pixels`` ((B, 3, H, W) or (3, H, W) in [0, 1], any size) against ``editor`` with ``method``.

    ``config`` sets the budget, the optimiser, the working size, the measure and the start (default: the
    library's PGD settings, the paper's, under the method's own preferences, ``PGDConfig.for_method``).
    Every image is protected as if alone: image i has its own seed, ``seeds[i]`` (default ``seed + i``),
    which draws its start, prompts, noise levels and noise, and its own step normalisation, stopping and
    measure (``PGD.run``); batching only buys throughput. ``transform``: a differentiable EOT transform
    ``t(x, generator)`` applied before the loss (default: the one of ``config.eot``). The method must
    apply to the editor (ValueError otherwise); several images per step need a method that takes
    per-image draws (``Method.batched``). Returns the protected pixels at the input's size (not yet
    rounded to 8 bits: ``images.save_protected`` does that within the budget) with one record per image."""
    config = (config or ProtectConfig(pgd=PGDConfig.for_method(method))).for_editor(editor)
    method.check_applies(editor)
    x0 = (pixels[None] if pixels.dim() == 3 else pixels).detach().float().to(editor.device)
    seeds = [seed + i for i in range(len(x0))] if seeds is None else [int(s) for s in seeds]
    if len(seeds) != len(x0):
        raise ValueError(f"{len(seeds)} seeds for {len(x0)} images")
    if len(x0) > 1 and not method.batched:
        raise ValueError(
            f"method {method.name!r} protects one image at a time (several per step: "
            f"{', '.join(n for n, e in METHODS.items() if e.batched)})"
        )
    began = time.perf_counter()
    height, width = x0.shape[-2:]
    size = editor.working_size(height, width, config.resolution)
    transform = transform if transform is not None else eot_transform(config.eot, editor)
    draws = config.measure_draws

    def measured(x: torch.Tensor) -> list[dict]:
        return [method.measure(editor, x[i : i + 1], size, draws) if draws else {} for i in range(len(x))]

    with method.session(editor):  # prepared once per editor; e.g. probes installed for this image only
        method.start(editor, x0, size)
        before = measured(x0)
        pgd = PGD(config=config.pgd, seed=seed, progress=progress, desc=desc or method.name, transform=transform)
        result = pgd.run(
            x0,
            lambda x, step, generators: method.loss(editor, x, size, step, generators),
            seeds,
            snapshots=snapshots,
            start_pixels=method.initial(editor, x0, config),
        )
        after = measured(result.pixels)
    protected = result.pixels.detach().cpu()
    images = [
        ImageRecord(*record)
        for record in zip(before, after, result.image_steps, result.image_reasons, result.image_losses, strict=True)
    ]
    return ProtectResult(
        protected,
        protected - x0.cpu(),
        size,
        images,
        result.history,
        time.perf_counter() - began,
        {k: v.cpu() for k, v in result.snapshots.items()},
    )


def _mean(measures: list[dict]) -> dict[str, float]:
    """The mean of per-image measures (one dict: itself)."""
    if len(measures) == 1:
        return measures[0]
    return {k: sum(m[k] for m in measures) / len(measures) for k in measures[0]} if measures and measures[0] else {}


def output_settings(editor: Editor, method: Method, config: ProtectConfig, seed: int) -> dict:
    """Everything the protected pixels depend on (not the device, the progress bar or the measurements),
    recorded per image in the manifest: a re-run skips an image only when these are equal."""
    method_config = {k: v for k, v in method.config().items() if not k.startswith("resolved")}  # filled by prepare()
    prompts = getattr(method, "prompts", None)
    if prompts:
        method_config["prompts_sha256"] = hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()
    settings = {
        "method": method_config,
        "pgd": config.pgd.to_dict(),
        "eot": list(config.eot),
        "resolution": config.resolution,
        "seed": seed,
        "editor": {"family": editor.family, "model": editor.name, "dtype": str(editor.dtype)},
    }
    if config.init is not None:  # only then, so the settings of runs without it stay what they were
        from .methods.amortized import weights_digest

        settings["init"] = {"protector": config.init, "sha256": weights_digest(config.init)}
    return plain_json(settings)


def protect_files(
    editor: Editor,
    method: Method,
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    config: ProtectConfig | None = None,
    seed: int = 0,
    args_record: dict | None = None,
    shard: tuple[int, int] = (0, 1),
    manifest_name: str = "manifest.json",
    log=print,
    overwrite: bool = False,
    progress: bool = True,
    batch_size: int = 1,
) -> Report:
    """Protect a file or every image of a folder into ``output_dir/<stem>.png`` + ``manifest.json``.

    Each image gets its own seed from ``seed`` and its file name (``runs.image_seed``), so results do
    not depend on order or sharding; ``shard=(rank, world)`` protects only the rank's share of the
    inputs. A method that does not apply to the editor is a ValueError before anything is written.
    Resume is exact (``runs.resume_decision``); ``overwrite`` redoes outputs made with other settings. A
    second process on the same manifest is refused (``runs.OutputBusyError``) before anything is written.
    ``batch_size`` > 1: up to that many consecutive images of one size are protected together, each as if
    alone (``protect(seeds=...)``); the same results within float tolerance, more images a second.
    """
    config = (config or ProtectConfig(pgd=PGDConfig.for_method(method))).for_editor(editor)
    method.check_applies(editor)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with output_lock(output_dir / f".{manifest_name}.lock"):
        inputs = list_images(input_path)
        pairs, problems = plan_protected_outputs(inputs, output_dir)
        rank, world = shard
        if world == 1:  # the shards of a multi-process run write side by side, each under its own manifest's lock
            remove_stale_parts(output_dir)
        pairs = pairs[rank::world]
        manifest = ManifestFile(output_dir / manifest_name, header_of(editor, method, config, args_record))
        report = Report()
        if rank == 0:
            for name, message in problems.items():
                report.failed[name] = message
                manifest.images[Path(name).name] = {"input": name, "status": "failed", "error": message}
                log(f"error: {shown(message)}")
        current = output_settings(editor, method, config, seed)
        groups = [
            Group(path.name, path, [Output(path.name, out, current, {"input": str(path), "output": str(out)})])
            for path, out in pairs
        ]
        run_report = protect_groups(
            editor,
            method,
            groups,
            manifest,
            config,
            seed,
            log=log,
            overwrite=overwrite,
            progress=progress,
            batch_size=batch_size,
        )
    report.done += run_report.done
    report.skipped += run_report.skipped
    report.failed.update(run_report.failed)
    return report


def header_of(editor: Editor, method: Method, config: ProtectConfig, args_record: dict | None = None) -> dict:
    """The top of a protection manifest: what ran, once."""
    return {
        "args": args_record or {},
        "method": method.config(),
        "pgd": config.pgd.to_dict(),
        "eot": list(config.eot),
        **({"init": config.init} if config.init is not None else {}),
        "editor": {"family": editor.family, "model": editor.name},
        "versions": library_versions(),
    }


def protect_groups(
    editor: Editor,
    method: Method,
    groups: list[Group],
    records: RecordFile,
    config: ProtectConfig,
    seed: int,
    *,
    log=print,
    overwrite: bool = False,
    progress: bool = True,
    batch_size: int = 1,
    load=load_image,
) -> Report:
    """Protect each group's input into its one output through the resumable loop (``runs.run_resumable``),
    recording into ``records`` (a folder's manifest, or a cluster worker's journal). ``load(path)`` reads an
    input (default: from disk)."""
    counter = {group.name: f"[{i + 1}/{len(groups)}] {shown(group.name)}" for i, group in enumerate(groups)}

    def work(jobs: list[Job]) -> list[Made]:  # images of one size, protected together when there are several
        images = [job.loaded for job in jobs]
        seeds = [image_seed(seed, job.group.input.stem) for job in jobs]
        stems = " ".join(job.group.input.stem for job in jobs)
        outcome = protect(
            editor,
            method,
            torch.cat([image.pixels for image in images]),
            config,
            seeds[0],
            seeds=seeds,
            progress=progress,
            desc=f"{method.name} {stems}",
        )
        records.data["method"] = method.config()  # with what preparing resolved (e.g. the blocks)
        made = []
        for i, (job, image, record) in enumerate(zip(jobs, images, outcome.images, strict=True)):
            pixels = outcome.pixels[i : i + 1]
            if max_level_diff(quantize(pixels, image.rgb8, config.pgd.eps), image.rgb8) == 0:
                raise ValueError(
                    f"the protection changed no pixel of {job.group.input.name} ({image.size[0]}x{image.size[1]}, "
                    f"working size {outcome.working_size[1]}x{outcome.working_size[0]}); nothing was saved"
                )

            def write(path: Path, pixels=pixels, image=image) -> dict:
                saved = save_protected(pixels, image, config.pgd.eps, path)
                return {"max_abs_diff_levels": max_level_diff(saved, image.rgb8)}

            made.append(
                Made(
                    write,
                    {
                        "size": [image.size[0], image.size[1]],
                        "working_size": [outcome.working_size[1], outcome.working_size[0]],
                        "before": record.before,
                        "after": record.after,
                        "seconds": round(outcome.seconds / len(jobs), 3),
                        "seed": seeds[i],
                        "steps_run": record.steps_run,
                        "stop_reason": record.stop_reason,
                        "loss_first": record.losses[0] if record.losses else None,
                        "loss_last": record.losses[-1] if record.losses else None,
                        **({} if len(jobs) == 1 else {"batch": len(jobs)}),
                    },
                )
            )
        return made

    def done(group: Group, batch: list[Output], entries: list[dict]) -> None:
        entry = entries[0]
        measured = "".join(
            f" {k} {v:.4f} -> {entry['after'][k]:.4f}," for k, v in entry["before"].items() if k in entry["after"]
        )
        log(
            f"{counter[group.name]}:{measured} max diff {entry['max_abs_diff_levels']} levels, "
            f"{entry['seconds']:.1f}s -> {shown(batch[0].path)}"
        )

    outputs = {group.name: group.outputs[0].path for group in groups}

    def skipped(key) -> None:
        log(f"{counter[key]}: already protected with the same settings ({shown(outputs[key])}), skipped")

    return run_resumable(
        groups,
        records,
        work,
        load=load,
        overwrite=overwrite,
        log=log,
        memory_hint=ATTACK_MEMORY_HINT,
        on_done=done,
        on_skip=skipped,
        batch_size=batch_size,
        batch_key=lambda group, image: tuple(image.pixels.shape),
    )


class _CallableModule(types.ModuleType):
    """``decontext.protect`` names this module (the import system sets the package's attribute to it), and
    library users call it as the function of the same name: called, the module is that function."""

    def __call__(self, *args, **kwargs) -> ProtectResult:
        return protect(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
