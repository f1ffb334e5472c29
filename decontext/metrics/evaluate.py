"""Score a run with a list of backends and write metrics.csv, inputs.csv, summary.md/json."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from decontext.images import atomic_write
from decontext.metrics.base import HEADLINES, MetricBackend, MetricSpec
from decontext.metrics.bootstrap import PAIR_KEY, bootstrap_mean_ci, paired_difference_ci
from decontext.metrics.run import CLEAN, ImageLoadError, RunData
from decontext.names import csv_cell, shown

EDIT_FIELDS = ("condition", "image", "identity", "category", "prompt_index", "seed", "prompt", "output", "error")
INPUT_FIELDS = ("condition", "image", "identity", "input", "error")


@dataclass
class EvalResult:
    run: RunData
    specs: list[MetricSpec]  # every metric of every backend, in column order
    unavailable: dict[str, str]  # metric name -> reason
    sources: dict[str, str] = field(
        default_factory=dict
    )  # metric name -> what produced it (network, weights, detector)
    edit_rows: list[dict] = field(default_factory=list)
    input_rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    not_run: dict[str, str] = field(default_factory=dict)  # backend name -> why it does not apply to this run

    @property
    def errors(self) -> list[str]:
        return self.run.errors

    def spec(self, name: str) -> MetricSpec:
        return next(s for s in self.specs if s.name == name)


def _rel(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return os.path.relpath(path, root)
        except ValueError:
            pass
    return str(path)


def _load_backends(backends: list[MetricBackend], run: RunData) -> tuple[list[MetricBackend], dict[str, str]]:
    unavailable: dict[str, str] = {}
    active: list[MetricBackend] = []
    for b in backends:
        try:
            b.load()
        except Exception as exc:  # load() should not raise; be safe anyway
            b._unavailable(f"{type(exc).__name__} while loading: {exc}")
        if b.available:
            try:
                b.prepare(run)
            except Exception as exc:
                b._unavailable(f"preparation failed: {type(exc).__name__}: {exc}")
        if b.available:
            active.append(b)
        else:
            for spec in b.metrics:
                unavailable[spec.name] = b.unavailable_reason or "unavailable"
    return active, unavailable


def _apply(backend: MetricBackend, fn, row: dict, run: RunData, label: str) -> None:
    try:
        values = fn()
    except ImageLoadError as exc:
        run.note_error(str(exc))
        row["error"] = "; ".join(filter(None, [row.get("error"), f"unreadable: {exc.path.name}"]))
        return
    except Exception as exc:
        run.note_error(f"{backend.name} failed on {label}: {type(exc).__name__}: {exc}")
        return
    allowed = set(backend.metric_names())
    row.update({k: v for k, v in values.items() if k in allowed})


def evaluate_run(
    run: RunData,
    backends: list[MetricBackend],
    progress: bool = True,
    root: Path | None = None,
    not_run: dict[str, str] | None = None,
) -> EvalResult:
    """Load the backends (unavailable ones are reported, not fatal) and score every input and edit.
    ``not_run``: backends left out because they do not apply to this run, with why (``base.not_applying``)."""
    active, unavailable = _load_backends(backends, run)
    specs = [s for b in backends for s in b.metrics]
    result = EvalResult(
        run,
        specs,
        unavailable,
        {s.name: b.source for b in active if b.source for s in b.metrics},
        not_run=dict(not_run or {}),
    )
    if any(s.name.startswith("psnr") for s in specs):
        cap = backends[0].options.psnr_cap_db
        result.notes.append(f"PSNR of identical images is infinite; PSNR values are capped at {cap:g} dB.")

    # imperceptibility: each protected input vs its source
    input_backends = [b for b in active if b.metric_names("input")]
    for cond in [c for c in run.conditions if c != CLEAN and c in run.input_dirs]:
        for stem in run.stems:
            src = run.source_path(stem)
            inp = run.input_path(cond, stem)
            if src is None and inp is None:
                continue
            row = {
                "condition": cond,
                "image": stem,
                "identity": run.identity(stem),
                "input": _rel(inp, root) if inp else "",
                "error": "",
            }
            if src is None or inp is None:
                missing = "source" if src is None else f"{cond} input"
                row["error"] = f"no {missing} image"
                run.note_error(f"{stem}: no {missing} image; imperceptibility of '{cond}' not scored")
            else:
                for b in input_backends:
                    _apply(b, lambda b=b, cond=cond, stem=stem: b.score_input(cond, stem, run), row, run, str(inp))
            result.input_rows.append(row)

    # edits
    edit_backends = [b for b in active if b.metric_names("edit")]
    for edit in tqdm(run.edits, desc="scoring edits", unit="edit", disable=not progress):
        row = {
            "condition": edit.condition,
            "image": edit.stem,
            "identity": run.identity(edit.stem),
            "category": edit.category,
            "prompt_index": edit.prompt_index,
            "seed": edit.seed,
            "prompt": edit.prompt,
            "output": _rel(edit.output, root),
            "error": "",
        }
        try:
            run.image(edit.output)
        except ImageLoadError as exc:
            run.note_error(str(exc))
            row["error"] = f"unreadable: {exc.reason}"
            result.edit_rows.append(row)
            continue
        for b in edit_backends:
            _apply(b, lambda b=b, edit=edit: b.score_edit(edit, run), row, run, str(edit.output))
        result.edit_rows.append(row)
    return result


# -- summary --------------------------------------------------------------------------------------


def _values(rows: list[dict], metric: str) -> list[float]:
    out = []
    for r in rows:
        v = r.get(metric)
        if isinstance(v, (int, float)) and math.isfinite(v):
            out.append(float(v))
    return out


def _stats(result: EvalResult, spec: MetricSpec, rows: list[dict], n_boot: int, seed: int) -> dict:
    if spec.name in result.unavailable:
        return {
            "mean": None,
            "low": None,
            "high": None,
            "n": 0,
            "available": False,
            "reason": result.unavailable[spec.name],
        }
    d = bootstrap_mean_ci(_values(rows, spec.name), n_boot=n_boot, seed=seed).as_dict()
    d["available"] = True
    return d


def summarize(result: EvalResult, n_boot: int = 2000, seed: int = 0) -> dict:
    """summary.json: ``{condition: {metric: {mean, low, high, n, available[, reason]}}}`` plus
    metadata under keys starting with ``_`` (by-category tables, directions, unavailable metrics,
    problems, notes, and ``_paired``: each protected condition against clean and its noise control on
    the headline metric, see ``paired_summary``)."""
    out: dict = {}
    by_cat: dict = {}
    for cond in result.run.conditions:
        edits = [r for r in result.edit_rows if r["condition"] == cond]
        inputs = [r for r in result.input_rows if r["condition"] == cond]
        table = {}
        for spec in result.specs:
            if spec.conditions == "protected" and cond == CLEAN:
                continue
            table[spec.name] = _stats(result, spec, edits if spec.scope == "edit" else inputs, n_boot, seed)
        out[cond] = table
        cats: dict = {}
        for cat in sorted({r["category"] for r in edits}):
            rows = [r for r in edits if r["category"] == cat]
            cats[cat] = {
                s.name: _stats(result, s, rows, n_boot, seed)
                for s in result.specs
                if s.scope == "edit" and not (s.conditions == "protected" and cond == CLEAN)
            }
        by_cat[cond] = cats
    out["_by_category"] = by_cat
    out["_metrics"] = {
        s.name: {
            "direction": s.direction,
            "scope": s.scope,
            "description": s.description,
            **({"source": result.sources[s.name]} if s.name in result.sources else {}),
        }
        for s in result.specs
    }
    out["_unavailable"] = dict(result.unavailable)
    out["_not_run"] = dict(result.not_run)
    out["_errors"] = list(result.errors)
    out["_notes"] = list(result.notes) + [
        f"Intervals: 95% percentile bootstrap of the mean, {n_boot} resamples, seed {seed}.",
        "Paired differences: condition minus reference on the same edits (image, prompt, seed), averaged per identity; "
        f"95% interval from a bootstrap that resamples identities, {n_boot} resamples, seed {seed}.",
        "direction = which way is better protection (higher/lower).",
    ]
    out["_run"] = {
        "model": result.run.info.model,
        "editor": result.run.info.editor,
        "edits": len(result.edit_rows),
        "inputs": len(result.input_rows),
        "identities": len({r["identity"] for r in result.edit_rows}) or len({r["identity"] for r in result.input_rows}),
        "protection": {c: d for c in result.run.conditions if (d := result.run.protection(c))},
    }
    out["_paired"] = paired_summary(result, out, n_boot, seed)
    return out


def conditions_of(summary: dict) -> list[str]:
    return [k for k in summary if not k.startswith("_")]


def fmt_stat(d: dict | None, digits: int = 4) -> str:
    if d is None:
        return ""
    if not d.get("available", True):
        return "unavailable"
    if d["n"] == 0 or d["mean"] is None:
        return "n/a (n=0)"
    return f"{d['mean']:.{digits}g} [{d['low']:.{digits}g}, {d['high']:.{digits}g}] (n={d['n']})"


_ARROW = {"higher": "higher", "lower": "lower", "none": "-"}


def measured(summary_part: dict, conds: list[str], metric: str) -> bool:
    """Whether ``metric`` was computed for some condition (an unavailable backend's metrics were not)."""
    return any(m is not None and m.get("available", True) for m in (summary_part.get(c, {}).get(metric) for c in conds))


def _md_table(summary_part: dict, conds: list[str], metrics: dict) -> list[str]:
    lines = ["| metric | better protection | " + " | ".join(conds) + " |", "|---|---|" + "---|" * len(conds)]
    names = [m for m in metrics if measured(summary_part, conds, m)]
    for m in names:
        cells = [fmt_stat(summary_part.get(c, {}).get(m)) if m in summary_part.get(c, {}) else "-" for c in conds]
        lines.append(f"| {m} | {_ARROW[metrics[m]['direction']]} | " + " | ".join(cells) + " |")
    return lines


def not_measured_lines(summary: dict) -> list[str]:
    """One line per reason: the metrics this run has no value of, folded together (a backend without its
    package or weights, or one that means nothing for the run, e.g. face recognition on toy drawings)."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in summary.get("_not_run", {}).items():
        by_reason.setdefault(reason, []).append(name)
    for name, reason in summary.get("_unavailable", {}).items():
        by_reason.setdefault(reason, []).append(name)
    return [f"{', '.join(names)}: {reason}" for reason, names in by_reason.items()]


def describe_run(summary: dict) -> str:
    """``toy FLUX.1-Kontext editor (model `toy`), 20 identities, 360 edits``; says when the folders did not record the
    model."""
    run = summary["_run"]
    model, editor = run.get("model", "unknown"), run.get("editor", "unknown")
    what = (
        "model and editor not recorded (no run.json, index.json or manifest names them)"
        if model == editor == "unknown"
        else f"model `{model}`, editor `{editor}`"
    )
    return f"{what}; {run.get('identities', 0)} identities, {run['edits']} edits, {run['inputs']} protected inputs"


def summary_markdown(summary: dict, title: str = "Evaluation summary") -> str:
    conds = conditions_of(summary)
    metrics = summary["_metrics"]
    lines = (
        [f"# {title}", ""]
        + verdict_lines(summary)
        + ["", f"Run: {describe_run(summary)}.", "", "## Headline: paired differences", ""]
    )
    lines += [f"- {line}" for line in paired_lines(summary)] + [
        "",
        "## By condition",
        "",
        "Cells: mean [95% bootstrap interval] (n). "
        "'better protection' says which direction means the protection worked better.",
        "",
    ]
    lines += _md_table(summary, conds, metrics)
    folded = not_measured_lines(summary)
    if folded:
        lines += ["", "Not measured in this run: " + "; ".join(line.replace("|", "/") for line in folded) + "."]
    cats = sorted({c for per in summary["_by_category"].values() for c in per})
    if cats:
        lines += ["", "## By prompt category"]
        for cat in cats:
            part = {c: summary["_by_category"].get(c, {}).get(cat, {}) for c in conds}
            lines += ["", f"### {cat}", ""] + _md_table(
                part, conds, {k: v for k, v in metrics.items() if v["scope"] == "edit"}
            )
    lines += ["", "## Metrics", ""] + [
        f"- `{m}` ({v['scope']}): {v['description']}" + (f" Computed with: {v['source']}." if v.get("source") else "")
        for m, v in metrics.items()
        if measured(summary, conds, m)
    ]
    lines += ["", "## Notes", ""] + [f"- {n}" for n in summary["_notes"]]
    errs = summary["_errors"]
    lines += ["", f"## Problems ({len(errs)})", ""] + ([f"- {e}" for e in errs] if errs else ["None."])
    return "\n".join(lines) + "\n"


def headline_metric(summary: dict) -> str | None:
    """The first of ``HEADLINES`` with a value in some condition: the one metric the paired lines, the
    sweep's plots and tables lead with (every one is an edit metric with a protection direction)."""
    for name in HEADLINES:
        if name in summary["_metrics"] and any((summary[c].get(name) or {}).get("n") for c in conditions_of(summary)):
            return name
    return None


def is_noise(condition: str) -> bool:
    """A random-noise control: a condition named ``noise`` or starting with it (``noise@jpeg75``, ``noise_l2``)."""
    return condition.startswith("noise")


def noise_reference(condition: str, conditions: list[str]) -> str | None:
    """The noise control a protected condition is compared with: for a purified copy ``X@b`` the noise
    control purified the same way (``noise@b``) when the run has it, else the plain one (``noise``).
    None for a noise condition itself, or when the run has no noise control."""
    if is_noise(condition):
        return None
    purifier = condition.partition("@")[2]
    for wanted in ([purifier] if purifier else []) + [""]:
        found = [c for c in conditions if is_noise(c) and c.partition("@")[2] == wanted]
        if found:
            preferred = f"noise@{wanted}" if wanted else "noise"
            return preferred if preferred in found else found[0]
    return None


def paired_summary(result: EvalResult, summary: dict, n_boot: int, seed: int) -> dict:
    """``summary["_paired"]``: on the headline metric, every protected condition minus clean and minus
    its noise control (``noise_reference``), paired edit by edit with an identity-resampling interval
    (``paired_difference_ci``). Unlike the per-condition intervals, this one removes the spread that
    both conditions share, so it is the comparison to read first."""
    metric = headline_metric(summary)
    if metric is None:
        return {"metric": None, "reason": f"none of {', '.join(HEADLINES)} has values in this run"}
    conds = result.run.conditions
    rows = {c: [r for r in result.edit_rows if r["condition"] == c] for c in conds}
    entries = []
    for cond in conds:
        if cond == CLEAN:
            continue
        versus = []
        for ref in [CLEAN, noise_reference(cond, conds)]:
            if ref is None or ref not in rows:
                continue
            d = paired_difference_ci(rows[cond], rows[ref], metric, n_boot=n_boot, seed=seed)
            versus.append(
                {
                    "reference": ref,
                    "condition_mean": d.condition_mean,
                    "reference_mean": d.reference_mean,
                    "diff": {
                        "mean": d.diff.mean,
                        "low": d.diff.low,
                        "high": d.diff.high,
                        "identities": d.diff.n,
                        "pairs": d.diff.items,
                    },
                    **(
                        {"reason": no_pairs_reason(rows[cond], rows[ref], cond, ref, metric)}
                        if d.diff.mean is None
                        else {}
                    ),
                }
            )
        entries.append({"condition": cond, "versus": versus})
    return {"metric": metric, "direction": summary["_metrics"][metric]["direction"], "conditions": entries}


def no_pairs_reason(cond_rows: list[dict], ref_rows: list[dict], cond: str, ref: str, metric: str) -> str:
    """Why ``cond`` has no paired value against ``ref``: no edits, no edit in common, or no values."""
    if not cond_rows or not ref_rows:
        return f"no edits of {cond if not cond_rows else ref} in this run"
    keys = {tuple(r[k] for k in PAIR_KEY) for r in ref_rows}
    common = [r for r in cond_rows if tuple(r[k] for k in PAIR_KEY) in keys]
    if not common:
        return (
            f"none of the {len(cond_rows)} {cond} edits has a {ref} edit of the same image, prompt and seed "
            f"({len(ref_rows)} {ref} edits): were they made with other prompts, seeds or file names?"
        )
    return f"{metric} has no value on the {len(common)} edits {cond} and {ref} share (see Problems)"


_PLAIN = {  # headline metric -> (what it is, in words; what a better protection does to it)
    "toy_identity": (
        "toy identity of the edits (0-1: how much of the person the toy reader still finds)",
        "the edits kept less of the person",
    ),
    "ism_arcface": (
        "ArcFace identity similarity of the edits to the source photo",
        "the edits look less like the person",
    ),
    "ism_facenet": (
        "FaceNet identity similarity of the edits to the source photo",
        "the edits look less like the person",
    ),
    "ism_dlib": ("dlib identity similarity of the edits to the source photo", "the edits look less like the person"),
    "clip_i": ("CLIP image similarity of the edits to the source photo", "the edits look less like the photo"),
}


def _rounds_to(value: float) -> float:
    return round(value, 3) + 0.0


def _judgement(low: float, high: float, direction: str, reference: str) -> str:
    """What an interval says, read at the three decimals it is printed with."""
    low, high = _rounds_to(low), _rounds_to(high)
    if low <= 0 <= high:
        return f"The interval includes 0, so this run cannot tell the protection apart from {reference}"
    better = (high < 0) == (direction == "lower")
    return (
        f"The interval excludes 0: better protection than {reference}"
        if better
        else f"The interval excludes 0 on the wrong side: WORSE protection than {reference}"
    )


def verdict_lines(summary: dict) -> list[str]:
    """The sentences a report leads with, one paragraph per protected condition: what was compared, the
    effect on the headline metric with its 95% interval, and whether it is distinguishable from the noise
    control (random noise of the same budget) and from clean edits. An interval that includes 0 (at the
    printed precision) is said to, in words."""
    paired = summary.get("_paired") or {}
    metric = paired.get("metric")
    if metric is None:
        return [f"**No verdict:** {paired.get('reason', 'no headline metric')}."]
    direction = paired.get("direction", "lower")
    what, better = _PLAIN.get(metric, (f"`{metric}`", "the protection worked better"))
    protection = (summary.get("_run") or {}).get("protection", {})
    out = []
    for entry in paired["conditions"]:
        cond = entry["condition"]
        if is_noise(cond):
            continue
        label = f"**{cond}**" + (f" ({protection[cond]})" if cond in protection else "")
        versus = {v["reference"]: v for v in entry["versus"]}
        noise = next((v for ref, v in versus.items() if ref != CLEAN), None)
        clean = versus.get(CLEAN)
        parts = []
        first = noise or clean
        if first is None:
            out.append(f"{label}: nothing to compare it with (no clean or noise edits in this run).")
            continue
        if first["diff"]["mean"] is None:
            parts.append(
                f"{label}: no paired values against {first['reference']} ({first.get('reason', 'no edits in common')})."
            )
        else:
            d = first["diff"]
            reference = "the noise control (random noise of the same budget)" if first is noise else "clean edits"
            parts.append(
                f"{label} against {reference}: {what} {first['condition_mean']:.3f} vs {first['reference_mean']:.3f}, "
                f"a difference of {_signed(d['mean'])} (95% interval {_signed(d['low'])} to {_signed(d['high'])} over "
                f"{d['identities']} identities; {direction} = {better}). "
                f"{_judgement(d['low'], d['high'], direction, 'noise' if first is noise else 'no protection')}."
            )
        if noise is not None and clean is not None and clean["diff"]["mean"] is not None:
            d = clean["diff"]
            parts.append(
                f"Against clean edits: {_signed(d['mean'])} ({_signed(d['low'])} to {_signed(d['high'])}). "
                f"{_judgement(d['low'], d['high'], direction, 'no protection')}."
            )
        if noise is None:
            parts.append(
                "This run has no noise control, "
                "so the effect cannot be told apart from any perturbation of the same size."
            )
        out.append(" ".join(parts))
    return out or ["**No verdict:** this run has no protected condition."]


def _signed(value: float) -> str:
    """``+0.021`` / ``-0.021``; a difference that rounds to zero prints as ``+0.000``, never ``-0.000``."""
    return f"{round(value, 3) + 0.0:+.3f}"


def paired_lines(summary: dict) -> list[str]:
    """One plain-text line per protected condition, e.g. ``decontext: toy_identity 0.931 vs clean 0.952:
    -0.021 [-0.030, -0.012] (n=120 pairs, 20 identities; lower = better protection); vs noise 0.952:
    -0.021 [...]`` (summary.md and report.html show the same lines)."""
    paired = summary.get("_paired") or {"metric": None, "reason": "not computed"}
    metric = paired["metric"]
    if metric is None:
        return [f"No headline metric: {paired['reason']}."]
    direction = paired["direction"]
    sense = f"{direction} = better protection" if direction in ("lower", "higher") else "no protection direction"
    lines = []
    for entry in paired["conditions"]:
        parts = []
        for k, v in enumerate(entry["versus"]):
            d = v["diff"]
            if d["mean"] is None:
                parts.append(f"vs {v['reference']}: no paired values ({v.get('reason', 'no edits in common')})")
                continue
            head = (
                f"{metric} {v['condition_mean']:.3f} vs {v['reference']} {v['reference_mean']:.3f}"
                if k == 0
                else f"vs {v['reference']} {v['reference_mean']:.3f}"
            )
            tail = (
                f" (n={d['pairs']} pairs, {d['identities']} identities; {sense})"
                if k == 0
                else f" (n={d['pairs']} pairs)"
            )
            parts.append(f"{head}: {_signed(d['mean'])} [{_signed(d['low'])}, {_signed(d['high'])}]{tail}")
        lines.append(f"{entry['condition']}: " + ("; ".join(parts) if parts else "no reference condition in this run"))
    return lines


# -- writing --------------------------------------------------------------------------------------


def _cell(v) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return "" if v is None else csv_cell(v)  # file names that are not UTF-8: \xNN escapes; no formulas


def write_csv(path: Path, rows: list[dict], fields: tuple[str, ...], metric_names: list[str]) -> None:
    buffer = io.StringIO(newline="")
    w = csv.writer(buffer)
    w.writerow(list(fields) + metric_names)
    for r in rows:
        w.writerow([_cell(r.get(k)) for k in fields] + [_cell(r.get(m)) for m in metric_names])
    atomic_write(path, lambda handle: handle.write(buffer.getvalue().encode("utf-8")))


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def write_outputs(
    result: EvalResult, out_dir: Path, summary: dict, protected_paths: set[Path] = frozenset()
) -> dict[str, Path]:
    """Write metrics.csv, inputs.csv, summary.json and summary.md into ``out_dir``.
    Refuses to write over any file in ``protected_paths`` (the run's inputs)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in ("metrics.csv", "inputs.csv", "summary.json", "summary.md")}
    clash = [p for p in paths.values() if p.resolve() in {q.resolve() for q in protected_paths}]
    if clash:
        raise FileExistsError(f"refusing to overwrite input file(s): {', '.join(map(str, clash))}")
    write_csv(paths["metrics.csv"], result.edit_rows, EDIT_FIELDS, [s.name for s in result.specs if s.scope == "edit"])
    write_csv(
        paths["inputs.csv"], result.input_rows, INPUT_FIELDS, [s.name for s in result.specs if s.scope == "input"]
    )
    text = {"summary.json": json.dumps(_json_safe(summary), indent=2), "summary.md": shown(summary_markdown(summary))}
    for name, content in text.items():
        atomic_write(paths[name], lambda handle, content=content: handle.write(content.encode("utf-8")))
    return paths
