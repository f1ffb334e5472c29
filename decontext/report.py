"""report.html: on top the headline (each protected condition against clean and its noise control,
paired, with intervals) and one chart per metric, then the summary tables and the list of metrics
(what each measures, which network computed it), then per image a row of thumbnails
(source | protected input(s) | perturbation x10 | clean edits | protected edits) with their metrics.

The charts are inline SVG drawn by ``decontext.plots`` (no script, no network), so they show wherever
the file is opened, and a headless browser can count their marks.

Thumbnails are embedded as base64 data URIs (JPEG for photos, PNG for the perturbation, longest side
``thumb`` px). The file is therefore self-contained: it opens from disk with no server and no network,
keeps working when moved, mailed or written with ``--out`` outside the run folder (relative paths
would break then), and the full-size images never need to be next to it. The size stays bounded by
``max_edits`` thumbnails per image and condition (a note says when edits were left out).

Once every <img> has loaded with a non-zero natural width, a script sets the page title to
``report ready: N images`` (``report broken: K of N images failed`` otherwise) and
``<body data-images=ok|broken>`` so a headless browser can check it.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

from decontext.images import atomic_write
from decontext.metrics.evaluate import (
    EvalResult,
    conditions_of,
    describe_run,
    fmt_stat,
    measured,
    not_measured_lines,
    paired_lines,
    verdict_lines,
)
from decontext.metrics.run import CLEAN, ImageLoadError
from decontext.names import shown as printable
from decontext.plots import Chart, color_of

AMPLIFY = 10.0

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:16px;color:#222;background:#fafafa}
h1{font-size:20px}h2{font-size:17px;margin-top:28px}h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;font-size:12px;margin:6px 0}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}th{background:#eee}
.row{display:flex;flex-wrap:wrap;gap:8px;padding:6px;background:#fff;border:1px solid #ddd}
figure{margin:0;flex:0 0 auto;width:140px;font-size:11px}
figure img{display:block;max-width:136px;border:1px solid #999;image-rendering:auto}
figcaption{margin-top:2px;line-height:1.25;word-wrap:break-word}
.group{border-left:3px solid #888;padding-left:6px;display:flex;flex-wrap:wrap;gap:8px}
#verdict p{font-size:15px;line-height:1.45;max-width:60em}
.missing{width:128px;height:128px;display:flex;align-items:center;justify-content:center;\
background:#fdd;border:1px dashed #c33}
.note{color:#666;font-size:12px}.unavail{color:#a00}
#paired{font-size:14px;line-height:1.5}#paired li{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px}
.charts{display:flex;flex-wrap:wrap;gap:10px}.charts svg{border:1px solid #ddd;flex:0 0 auto}
.metrics li{font-size:12px;margin:2px 0}
"""

_SCRIPT = """
(function(){
  function check(){
    var imgs=document.images, bad=0;
    for(var i=0;i<imgs.length;i++){ if(!(imgs[i].complete && imgs[i].naturalWidth>0)) bad++; }
    var ok = bad===0;
    document.title = ok ? ('report ready: '+imgs.length+' images') : \
('report broken: '+bad+' of '+imgs.length+' images failed');
    document.body.setAttribute('data-images', ok ? 'ok' : 'broken');
    var s=document.getElementById('img-status'); if(s){ s.textContent=document.title; }
  }
  if(document.readyState==='complete'){ check(); } else { window.addEventListener('load', check); }
})();
"""


def _data_uri(img: np.ndarray, thumb: int, fmt: str) -> str:
    im = Image.fromarray(img)
    im.thumbnail((thumb, thumb), Image.LANCZOS)
    buf = io.BytesIO()
    if fmt == "JPEG":
        im.save(buf, "JPEG", quality=85)
        mime = "image/jpeg"
    else:
        im.save(buf, "PNG", optimize=True)
        mime = "image/png"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def perturbation_image(source: np.ndarray, protected: np.ndarray, amplify: float = AMPLIFY) -> np.ndarray:
    """Signed difference amplified ``amplify`` times around mid-grey: 128 = unchanged."""
    if source.shape != protected.shape:
        protected = np.asarray(Image.fromarray(protected).resize(source.shape[1::-1], Image.BICUBIC))
    diff = protected.astype(np.float64) - source.astype(np.float64)
    return np.clip(np.rint(128.0 + amplify * diff), 0, 255).astype(np.uint8)


def _fmt(v) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4g}"
    return html.escape(str(v))


def _figure(uri: str | None, caption: str, alt: str) -> str:
    if uri is None:
        body = f'<div class="missing">{html.escape(alt)}</div>'
    else:
        body = f'<img src="{uri}" alt="{html.escape(alt)}">'
    return f"<figure>{body}<figcaption>{caption}</figcaption></figure>"


