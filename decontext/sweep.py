"""Hyperparameter sweeps: a grid of protection settings, one run folder per point, one table at the end.

    python -m decontext sweep --name eps_toy --editor kontext --model toy --input faces/ --eps 8 16 --steps 50 100
    bash scripts/sweep_kontext.sh      # the same from shell variables (EPS="8 16" STEPS="50 100" ...)

Layout (docs/RUN_LAYOUT.md for each point):

    runs/<name>/sweep.json                  the grid and settings
    runs/<name>/_shared/{source, edits/clean}   sources and their clean edits, made once for every point
    runs/<name>/<point>/                    a run folder: source and edits/clean link to _shared;
                                            protected/, edits/protected/, summary.json, point.json
    runs/<name>/table.csv, table.md         every point's metrics (protected condition)
    runs/<name>/plot_<axis>.svg             the headline metric against each swept axis

Points run one at a time per device: on every visible CUDA GPU in parallel (one point per GPU), or on
the CPU. A point is done when its ``point.json`` says so; a re-run skips done points and resumes the
rest (each stage resumes by itself), then rewrites the table.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import queue
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

from .metrics.base import HEADLINES  # the first one a point has is the headline
from .names import csv_cell
from .plots import Chart

AXES = {  # axis -> attack flag
    "eps": "--eps",
    "alpha": "--alpha",
    "steps": "--steps",
    "blocks": "--blocks",
    "t_range": "--t-range",
    "method": "--method",
    "momentum": "--momentum",
    "schedule": "--schedule",
    "update": "--update",
}


def load_grid(path: str | Path) -> dict[str, list]:
    """A grid file: JSON ``{"eps": [8, 16], "method": ["decontext", "noise"], "t_range": ["0.98,1.0", "0,1"]}``."""
    path = Path(path)
    try:
        grid = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON grid ({exc})") from None
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ValueError(f'{path}: a grid is a JSON object of non-empty lists, e.g. {{"eps": [8, 16]}}')
    unknown = set(grid) - set(AXES)
    if unknown:
        raise ValueError(f"{path}: unknown axes {sorted(unknown)} (axes: {', '.join(AXES)})")
    return grid


def points(grid: dict[str, list]) -> list[dict]:
    """The cartesian product, in a stable order."""
    axes = list(grid)
    return [dict(zip(axes, values, strict=False)) for values in itertools.product(*(grid[a] for a in axes))]


def point_name(point: dict) -> str:
    """A folder name from the point's values: ``eps16_method-decontext_t_range-0.98-1.0``."""
    parts = []
    for axis, value in point.items():
        text = re.sub(r"[^A-Za-z0-9.]+", "-", str(value)).strip("-")
        parts.append(f"{axis}{text}" if isinstance(value, (int, float)) else f"{axis}-{text}")
    return "_".join(parts) or "default"


def attack_flags(point: dict) -> list[str]:
    flags = []
    for axis, value in point.items():
        flags.append(AXES[axis])
        flags.extend(str(value).replace(",", " ").split() if axis == "t_range" else [str(value)])
    return flags


def devices(spec: str) -> list[str]:
    """``auto``: every visible CUDA GPU, else the CPU; or ``cpu``, or GPU indices ``0,1``."""
    if spec == "auto":
        try:
            import torch

            count = torch.cuda.device_count()
        except Exception:  # pragma: no cover
            count = 0
        return [str(i) for i in range(count)] or ["cpu"]
    if spec == "cpu":
        return ["cpu"]
    return [d.strip() for d in spec.split(",") if d.strip()]


def _run(cmd: list[str], device: str, log: Path) -> None:
    env = dict(os.environ)
    if device != "cpu":
        env["CUDA_VISIBLE_DEVICES"] = device
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle:
        handle.write(f"$ {' '.join(cmd)}\n")
        handle.flush()
        code = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env).returncode
    if code not in (0, 1):  # 1: some images failed, reported inside; the rest is usable
        raise RuntimeError(f"{' '.join(cmd[1:4])} exited with {code} (see {log})")


def _link(target: Path, link: Path) -> None:
    if link.is_symlink() or link.exists():
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=True)


