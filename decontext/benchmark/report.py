"""The leaderboard of a benchmark folder, from its records alone: ``leaderboard.md``, a static
``leaderboard.html`` (sortable columns, plots inline as SVG: matplotlib is not among the locked
requirements, and ``decontext.plots.Chart`` writes byte-identical SVG from the same numbers) and
``results.json``. The same records always give the same bytes (no clock, no paths), so a test can
regenerate a committed leaderboard and compare.

Per cell: the effect = toy identity of the protected photo's edits minus the noise control's, both after
the same attacker (paired by identity and edit; mean with a 95% bootstrap interval over identities,
``metrics.bootstrap.cluster_bootstrap_ci``); below 0 = the protection still works. Share of the way =
-effect / (clean - another person), the denominator measured in the same run (``reference`` of the
records). Robust effect of a method = its effect under the worst attacker of its cell (the one with the
highest mean effect), with that attacker's interval. Change under an attacker = that cell's effect minus the
same method's effect without an attacker, paired by identity and edit (the two cells share identities, edits and
seeds), with its own interval: whether an attacker measurably weakened (above 0) or strengthened (below 0) a
protection, which two unpaired intervals cannot tell. After a learned remover, also the effect against the
control attacked the same way (the noise control's own cell under that remover, ``cells.control_cells``: a
remover trained on the control's outputs), and a second robust effect with the remover cells read so.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from ..images import atomic_write, write_json_atomic
from ..metrics.bootstrap import edits_by_identity_ci
from ..plots import Chart, color_of
from .records import read_records
from .spec import CONTROL

N_BOOT = 2000


def _interval(values, n_boot: int = N_BOOT) -> tuple[float, float, float]:
    """Mean of an (edits, identities) array with its 95% interval over identities."""
    ci = edits_by_identity_ci(values, n_boot=n_boot, seed=0)
    if ci.mean is None:  # e.g. no face found in any edit: no number, not a zero
        return float("nan"), float("nan"), float("nan")
    return float(ci.mean), float(ci.low), float(ci.high)


def _mean(values) -> float:
    """Mean of the finite values (NaN when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    return float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else float("nan")


def cell_row(record: dict) -> dict:
    """The scores of one record."""
    values = record["values"]
    mean, low, high = _interval(_effects(record))
    reference = record["reference"]
    way = _mean(reference["clean"]) - _mean(reference["another_person"])
    cell = record["cell"]
    return {
        "editor": cell["editor"],
        "budget": cell["budget"],
        "method": cell["method"],
        "attacker": cell["attacker"],
        "effect": mean,
        "low": low,
        "high": high,
        "share": _share_of(mean, way),
        "way": way,
        "identity": _mean(values["method"]["identity"]),
        "noise_identity": _mean(values["noise"]["identity"]),
        "clean_identity": _mean(values["clean"]["identity"]),
        "edit_success": _mean(values["method"]["edit_success"]),
        "clean_edit_success": _mean(values["clean"]["edit_success"]),
        "psnr_input": _mean(values["psnr_input"]),
        "cost_psnr": _mean(values["attack_cost_psnr"]),
        "cost_ssim": _mean(values["attack_cost_ssim"]),
        "identities": len(record["identities"]),
        "edits": len(record["edits"]),
        "seconds": record["seconds"],
        "position": cell.get("position", 0),
    }


def _share_of(effect: float, way: float) -> float | None:
    """Share of the way: -effect / way (None where either is not a finite number, or the way is 0)."""
    return -effect / way if way and np.isfinite(way) and np.isfinite(effect) else None


def _severity(effect: float, attacker: str) -> tuple[float, str]:
    """The sort key of the worst case: the highest mean effect; an effect that could not be measured counts as the
    worst (unknown is not protected); ties go to the attacker's name."""
    return (effect if np.isfinite(effect) else np.inf, attacker)


def _paired(record: dict, other: dict) -> bool:
    """Whether two records hold the same identities, edits and seeds, so that their values pair cell by cell."""
    return all(record.get(k) == other.get(k) for k in ("identities", "edits", "seeds"))


def _effects(record: dict) -> np.ndarray:
    """The (edits, identities) effects of one record: the protected photo's identity minus the noise control's."""
    values = record["values"]
    return np.subtract(values["method"]["identity"], values["noise"]["identity"])


def change_against_unattacked(record: dict, unattacked: dict) -> tuple[float, float, float] | None:
    """What an attacker did to a protection's effect: per edit and identity, the effect after the attacker minus
    the effect of the same photo and edit without one, mean with its 95% interval over identities (above 0: the
    attacker weakened the protection). None where the two records do not hold the same identities, edits and
    seeds, so that there is nothing to pair."""
    if not _paired(record, unattacked):
        return None
    return _interval(_effects(record) - _effects(unattacked))


def against_own_control(record: dict, control: dict) -> tuple[float, float, float] | None:
    """The effect of a learned attacker's cell against the control cell of the same attacker (``cells.
    control_cells``: the noise control through a remover trained on the control's own outputs): per edit and
    identity, the protected photo's identity after its remover minus the control's after its own, mean with its
    95% interval over identities. None where the two records do not hold the same identities, edits and seeds."""
    if not _paired(record, control):
        return None
    return _interval(np.subtract(record["values"]["method"]["identity"], control["values"]["method"]["identity"]))


def results(records: list[dict], attackers: list[str] | None = None) -> dict:
    """Every cell's row and, per (editor, budget, method), the robust (worst-case) row. ``attackers``: the
    spec's measured attackers (``spec_attackers``); a method recorded under fewer of them (a run still under
    way) gets ``incomplete`` ("k of n"): its worst case so far, which more attackers can only make worse.
    The control cells (the noise control under a learned attacker trained on its own outputs) are no rows of
    their own: ``controls`` lists them, and each learned attacker's row gets its effect against its control
    (``own_effect`` with its interval and share; None where the control is not recorded)."""
    controls = {
        (r["cell"]["editor"], r["cell"]["budget"], r["cell"]["attacker"]): r
        for r in records
        if r["cell"]["method"] == CONTROL
    }
    measured = [r for r in records if r["cell"]["method"] != CONTROL]
    rows = [cell_row(r) for r in measured]
    cells = {tuple(r["cell"][k] for k in ("editor", "budget", "method", "attacker")): r for r in measured}
    for row, record in zip(rows, measured, strict=True):
        base = cells.get((row["editor"], row["budget"], row["method"], "none"))
        change = None if base is None or base is record else change_against_unattacked(record, base)
        row["change"], row["change_low"], row["change_high"] = change or (None, None, None)
        control = controls.get((row["editor"], row["budget"], row["attacker"]))
        own = None if control is None else against_own_control(record, control)
        row["own_effect"], row["own_low"], row["own_high"] = own or (None, None, None)
        row["own_share"] = None if own is None else _share_of(own[0], row["way"])
        row["own_noise_identity"] = None if own is None else _mean(control["values"]["method"]["identity"])
    robust = []
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["editor"], row["budget"], row["method"]), []).append(row)
    for (editor, budget, method), members in groups.items():
        worst = max(members, key=lambda r: _severity(r["effect"], r["attacker"]))
        unattacked = next((r for r in members if r["attacker"] == "none"), None)
        # the same worst case with each learned remover's cell read against the control attacked the same way
        symmetric = [
            (r["own_effect"], r["own_low"], r["own_high"], r["attacker"]) if r["own_effect"] is not None
            else (r["effect"], r["low"], r["high"], r["attacker"])
            for r in members
        ]  # fmt: skip
        worst_own = max(symmetric, key=lambda v: _severity(v[0], v[3]))
        own_known = any(r["own_effect"] is not None for r in members)
        robust.append(
            {
                "editor": editor,
                "budget": budget,
                "method": method,
                "robust_effect": worst["effect"],
                "low": worst["low"],
                "high": worst["high"],
                "share": worst["share"],
                "worst_attacker": worst["attacker"],
                "effect_unattacked": unattacked["effect"] if unattacked else None,
                "psnr_input": worst["psnr_input"],
                "attackers": len(members),
                "robust_own": worst_own[:3] if own_known else None,
                "worst_attacker_own": worst_own[3] if own_known else None,
            }
        )
        if attackers and len(members) < len(attackers):
            robust[-1]["incomplete"] = f"{len(members)} of {len(attackers)}"
    robust.sort(key=lambda r: (r["editor"], r["budget"], r["robust_effect"], r["method"]))
    first = records[0] if records else {}
    return {
        "spec": first.get("spec"),
        "spec_digest": first.get("spec_digest"),
        "commit": sorted({r.get("commit") or "" for r in records}),
        "command": sorted({r.get("command") or "" for r in records}),
        "cells": len(records),
        "seconds": round(sum(r["seconds"] for r in records), 1),
        "rows": sorted(rows, key=lambda r: (r["position"], r["attacker"])),
        "robust": robust,
        "controls": [cell_row(r) for r in sorted(controls.values(), key=lambda r: r["cell"].get("position", 0))],
    }


