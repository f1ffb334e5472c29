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
import time
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
class ProtectResult:
    pixels: torch.Tensor  # (B, 3, H, W) protected pixels in [0, 1], original size, on the CPU (not yet 8-bit)
    perturbation: torch.Tensor  # pixels - clean pixels
    working_size: tuple[int, int]  # (H, W) inside the editor
    before: dict[str, float]  # what the method measures (its ``measure()``) on the clean pixels
    after: dict[str, float]  # ... and on the protected ones
    history: list[dict] = field(default_factory=list)  # one record per PGD step: loss and the method's floats
    seconds: float = 0.0
    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)  # steps done -> pixels then (``snapshots=``)
    steps_run: int = 0  # PGD steps taken: the configured steps, or fewer when the stopping rule ended the run
    stop_reason: str = "budget"  # "budget" (every configured step ran) or the stopping rule's account of why it stopped
    # With ``seeds`` (images protected together, each as if alone): per image, its measures, steps and reason.
    image_before: list[dict] = field(default_factory=list)
    image_after: list[dict] = field(default_factory=list)
    image_steps: list[int] = field(default_factory=list)
    image_reasons: list[str] = field(default_factory=list)


def eot_transform(specs, editor=None):
    """The EOT transform of breaker specs (``decontext.purify.EOT``), or None without any."""
    if not specs:
        return None
    from .purify import EOT, parse_breakers

    return EOT(parse_breakers(list(specs)), editor)


def protect(
    editor: Editor,
    method: Method,
    pixels: torch.Tensor,
    config: ProtectConfig | None = None,
    seed: int = 0,
    transform=None,
    *,
    progress: bool = False,
    desc: str | None = None,
    snapshots=(),
    seeds: Sequence[int] | None = None,
) -> ProtectResult:
    """Protect ``pixels`` ((B, 3, H, W) or (3, H, W) in [0, 1], any size) against ``editor`` with ``method``.

    ``config`` sets the budget, the optimiser, the working size and the measure (default: the library's
    PGD settings, the paper's, under the method's own preferences, ``PGDConfig.for_method``); ``seed`` seeds every random draw (start, prompts, noise levels);
    ``transform``: a differentiable EOT transform ``t(x, generator)`` applied before the loss (default:
    the one of ``config.eot``). The method must apply to the editor (ValueError otherwise). Returns the
    protected pixels at the input's size (not yet rounded to 8 bits: ``images.save_protected`` does that
    within the budget) with the method's measure before and after.

    ``seeds`` (one per image of a batch): the images are protected together, each as if alone with its own
    seed (its own draws, step normalisation and stopping; ``PGD.run``), for throughput; the result carries
    each image's measures and steps. Needs a method that takes per-image draws (``Method.batched``)."""
    config = config or ProtectConfig(pgd=PGDConfig.for_method(method))
    method.check_applies(editor)
    if seeds is not None:
        if not method.batched:
            raise ValueError(
                f"method {method.name!r} protects one image at a time (several per step: "
                f"{', '.join(n for n, e in METHODS.items() if e.batched)})"
            )
        if transform is not None or config.eot:
            raise ValueError("EOT protects one image at a time; use a batch of 1 with --eot")
    began = time.perf_counter()
    x0 = (pixels[None] if pixels.dim() == 3 else pixels).detach().float().to(editor.device)
    height, width = x0.shape[-2:]
    size = editor.working_size(height, width, config.resolution)
    transform = transform if transform is not None else eot_transform(config.eot, editor)
    draws = config.measure_draws
    with method.session(editor):  # prepared once per editor; e.g. probes installed for this image only
        method.start(editor, x0, size)

        def measured(x: torch.Tensor) -> list[dict]:  # per image when each is its own run, else the batch's
            if not draws:
                return [{} for _ in range(len(x) if seeds is not None else 1)]
            return (
                [method.measure(editor, x[i : i + 1], size, draws) for i in range(len(x))]
                if seeds is not None
                else [method.measure(editor, x, size, draws)]
            )

        before = measured(x0)
        if config.init is not None:  # --init: PGD of this method from a protector's output
            from .methods.amortized import load_protector, protected_start

            start = protected_start(
                load_protector(config.init, editor.device), editor, x0, config.resolution, config.pgd.eps
            )
        else:
            start = method.initial(editor, x0, config.resolution)
        pgd = PGD(config=config.pgd, seed=seed, progress=progress, desc=desc or method.name, transform=transform)
        result = pgd.run(
            x0,
            lambda x, step, generator: method.loss(editor, x, size, step, generator),
            snapshots=snapshots,
            seeds=seeds,
            start_pixels=start,
        )
        after = measured(result.pixels)
    protected = result.pixels.detach().cpu()
    return ProtectResult(
        protected,
        protected - x0.cpu(),
        size,
        _mean(before),
        _mean(after),
        result.history,
        time.perf_counter() - began,
        {k: v.cpu() for k, v in result.snapshots.items()},
        result.steps_run,
        result.stop_reason,
        before if seeds is not None else [],
        after if seeds is not None else [],
        result.image_steps,
        result.image_reasons,
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
    config = config or ProtectConfig(pgd=PGDConfig.for_method(method))
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
            progress=progress,
            desc=f"{method.name} {stems}",
            seeds=seeds if len(jobs) > 1 else None,
        )
        records.data["method"] = method.config()  # with what preparing resolved (e.g. the blocks)
        made = []
        for i, (job, image) in enumerate(zip(jobs, images, strict=False)):
            pixels = outcome.pixels[i : i + 1]
            if max_level_diff(quantize(pixels, image.rgb8, config.pgd.eps), image.rgb8) == 0:
                raise ValueError(
                    f"the protection changed no pixel of {job.group.input.name} ({image.size[0]}x{image.size[1]}, "
                    f"working size {outcome.working_size[1]}x{outcome.working_size[0]}); nothing was saved"
                )

            def write(path: Path, pixels=pixels, image=image) -> dict:
                saved = save_protected(pixels, image, config.pgd.eps, path)
                return {"max_abs_diff_levels": max_level_diff(saved, image.rgb8)}

            one = len(jobs) == 1
            losses = [h["loss"] if one else h["losses"][i] for h in outcome.history if one or i in h.get("losses", {})]
            made.append(
                Made(
                    write,
                    {
                        "size": [image.size[0], image.size[1]],
                        "working_size": [outcome.working_size[1], outcome.working_size[0]],
                        "before": outcome.before if one else outcome.image_before[i],
                        "after": outcome.after if one else outcome.image_after[i],
                        "seconds": round(outcome.seconds / len(jobs), 3),
                        "seed": seeds[i],
                        "steps_run": outcome.image_steps[i],
                        "stop_reason": outcome.image_reasons[i],
                        "loss_first": losses[0] if losses else None,
                        "loss_last": losses[-1] if losses else None,
                        **({} if one else {"batch": len(jobs)}),
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
            f"{counter[group.name]}:{measured} max diff {entry['max_abs_diff_levels']} levels, {entry['seconds']:.1f}s -> {shown(batch[0].path)}"
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