def _metrics_caption(row: dict, names: list[str]) -> str:
    parts = [f"{n}={_fmt(row[n])}" for n in names if n in row and isinstance(row[n], (int, float))]
    if row.get("error"):
        parts.append(f'<span class="unavail">{html.escape(row["error"])}</span>')
    return "<br>".join(parts)


def _bold(escaped: str) -> str:
    """``**x**`` (the verdict's markdown emphasis) as <b>x</b>, in already escaped text."""
    parts = escaped.split("**")
    return "".join(f"<b>{p}</b>" if k % 2 else p for k, p in enumerate(parts))


def _summary_tables(summary: dict) -> str:
    conds = conditions_of(summary)
    metrics = summary["_metrics"]
    out = [
        "<table><tr><th>metric</th><th>better protection</th>"
        + "".join(f"<th>{html.escape(c)}</th>" for c in conds)
        + "</tr>"
    ]
    for m, spec in metrics.items():
        if not measured(summary, conds, m):
            continue
        cells = "".join(
            f"<td>{html.escape(fmt_stat(summary[c].get(m)) if m in summary[c] else '-')}</td>" for c in conds
        )
        out.append(f"<tr><td>{html.escape(m)}</td><td>{spec['direction']}</td>{cells}</tr>")
    out.append("</table>")
    folded = not_measured_lines(summary)
    if folded:  # folded away: one line per reason, not a red row per metric
        out.append(
            '<details id="not-measured"><summary class="note">'
            f"Not measured in this run ({len(folded)} reason{'s' * (len(folded) > 1)})"
            '</summary><ul class="note">'
            + "".join(f"<li>{html.escape(line)}</li>" for line in folded)
            + "</ul></details>"
        )
    if summary["_errors"]:
        out.append(f"<h3>Problems ({len(summary['_errors'])})</h3><ul>")
        out += [f"<li>{html.escape(e)}</li>" for e in summary["_errors"]]
        out.append("</ul>")
    out.append('<p class="note">' + "<br>".join(html.escape(n) for n in summary["_notes"]) + "</p>")
    return "\n".join(out)


def condition_colors(conditions: list[str]) -> dict[str, str]:
    """Each condition's colour, fixed by its name (``plots.color_of``): the same in every chart of every report."""
    return {c: color_of(c) for c in conditions}


_SENSE = {
    "lower": "lower = better protection",
    "higher": "higher = better protection",
    "none": "no protection direction",
}
# Input-scope metrics compare the protected photo with its source: their direction is about visibility.
_INPUT_SENSE = {"lower": "lower = less visible", "higher": "higher = less visible", "none": "no direction"}


def _sense(spec: dict) -> str:
    return (_INPUT_SENSE if spec.get("scope") == "input" else _SENSE)[spec["direction"]]


def metric_charts(summary: dict, width: int = 360, height: int = 240) -> list[str]:
    """One SVG chart per metric with a value in some condition, the headline metric first: every condition
    that has the metric, its mean (a point) and 95% interval (an error bar), in the condition's colour."""
    conds = conditions_of(summary)
    colors = condition_colors(conds)
    headline = (summary.get("_paired") or {}).get("metric")
    charts = []
    for m in sorted(summary["_metrics"], key=lambda name: name != headline):
        spec = summary["_metrics"][m]
        stats = {c: summary[c][m] for c in conds if m in summary[c]}
        shown = {c: d for c, d in stats.items() if d.get("available", True) and d.get("mean") is not None}
        if not shown:
            continue
        chart = Chart(
            f"{m} ({_sense(spec)})",
            list(stats),
            [v for d in shown.values() for v in (d["mean"], d["low"], d["high"])],
            width=width,
            height=height,
            margins=(52, 12, 28, 46),
        )
        for c, d in shown.items():
            chart.error_bar(c, d["low"], d["high"], colors[c])
            chart.marker(c, d["mean"], colors[c], label=f"{c}: {fmt_stat(d)}", radius=5)
        charts.append(chart.svg(element_id=f"chart-{m}", standalone=False))
    return charts


def _paired_section(summary: dict) -> str:
    items = "".join(f"<li>{html.escape(line)}</li>" for line in paired_lines(summary))
    return (
        f'<ul id="paired">{items}</ul><p class="note">Difference = condition minus reference on the same edits '
        "(image, prompt, seed), averaged per identity, with a 95% interval from a bootstrap that resamples "
        "identities. Noise control: <code>noise@b</code> for a condition purified by b, else <code>noise</code>.</p>"
    )


def _metrics_list(summary: dict) -> str:
    items = []
    conds = conditions_of(summary)
    for m, spec in summary["_metrics"].items():
        if not measured(summary, conds, m):
            continue
        source = f" <i>computed with: {html.escape(spec['source'])}</i>" if spec.get("source") else ""
        items.append(
            f"<li><code>{html.escape(m)}</code> ({html.escape(spec['scope'])}, {_sense(spec)}): "
            f"{html.escape(spec['description'])}{source}</li>"
        )
    return '<ul class="metrics">' + "".join(items) + "</ul>"