class Sweep:
    def __init__(self, args, grid: dict[str, list]):
        self.args = args
        self.grid = grid
        self.root = Path(args.runs) / args.name
        self.family = args.editor  # a family name (decontext.editors.FAMILIES)
        self.python = sys.executable

    def command(self, name: str) -> list[str]:
        """``python -m decontext <name>`` (for attack and edit: with this sweep's family)."""
        return [
            self.python,
            "-m",
            "decontext",
            name,
            *(["--family", self.family] if name in ("attack", "edit") else []),
        ]

    def common(self, device: str) -> list[str]:
        """Flags of both the attack and the editing command: the model, its loading options (--editor-args,
        e.g. Step1X-Edit's --prefix-file, which a real checkpoint needs at attack AND at edit time), the device."""
        return [
            "--model",
            self.args.model,
            *shlex.split(self.args.editor_args or ""),
            "--device",
            "cpu" if device == "cpu" else "cuda:0",
            "--dtype",
            self.args.dtype,
        ]

    def edit_flags(self) -> list[str]:
        flags = ["--seeds", *map(str, self.args.seeds), "--batch-size", str(self.args.batch_size), "--no-progress"]
        if self.args.prompts:
            flags += ["--prompts", self.args.prompts]
        if self.args.prompt_indices:
            flags += ["--prompt-indices", *map(str, self.args.prompt_indices)]
        if self.args.resolution:
            flags += ["--resolution", str(self.args.resolution)]
        return flags

    def shared(self, device: str) -> None:
        shared = self.root / "_shared"
        _run(
            [
                *self.command("runs"),
                "init",
                "--input",
                str(self.args.input),
                "--run",
                str(shared),
                "--model",
                self.args.model,
                "--editor",
                self.family,
            ],
            device,
            shared / "log.txt",
        )
        _run(
            [
                *self.command("edit"),
                *self.common(device),
                *self.edit_flags(),
                "--images",
                str(shared / "source"),
                "--output",
                str(shared / "edits" / "clean"),
            ],
            device,
            shared / "log.txt",
        )

    def run_point(self, point: dict, device: str) -> dict:
        folder = self.root / point_name(point)
        marker = folder / "point.json"
        if marker.is_file() and json.loads(marker.read_text()).get("done"):
            return {"point": point, "status": "skipped"}
        began = time.time()
        shared = self.root / "_shared"
        _link(shared / "source", folder / "source")
        _link(shared / "edits" / "clean", folder / "edits" / "clean")
        (folder / "run.json").write_text(
            json.dumps(
                {"model": self.args.model, "editor": self.family, "sweep": self.args.name, "point": point}, indent=2
            )
        )
        log = folder / "log.txt"
        attack = [
            *self.command("attack"),
            *self.common(device),
            "--input",
            str(folder / "source"),
            "--output",
            str(folder / "protected"),
            "--seed",
            str(self.args.seed),
            "--no-progress",
            *self.args.attack_args,
            *attack_flags(point),
        ]
        if self.args.attack_resolution:  # else the model's own working size
            attack += ["--resolution", str(self.args.attack_resolution)]
        if self.args.prompts:
            attack += ["--prompts", self.args.prompts]
        _run(attack, device, log)
        _run(
            [
                *self.command("edit"),
                *self.common(device),
                *self.edit_flags(),
                "--images",
                str(folder / "protected"),
                "--output",
                str(folder / "edits" / "protected"),
            ],
            device,
            log,
        )
        metrics = [*self.command("eval"), "--run", str(folder), "--no-progress"]
        if self.args.metrics:
            metrics += ["--metrics", self.args.metrics]
        _run(metrics, device, log)
        marker.write_text(
            json.dumps(
                {"point": point, "done": True, "seconds": round(time.time() - began, 1), "device": device}, indent=2
            )
        )
        return {"point": point, "status": "done"}

    def run(self, log=print) -> list[dict]:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "sweep.json").write_text(
            json.dumps(
                {"grid": self.grid, "settings": {k: v for k, v in vars(self.args).items() if k != "grid"}},
                indent=2,
                default=str,
            )
        )
        gpus = devices(self.args.devices)
        todo = points(self.grid)
        log(
            f"sweep {self.args.name}: {len(todo)} points on "
            f"{', '.join('cpu' if d == 'cpu' else f'GPU {d}' for d in gpus)}"
        )
        self.shared(gpus[0])
        jobs: queue.Queue = queue.Queue()
        for p in todo:
            jobs.put(p)
        results, lock = [], threading.Lock()

        def worker(device: str):
            while True:
                try:
                    point = jobs.get_nowait()
                except queue.Empty:
                    return
                try:
                    outcome = self.run_point(point, device)
                except Exception as exc:  # keep going; reported at the end
                    outcome = {"point": point, "status": "failed", "error": str(exc)}
                with lock:
                    results.append(outcome)
                    log(
                        f"  [{len(results)}/{len(todo)}] {point_name(point)}: {outcome['status']}"
                        f"{' - ' + outcome['error'] if 'error' in outcome else ''}"
                    )

        threads = [threading.Thread(target=worker, args=(d,)) for d in gpus]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        write_table(self.root, todo, self.args.condition, self.args.headline)
        return results


