"""Protection of many photos as a Ray Data job: one model per actor, streaming, retries, exactly once.

    decontext cluster --input s3://bucket/uploads/ --output /shared/protected --model toy --method amortized \\
        --protector toy-decontext
    decontext cluster --address auto --input list.parquet --output /shared/out \\
        --model black-forest-labs/FLUX.1-Kontext-dev --gpus-per-actor 1 --actors 8

The stages stream into each other (``ray.data``): a read stage (Ray tasks) fetches each image's bytes from
wherever pyarrow reads (a local folder, a glob, a text list, a Parquet/CSV manifest; local paths or
s3://, gs://, hdfs://...) and hashes them; an actor stage protects them, one editor loaded per actor
(``--actors`` actors, each with ``--gpus-per-actor`` / ``--cpus-per-actor``), and writes each output into the output
folder. Decoding, protection and writing are ``decontext.protect.protect_groups``, the same per-file loop
as ``decontext attack``: same seeds per image, same settings, same resume rules, same pixels.

Exactly once: each actor appends its records to its own journal (``.cluster/journals/<actor>.jsonl``,
fsynced, pending before the file appears and done after), and the driver folds the journals into
``manifest.json`` at the end and at the start of a re-run. An actor that dies is restarted by Ray and its
unfinished batch retried (Ray Data's defaults for actors); the retry sees the dead actor's journal, so an
image it finished is skipped and one it left pending is redone. A killed driver takes its actors with
it; running the same command again merges what they journaled and does the rest. An image that fails
for its own reasons (unreadable, a non-finite loss) is recorded failed with the reason and not retried.

The output folder must be one every actor can write (local on one machine; a shared filesystem on a
cluster). ``decontext attack`` under ``accelerate launch`` remains the simple way to use the GPUs of one
machine on one folder (docs/CLUSTER.md says when to use which).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

WORK_DIR = ".cluster"  # inside the output folder while a job runs (journals, the job file); gone when it ends


@dataclass
class ClusterJob:
    """What a cluster job protects and how (JSON: the actors read it from ``output/.cluster/job.json``)."""

    inputs: str
    output: str
    family: str = "flux_kontext"
    model: str = "toy"
    method: str = "decontext"
    method_options: dict = field(default_factory=dict)
    weights: str | None = None
    compose_norm: str | None = None
    pgd: dict = field(default_factory=dict)  # PGDConfig fields, resolved
    resolution: str | int = "auto"
    measure_draws: int = 4
    eot: tuple = ()
    init: str | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    load_options: dict = field(default_factory=dict)
    batch_size: int = 1  # images per PGD step inside an actor
    args: dict = field(default_factory=dict)  # the command line as it took effect (manifest header)

    @property
    def journals(self) -> Path:
        return Path(self.output) / WORK_DIR / "journals"


# ---------------------------------------------------------------------------------------------- inputs
def _filesystem(spec: str):
    """(pyarrow filesystem, path in it) of a local path or a URI pyarrow reads (s3://, gs://, hdfs://, file://)."""
    from pyarrow import fs

    if "://" in spec:
        return fs.FileSystem.from_uri(spec)
    return fs.LocalFileSystem(), os.path.abspath(spec)


def _uri(filesystem, path: str) -> str:
    return path if filesystem.type_name == "local" else f"{filesystem.type_name}://{path}"


def list_inputs(spec: str) -> list[str]:
    """The images a job protects, as local paths or URIs: every image of a folder, the matches of a glob
    (``photos/*.jpg``), the lines of a text list (``.txt``), or the ``path`` (else ``image``/``input``)
    column of a Parquet or CSV manifest. Relative entries of a list or manifest are relative to its folder."""
    from pyarrow import fs

    from .images import IMAGE_SUFFIXES

    filesystem, path = _filesystem(spec)
    suffix = Path(path).suffix.lower()
    if suffix in (".txt", ".parquet", ".csv"):
        base = os.path.dirname(path)
        if suffix == ".txt":
            with filesystem.open_input_stream(path) as handle:
                entries = [
                    line.strip()
                    for line in handle.read().decode("utf-8").splitlines()
                    if line.strip() and not line.startswith("#")
                ]
        else:
            import pyarrow.csv
            import pyarrow.parquet

            with filesystem.open_input_file(path) as handle:
                table = pyarrow.parquet.read_table(handle) if suffix == ".parquet" else pyarrow.csv.read_csv(handle)
            column = next((c for c in ("path", "image", "input") if c in table.column_names), None)
            if column is None:
                raise ValueError(
                    f"{spec}: a manifest needs a column named path, image or input "
                    f"(it has {', '.join(table.column_names)})"
                )
            entries = [str(v) for v in table.column(column).to_pylist() if v]
        return [e if ("://" in e or os.path.isabs(e)) else _uri(filesystem, os.path.join(base, e)) for e in entries]
    if any(c in path for c in "*?["):
        folder, pattern = os.path.split(path)
        infos = filesystem.get_file_info(fs.FileSelector(folder, recursive=False))
        return sorted(
            _uri(filesystem, i.path)
            for i in infos
            if i.type == fs.FileType.File and fnmatch.fnmatch(os.path.basename(i.path), pattern)
        )
    info = filesystem.get_file_info(path)
    if info.type == fs.FileType.File:
        return [_uri(filesystem, path)]
    if info.type != fs.FileType.Directory:
        raise FileNotFoundError(f"{spec}: no such folder, file, glob, list or manifest")
    infos = filesystem.get_file_info(fs.FileSelector(path, recursive=False))
    return sorted(
        _uri(filesystem, i.path)
        for i in infos
        if i.type == fs.FileType.File and Path(i.path).suffix.lower() in IMAGE_SUFFIXES
    )


def read_batch(batch: dict) -> dict:
    """Ray task: each row's bytes (or why they could not be read) and SHA-256. Its workers import this module,
    which therefore imports nothing heavy at the top (no torch): on a small machine a dozen read workers each
    importing torch cost more than the protection of a few hundred toy photos."""
    data, digests, errors = [], [], []
    for uri in batch["uri"]:
        try:
            filesystem, path = _filesystem(str(uri))
            with filesystem.open_input_file(path) as handle:
                raw = handle.read()
            data.append(raw)
            digests.append(hashlib.sha256(raw).hexdigest())
            errors.append("")
        except Exception as exc:  # a missing object, a permission error: recorded as this image's failure
            data.append(b"")
            digests.append(f"unreadable: {exc}")
            errors.append(f"{type(exc).__name__}: {exc}")
    return {**batch, "data": data, "sha256": digests, "error": errors}


# ---------------------------------------------------------------------------------------------- the actor
class ProtectWorker:
    """Ray actor: loads the editor and method once, then protects batches of rows through the same loop as
    ``decontext attack`` (``protect.protect_groups``), journaling every record."""

    def __init__(self, job_file: str, threads: int | None = None):
        import torch

        from .config import PGDConfig, ProtectConfig
        from .editors import load_editor
        from .methods import build_from_options
        from .protect import header_of, output_settings
        from .runs import JournalFile
        from .runtime import avoid_cudnn_attention, quiet_libraries

        job = ClusterJob(**json.loads(Path(job_file).read_text(encoding="utf-8")))
        if threads:
            torch.set_num_threads(int(threads))
        quiet_libraries()
        avoid_cudnn_attention()
        self.job = job
        self.editor = load_editor(job.model, job.family, job.device, job.dtype, **job.load_options)
        self.method = build_from_options(job.method, job.method_options, job.weights, job.compose_norm)
        self.config = ProtectConfig(
            pgd=PGDConfig(**job.pgd),
            resolution=job.resolution,
            measure_draws=job.measure_draws,
            eot=tuple(job.eot),
            init=job.init,
        )
        self.settings = output_settings(self.editor, self.method, self.config, job.seed)
        known = _known_records(Path(job.output), job.journals)
        self.journal = JournalFile(
            job.journals / f"{uuid.uuid4().hex}.jsonl",
            header_of(self.editor, self.method, self.config, job.args),
            known,
        )
        self.journal.refresh = lambda: self.journal.images.update(_known_records(Path(job.output), job.journals))

    def __call__(self, batch: dict) -> dict:
        from .images import ImageLoadError, load_image
        from .protect import protect_groups
        from .runs import Group, Output

        output = Path(self.job.output)
        groups, data, errors = [], {}, {}
        for uri, raw, digest, error in zip(batch["uri"], batch["data"], batch["sha256"], batch["error"], strict=False):
            name = Path(str(uri).split("://")[-1])
            target = output / f"{name.stem}.png"
            if target.exists() and self.journal.recorded(Output(name.name, target, self.settings)) is None:
                self.journal.refresh()  # another actor (maybe one that died) made it: read what it journaled
            groups.append(
                Group(
                    name.name,
                    name,
                    [Output(name.name, target, self.settings, {"input": str(uri), "output": str(target)})],
                    sha256=digest,
                )
            )
            data[name.name], errors[name.name] = bytes(raw), str(error)

        def load(path: Path):
            if errors[path.name]:
                raise ImageLoadError(path, f"could not be read: {errors[path.name]}")
            return load_image(path, data=data[path.name])

        report = protect_groups(
            self.editor,
            self.method,
            groups,
            self.journal,
            self.config,
            self.job.seed,
            log=lambda *a, **k: None,
            progress=False,
            batch_size=self.job.batch_size,
            load=load,
        )
        status = {
            **{k: "done" for k in report.done},
            **{k: "skipped" for k in report.skipped},
            **{k: "failed" for k in report.failed},
        }
        names = [g.name for g in groups]
        return {
            "name": names,
            "status": [status.get(n, "failed") for n in names],
            "message": [report.failed.get(n, "") for n in names],
        }


def _known_records(output: Path, journals: Path) -> dict:
    """The folder's records: manifest.json overlaid with every journal line written so far (a line cut short is
    skipped)."""
    from .runs import read_record_file

    known = dict(read_record_file(output / "manifest.json").get("images", {}))
    for journal in sorted(journals.glob("*.jsonl")) if journals.is_dir() else []:
        for line in journal.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if "key" in entry:
                known[entry["key"]] = entry["record"]
    return known


# ---------------------------------------------------------------------------------------------- the driver
@dataclass
class ClusterReport:
    done: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    total: int = 0

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


def run_job(
    job: ClusterJob,
    actors: int = 2,
    gpus_per_actor: float = 0.0,
    cpus_per_actor: float = 1.0,
    address: str | None = None,
    read_batch_size: int = 8,
    log=print,
    progress_every: float = 5.0,
) -> ClusterReport:
    """Run ``job`` on a Ray cluster (``address``: "auto", "ray://host:10001", ...; None: the one this process
    is connected to, else a local one) and fold the records into ``job.output/manifest.json``."""
    import ray

    from .runs import merge_journals, output_lock, read_record_file, remove_stale_parts

    output = Path(job.output)
    output.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    report = ClusterReport()
    with output_lock(output / ".manifest.json.lock"):
        header = read_record_file(output / "manifest.json")
        merge_journals(
            output, job.journals, {k: v for k, v in header.items() if k != "images"}
        )  # what a killed run journaled
        remove_stale_parts(output)
        inputs = list_inputs(job.inputs)
        stems: dict[str, str] = {}
        rows = []
        for uri in inputs:
            stem = Path(uri.split("://")[-1]).stem
            if stem in stems:
                report.failed[uri] = f"{uri}: its output {stem}.png is also {stems[stem]}'s; rename one"
                continue
            stems[stem] = uri
            rows.append({"uri": uri})
        report.total = len(inputs)
        job_file = output / WORK_DIR / "job.json"
        job_file.parent.mkdir(parents=True, exist_ok=True)
        job_file.write_text(json.dumps(asdict(job), default=str), encoding="utf-8")
        started_here = not ray.is_initialized()
        if started_here:  # a local Ray (address None) lives as long as this job; a cluster's stays up
            ray.init(
                address=address,
                include_dashboard=False,
                configure_logging=False,
                log_to_driver=False,
                **({} if address else {"num_cpus": max(int(actors * cpus_per_actor) + 1, os.cpu_count() or 2)}),
            )
        try:
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False  # our own progress line below, not Ray's every-10-s operator dump
            context.print_on_execution_start = False
            log(
                f"cluster: {len(rows)} images, {actors} actors "
                f"({gpus_per_actor:g} GPU, {cpus_per_actor:g} CPU each) -> {output}"
            )
            dataset = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), actors * 8)))
            dataset = dataset.map_batches(read_batch, batch_size=read_batch_size, num_cpus=0.1)
            dataset = dataset.map_batches(
                ProtectWorker,
                fn_constructor_kwargs={"job_file": str(job_file), "threads": max(1, int(cpus_per_actor))},
                batch_size=job.batch_size,
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_gpus=gpus_per_actor or None,
                num_cpus=cpus_per_actor,
            )
            last = time.perf_counter()
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                for name, status, message in zip(batch["name"], batch["status"], batch["message"], strict=False):
                    if status == "done":
                        report.done += 1
                    elif status == "skipped":
                        report.skipped += 1
                    else:
                        report.failed[str(name)] = str(message)
                if time.perf_counter() - last >= progress_every:
                    last = time.perf_counter()
                    elapsed = last - began
                    log(
                        f"  {report.done} done, {report.skipped} skipped, "
                        f"{len(report.failed)} failed of {report.total} "
                        f"({report.done / elapsed:.2f} images/s)"
                    )
        finally:
            # Whatever happened (Ctrl-C, SIGTERM, an error), what the actors journaled is folded into the
            # manifest, and a local Ray goes down with its workers (none left running in the background).
            merge_journals(output, job.journals, None)
            if started_here and not address:
                ray.shutdown()
        shutil.rmtree(output / WORK_DIR, ignore_errors=True)
        remove_stale_parts(output)
    report.seconds = time.perf_counter() - began
    return report