def write_report(result: EvalResult, summary: dict, path: Path, max_edits: int = 12, thumb: int = 128) -> Path:
    run = result.run
    edit_metrics = [s.name for s in result.specs if s.scope == "edit" and s.name not in result.unavailable]
    input_metrics = [s.name for s in result.specs if s.scope == "input" and s.name not in result.unavailable]
    rows_by_stem: dict[str, list[dict]] = {}
    for row in result.edit_rows:
        rows_by_stem.setdefault(row["image"], []).append(row)
    input_rows = {(r["condition"], r["image"]): r for r in result.input_rows}
    edits_by_key = {(e.condition, e.stem, e.prompt_index, e.seed): e for e in run.edits}
    protected_conds = [c for c in run.conditions if c != CLEAN]

    def load(p):
        try:
            return run.image(p)
        except ImageLoadError:
            return None

    body = [
        "<h1>DeContext evaluation report</h1>",
        '<div id="verdict">'
        + "".join(f"<p>{_bold(html.escape(line))}</p>" for line in verdict_lines(summary))
        + "</div>",
        f'<p class="note">Run: {_bold(html.escape(describe_run(summary)).replace("`", ""))}. '
        f'<span id="img-status">images loading...</span></p>',
        "<h2>Headline: paired differences</h2>",
        _paired_section(summary),
        "<h2>Charts: mean and 95% interval per condition</h2>",
        '<div class="charts" id="charts">' + "".join(metric_charts(summary)) + "</div>",
        "<h2>Summary by condition</h2>",
        _summary_tables(summary),
        "<h2>Metrics</h2>",
        _metrics_list(summary),
        "<h2>Per image</h2>",
        f'<p class="note">Each row: source | protected input and its perturbation (x{AMPLIFY:g}, grey = unchanged) '
        "for each protected condition | edits per condition. "
        "Edit captions: prompt index, category, seed, metrics.</p>",
    ]
    for stem in run.stems:
        figs: list[str] = []
        src = load(run.source_path(stem))
        figs.append(
            _figure(_data_uri(src, thumb, "JPEG") if src is not None else None, "<b>source</b>", "source missing")
        )
        for cond in protected_conds:
            inp = load(run.input_path(cond, stem))
            irow = input_rows.get((cond, stem), {})
            figs.append(
                _figure(
                    _data_uri(inp, thumb, "JPEG") if inp is not None else None,
                    f"<b>{html.escape(cond)}</b>",
                    f"{cond} input missing",
                )
            )
            pert = perturbation_image(src, inp) if src is not None and inp is not None else None
            figs.append(
                _figure(
                    _data_uri(pert, thumb, "PNG") if pert is not None else None,
                    f"<b>{html.escape(cond)} - source, x{AMPLIFY:g}</b><br>" + _metrics_caption(irow, input_metrics),
                    "no perturbation",
                )
            )
        groups = []
        for cond in run.conditions:
            rows = [r for r in rows_by_stem.get(stem, []) if r["condition"] == cond]
            if not rows:
                continue
            shown = rows[:max_edits]
            gfigs = []
            for r in shown:
                e = edits_by_key.get((cond, stem, r["prompt_index"], r["seed"]))
                img = load(e.output) if e is not None else None
                cap = (
                    f"<b>{html.escape(cond)}</b> #{r['prompt_index']} "
                    f"{html.escape(str(r['category']))} s{r['seed']}<br>" + _metrics_caption(r, edit_metrics)
                )
                gfigs.append(
                    _figure(_data_uri(img, thumb, "JPEG") if img is not None else None, cap, "unreadable edit")
                )
            if len(rows) > len(shown):
                gfigs.append(f'<p class="note">{len(rows) - len(shown)} more edits not shown (--report-max-edits)</p>')
            klass = "clean" if cond == CLEAN else "prot"
            groups.append(
                f'<div class="group {klass}" style="border-color:{color_of(cond)}">' + "".join(gfigs) + "</div>"
            )
        body.append(
            f'<h3>{html.escape(stem)} <span class="note">identity {html.escape(run.identity(stem))}</span></h3>'
        )
        body.append('<div class="row">' + "".join(figs) + "".join(groups) + "</div>")
    doc = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>report loading</title>"
        f'<style>{_CSS}</style></head>\n<body data-images="pending">\n'
        + "\n".join(body)
        + f"\n<script>{_SCRIPT}</script>\n</body></html>\n"
    )
    path = Path(path)
    atomic_write(
        path, lambda handle: handle.write(printable(doc).encode("utf-8"))
    )  # file names that are not UTF-8 appear as \xNN
    return path