# ---------------------------------------------------------------------------------------------- the table and plots
def collect(root: Path, todo: list[dict], condition: str = "protected") -> list[dict]:
    rows = []
    for point in todo:
        summary_file = root / point_name(point) / "summary.json"
        row = {**point, "point": point_name(point)}
        if summary_file.is_file():
            summary = json.loads(summary_file.read_text()).get(condition, {})
            for metric, stat in summary.items():
                if isinstance(stat, dict) and "mean" in stat:
                    row[metric] = stat["mean"]
                    row[f"{metric}_low"], row[f"{metric}_high"] = stat.get("low"), stat.get("high")
        rows.append(row)
    return rows


def headline_of(rows: list[dict], preferred: str | None = None) -> str | None:
    for name in ([preferred] if preferred else []) + list(HEADLINES):
        if any(r.get(name) is not None for r in rows):
            return name
    return None


def write_table(
    root: Path, todo: list[dict], condition: str = "protected", preferred: str | None = None
) -> dict[str, Path]:
    rows = collect(root, todo, condition)
    axes = list(todo[0]) if todo else []
    metrics = sorted(
        {k for r in rows for k in r if k not in axes and k != "point" and not k.endswith(("_low", "_high"))}
    )
    fields = ["point", *axes, *[m for metric in metrics for m in (metric, f"{metric}_low", f"{metric}_high")]]
    with open(root / "table.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows([{k: csv_cell(v) if isinstance(v, str) else v for k, v in r.items()} for r in rows])
    headline = headline_of(rows, preferred)
    shown = ([headline] if headline else []) + [m for m in metrics if m != headline][:5]

    def fmt(r, m):
        return (
            ""
            if r.get(m) is None
            else (
                f"{r[m]:.4g} [{r[f'{m}_low']:.4g}, {r[f'{m}_high']:.4g}]"
                if r.get(f"{m}_low") is not None
                else f"{r[m]:.4g}"
            )
        )

    lines = [
        f"# Sweep {root.name}: condition '{condition}', headline {headline or '-'} (mean [95% CI])",
        "",
        "| " + " | ".join([*axes, *shown]) + " |",
        "|" + "---|" * (len(axes) + len(shown)),
    ]
    lines += ["| " + " | ".join([*(str(r[a]) for a in axes), *(fmt(r, m) for m in shown)]) + " |" for r in rows]
    (root / "table.md").write_text("\n".join(lines) + "\n")
    written = {"csv": root / "table.csv", "md": root / "table.md"}
    if headline:
        for axis in axes:
            path = root / f"plot_{axis}.svg"
            path.write_text(svg_plot(rows, axis, headline))
            written[f"plot_{axis}"] = path
    return written


def svg_plot(rows: list[dict], axis: str, metric: str, width: int = 480, height: int = 300) -> str:
    """Every point's ``metric`` (with its interval) against ``axis``, and the mean per axis value (a line);
    categorical axes are spaced evenly, numeric ones to scale."""
    data = [
        (r[axis], r[metric], r.get(f"{metric}_low"), r.get(f"{metric}_high")) for r in rows if r.get(metric) is not None
    ]
    chart = Chart(
        f"{metric} vs {axis}",
        [r[axis] for r in rows],
        [v for _, y, lo, hi in data for v in (y, lo, hi)],
        x_label=axis,
        width=width,
        height=height,
    )
    for x, y, lo, hi in data:
        chart.error_bar(x, lo, hi, "#99b")
        chart.marker(x, y, "#336", label=f"{axis}={x}: {y:.4g}", radius=3)
    means = [
        (v, sum(y for x, y, _, _ in data if x == v) / sum(1 for x, *_ in data if x == v))
        for v in chart.x_values
        if any(x == v for x, *_ in data)
    ]
    if len(means) > 1:
        chart.line(means, "#c33")
    return chart.svg()


# ---------------------------------------------------------------------------------------------- command line