# What the paper reports, beside a run of its protocol: (quantity, the paper's value, where the reference notes on
# the paper (shared/reference/decontext.md, arXiv 2512.16625) give it). Those notes record the protocol's numbers
# but no result: "No numeric tables, runtimes or memory figures could be obtained here", so the scores say so
# rather than carry a guess.
NOT_GIVEN = "not given (decontext.md: no numeric tables could be obtained)"
PAPER_REFERENCE = {
    "kontext-paper": [
        ("budget", "12.75/255 (eps 0.1 on [-1, 1])", "Where it is applied (official defaults): PGD"),
        ("PGD", "800 sign steps of 0.6375/255, no momentum, no random start", "Where it is applied: PGD"),
        ("edits", "FLUX.1-Kontext, 20 steps, guidance 3.5, 512x512, seed 42", "Evaluation protocol: editors"),
        ("ISM (lower = better protection)", NOT_GIVEN, "Evaluation protocol: ISM"),
        ("FDFR (higher = better protection)", NOT_GIVEN, "Evaluation protocol: FDFR"),
        ("CLIP-I (lower = better protection)", NOT_GIVEN, "Evaluation protocol: CLIP-I"),
    ]
}


def paper_reference(res: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """The paper's reported values beside this run's where the spec follows a paper's protocol (else none).
    This run's scores: each method without an attacker, ISM = the identity score, FDFR = 1 - edit success."""
    reference = PAPER_REFERENCE.get(res["spec"])
    if reference is None:
        return []
    unattacked = [r for r in res["rows"] if r["attacker"] == "none"]

    def scores(clean_key: str, key: str, flip: bool) -> str:
        def text(value: float) -> str:
            value = 1 - value if flip else value
            return f"{value:.3f}" if np.isfinite(value) else "n/a"

        return "; ".join(
            ([f"clean {text(unattacked[0][clean_key])}"] if unattacked else [])
            + [f"{r['method']} {text(r[key])}" for r in unattacked]
        )

    ours = {
        "budget": ", ".join(sorted({f"{r['budget']:g}/255" for r in res["rows"]})),
        "ISM (lower = better protection)": scores("clean_identity", "identity", flip=False),
        "FDFR (higher = better protection)": scores("clean_edit_success", "edit_success", flip=True),
        "CLIP-I (lower = better protection)": "not measured by this spec",
    }
    return [
        (
            f"{res['spec']}: the paper's reported values beside this run's (no attacker)",
            [
                "quantity",
                "the paper (DeContext, arXiv 2512.16625)",
                "where in decontext.md (notes on the paper)",
                "this run",
            ],
            [
                [quantity, value, where, ours.get(quantity, "the spec's (spec.json)")]
                for quantity, value, where in reference
            ],
        )
    ]


def spec_attackers(folder: str | Path) -> list[str] | None:
    """The measured (not derived) attackers of the spec a run folder was made for (its spec.json), or None."""
    from ..attackers import parse_attacker

    marker = Path(folder) / "spec.json"
    if not marker.exists():
        return None
    spec = json.loads(marker.read_text(encoding="utf-8")).get("spec", {})
    return [a for a in spec.get("attackers", []) if not parse_attacker(a).derived]


def _worst(r: dict) -> str:
    """The worst attacker of a robust row, marked while the method's cells are not all recorded."""
    return r["worst_attacker"] + (f" (worst of {r['incomplete']} so far)" if r.get("incomplete") else "")


def _ci(mean, low, high) -> str:
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"


def _share(value) -> str:
    return "" if value is None else f"{value + 0.0:.0%}".replace("-0%", "0%")


def _change(row: dict | None) -> str:
    """A cell of the change table: the paired change with its interval, starred where the interval excludes 0."""
    if row is None or row["change"] is None:
        return ""
    off = row["change_low"] > 0 or row["change_high"] < 0
    return _ci(row["change"], row["change_low"], row["change_high"]) + (" *" if off else "")


def tables(res: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table, as text cells (markdown and HTML share them)."""
    out = []
    keys = sorted({(r["editor"], r["budget"]) for r in res["rows"]})
    for editor, budget in keys:
        rows = [r for r in res["rows"] if (r["editor"], r["budget"]) == (editor, budget)]
        attackers = list(dict.fromkeys(r["attacker"] for r in rows))
        methods = [r["method"] for r in res["robust"] if (r["editor"], r["budget"]) == (editor, budget)]
        way = rows[0]["way"]
        where = f"{editor}, {budget:g}/255"
        robust = [r for r in res["robust"] if (r["editor"], r["budget"]) == (editor, budget)]
        symmetric = any(r["robust_own"] is not None for r in robust)
        out.append(
            (
                f"{where}: robust effect (worst case over {len(attackers)} attackers; way = {way:.3f})",
                ["rank", "method", "robust effect [95% CI]", "share of the way", "worst attacker",
                 "effect without attack", "PSNR in (dB)"]
                + (["robust effect, learned removers against a control attacked the same way [95% CI]",
                    "its worst attacker"] if symmetric else []),
                [
                    [str(k + 1), r["method"], _ci(r["robust_effect"], r["low"], r["high"]), _share(r["share"]),
                     _worst(r), "" if r["effect_unattacked"] is None else f"{r['effect_unattacked']:+.3f}",
                     f"{r['psnr_input']:.1f}"]
                    + ([_ci(*r["robust_own"]) if r["robust_own"] else "", r["worst_attacker_own"] or ""]
                       if symmetric else [])
                    for k, r in enumerate(robust)
                ],
            )
        )  # fmt: skip
        by = {(r["method"], r["attacker"]): r for r in rows}
        out.append(
            (
                f"{where}: effect after each attacker [95% CI] (share of the way)",
                ["method"] + attackers + ["worst"],
                [
                    [m]
                    + [
                        f"{_ci(by[m, a]['effect'], by[m, a]['low'], by[m, a]['high'])} ({_share(by[m, a]['share'])})"
                        if (m, a) in by
                        else ""
                        for a in attackers
                    ]
                    + [next(f"{r['robust_effect']:+.3f} ({_worst(r)})" for r in robust if r["method"] == m)]
                    for m in methods
                ],
            )
        )
        attacked = [a for a in attackers if a != "none"]
        if any(by[m, a]["change"] is not None for m in methods for a in attacked if (m, a) in by):
            out.append(
                (
                    f"{where}: change of the effect under each attacker against no attack, paired [95% CI] "
                    "(above 0 = the attacker weakened the protection; * = the interval excludes 0)",
                    ["method"] + attacked,
                    [[m] + [_change(by.get((m, a))) for a in attacked] for m in methods],
                )
            )
        learned = [(m, a) for m in methods for a in attacked if (m, a) in by and by[m, a]["own_effect"] is not None]
        if learned:
            out.append(
                (
                    f"{where}: effect after a learned remover against a control attacked the same way (the noise "
                    "control through a remover trained on its own outputs), paired [95% CI]",
                    ["method", "attacker", "effect (control through this method's remover)",
                     "effect (control through its own remover)", "share of the way",
                     "noise control's identity: through this method's remover / its own"],
                    [
                        [m, a, f"{by[m, a]['effect']:+.3f}",
                         _ci(by[m, a]["own_effect"], by[m, a]["own_low"], by[m, a]["own_high"]),
                         _share(by[m, a]["own_share"]),
                         f"{by[m, a]['noise_identity']:.3f} / {by[m, a]['own_noise_identity']:.3f}"]
                        for m, a in learned
                    ],
                )
            )  # fmt: skip
        # what does not depend on the method (the clean photo, the noise control), from the first row that has it
        under = {a: next(by[m, a] for m in methods if (m, a) in by) for a in attackers}
        success = [["clean"] + [f"{under[a]['clean_edit_success']:.2f}" for a in attackers]]
        for m in methods:
            success.append([m] + [f"{by[m, a]['edit_success']:.2f}" if (m, a) in by else "" for a in attackers])
        out.append(
            (f"{where}: edit success after each attacker (the edit still happens)", ["photo"] + attackers, success)
        )
        out.append(
            (
                f"{where}: what each attacker costs the clean photo",
                ["attacker", "PSNR (dB)", "SSIM", "clean edits' identity after it", "noise control's identity"],
                [
                    [a, f"{under[a]['cost_psnr']:.1f}", f"{under[a]['cost_ssim']:.3f}",
                     f"{under[a]['clean_identity']:.3f}", f"{under[a]['noise_identity']:.3f}"]
                    for a in attackers
                ],
            )
        )  # fmt: skip
    return out + paper_reference(res)


PARTIAL = (
    "**A run under way**: some methods are recorded under fewer attackers than the spec names; their robust "
    "effect is the worst of those recorded so far (marked), which the attackers still to come can only make worse."
)


def markdown(res: dict) -> str:
    lines = [
        f"# Leaderboard: {res['spec']} (spec digest {res['spec_digest']})",
        "",
        f"{res['cells']} cells; {res['seconds']:.0f} s of cell compute in the records; commit "
        f"{', '.join(c[:12] for c in res['commit'] if c) or '-'}; command: `{'`, `'.join(res['command'])}`.",
        "",
        "Effect: identity score (the toy reader's toy identity; ISM on photos) of the edits of the protected "
        "photo minus that of the noise control of the same "
        "budget, both after the same attacker (paired by identity and edit; 95% bootstrap interval over "
        "identities); below 0 = the protection still works. Share of the way: -effect / (clean - another "
        "person), measured in the same run. Robust effect: under the attacker with the highest mean effect. "
        "Change under an attacker: that effect minus the same method's unattacked effect, paired by identity and "
        "edit, with its own interval.",
    ]
    if res.get("controls"):
        lines[-1] += (
            " Against a control attacked the same way: after a learned remover, the protected photo (through the "
            "remover trained on its method) minus the noise control through a remover trained on the control's own "
            "outputs, paired: what the protection leaves when the attacker adapts to each photo it gets."
        )
    if under_way(res):
        lines += ["", PARTIAL]
    for title, header, rows in tables(res):
        lines += ["", f"## {title}", "", *markdown_table(header, rows)]
    return "\n".join(lines) + "\n"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of one markdown table."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def under_way(res: dict) -> bool:
    """Whether some method is recorded under fewer of the spec's attackers than it names (``results``)."""
    return any(r.get("incomplete") for r in res["robust"])


def _effect_chart(title: str, xs: list, rows: list[dict], x_label: str, y_label: str) -> Chart:
    """A leaderboard plot: its y range spans every row's interval and 0, where the noise control lies."""
    chart = Chart(
        title,
        xs,
        [v for r in rows for v in (r["low"], r["high"])] + [0.0],
        x_label=x_label,
        y_label=y_label,
        width=760,
        height=360,
        margins=(62, 200, 30, 60),
    )
    chart.reference(0.0, "#999999", "noise control")
    return chart


def plots(res: dict) -> list[str]:
    """SVG: effect per attacker per method; robust effect against input PSNR."""
    out = []
    for editor, budget in sorted({(r["editor"], r["budget"]) for r in res["rows"]}):
        rows = [r for r in res["rows"] if (r["editor"], r["budget"]) == (editor, budget)]
        attackers = list(dict.fromkeys(r["attacker"] for r in rows))
        methods = list(dict.fromkeys(r["method"] for r in rows))
        chart = _effect_chart(
            f"{editor}, {budget:g}/255: effect vs noise after each attacker",
            attackers,
            rows,
            "attacker",
            "identity effect (lower = protects)",
        )
        for k, method in enumerate(methods):
            color, dx = color_of(method), 6.0 * (k - (len(methods) - 1) / 2)
            points = [r for r in rows if r["method"] == method]
            chart.line([(r["attacker"], r["effect"]) for r in points], color, dx=dx, name=method)
            for r in points:
                chart.error_bar(r["attacker"], r["low"], r["high"], color, dx=dx)
                chart.marker(r["attacker"], r["effect"], color, label=f"{method} / {r['attacker']}: "
                             f"{_ci(r['effect'], r['low'], r['high'])}", dx=dx, radius=3)  # fmt: skip
        out.append(chart.svg())
        robust = [r for r in res["robust"] if (r["editor"], r["budget"]) == (editor, budget)]
        chart = _effect_chart(
            f"{editor}, {budget:g}/255: robust effect vs input PSNR",
            [round(r["psnr_input"], 2) for r in robust],
            robust,
            "PSNR of the protected input (dB)",
            "robust effect (lower = protects)",
        )
        for r in robust:
            color, x = color_of(r["method"]), round(r["psnr_input"], 2)
            chart.error_bar(x, r["low"], r["high"], color)
            label = f"{r['method']}: {_ci(r['robust_effect'], r['low'], r['high'])} ({r['worst_attacker']})"
            chart.marker(x, r["robust_effect"], color, label=label)
            chart.line([(x, r["robust_effect"])], color, name=r["method"])
        out.append(chart.svg())
    return out


SORT_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function (th, column) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var up = th.dataset.order !== 'asc'; th.dataset.order = up ? 'asc' : 'desc';
    var key = function (row) { var t = row.cells[column].textContent.trim();
      var n = parseFloat(t.replace('%', '')); return isNaN(n) ? t : n; };
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b); var c = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0)
        : (typeof x === 'number' ? -1 : 1); return up ? c : -c;
    }).forEach(function (row) { body.appendChild(row); });
  });
});
"""


def html_page(res: dict) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Leaderboard: {html.escape(str(res['spec']))}</title>",
        "<style>body{font:14px sans-serif;margin:24px}table{border-collapse:collapse;margin:8px 0 24px}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{cursor:pointer;background:#f3f3f3}"
        "td:first-child,th:first-child{text-align:left}</style></head><body>",
        f"<h1>Leaderboard: {html.escape(str(res['spec']))}</h1>",
        f"<p>spec digest {html.escape(str(res['spec_digest']))}; {res['cells']} cells; "
        f"{res['seconds']:.0f} s of cell compute; command: <code>{html.escape('; '.join(res['command']))}</code></p>",
        "<p>Effect: toy identity of the protected photo's edits minus the noise control's, both after the same "
        "attacker (95% bootstrap interval over identities); below 0 = still protecting. Click a column to sort.</p>",
    ]
    if under_way(res):
        parts.append(f"<p>{html.escape(PARTIAL).replace('**', '')}</p>")
    for title, header, rows in tables(res):
        parts.append(f"<h2>{html.escape(title)}</h2><table class='sortable'><thead><tr>")
        parts.extend(f"<th>{html.escape(h)}</th>" for h in header)
        parts.append("</tr></thead><tbody>")
        for row in rows:
            parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
        parts.append("</tbody></table>")
    parts.append("<h2>Plots</h2>")
    parts.extend(f"<div>{svg}</div>" for svg in plots(res))
    parts.append(f"<script>{SORT_SCRIPT}</script></body></html>\n")
    return "".join(parts)


def folder_results(folder: str | Path, records: list[dict] | None = None) -> dict:
    """``results`` of a run folder: its records (or ``records``) against the attackers of its spec.json."""
    return results(read_records(Path(folder)) if records is None else records, spec_attackers(folder))


def write_report(folder: str | Path, records: list[dict] | None = None) -> list[Path]:
    """leaderboard.md, leaderboard.html and results.json of ``folder`` from its records (atomically)."""
    folder = Path(folder)
    res = folder_results(folder, records)
    written = []
    for name, text in (
        ("leaderboard.md", markdown(res)),
        ("leaderboard.html", html_page(res)),
    ):
        atomic_write(folder / name, lambda handle, text=text: handle.write(text.encode("utf-8")))
        written.append(folder / name)
    write_json_atomic(json.loads(json.dumps(res)), folder / "results.json")
    written.append(folder / "results.json")
    return written


def embedded(markdown_text: str, levels: int = 2) -> str:
    """A leaderboard.md to paste into another document: every heading ``levels`` deeper."""
    return (
        "\n".join("#" * levels + line if line.startswith("#") else line for line in markdown_text.splitlines()) + "\n"
    )
