"""Hand-written SVG charts: the sweep's plots, report.html's per-metric charts and bench/effect.py's
identity-vs-budget plot.

Written by hand rather than with matplotlib so that report.html stays one self-contained file with its
charts inline (no network, no JS library, no image files), and so that the benches and the sweep need
no plotting package. One ``Chart`` is one plot area: a linear y axis, an x axis that is numeric (to
scale) or categorical (evenly spaced), and marks added in data coordinates. Every text goes through
``esc``: condition and metric names come from folder names and are not trusted markup.

Marks carry a class so that tests (and a reader of the SVG) can count them: ``mark`` (a point, a
circle), ``errorbar`` (one path per interval, caps included), ``series`` (a polyline), ``reference``
(a dashed horizontal line).
"""

from __future__ import annotations

import hashlib
import html
import math
from typing import Iterable, Sequence

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")
# The colour of a condition (or method) is fixed by its name, the same in every report, chart and bench plot:
# the three every run has are pinned; any other name gets a palette colour from a hash of the name (not
# from its position, which changes from run to run).
FIXED_COLORS = {"clean": "#555555", "noise": "#ff7f0e", "protected": "#1f77b4", "another person": "#999999"}
_FREE = tuple(c for c in PALETTE if c not in FIXED_COLORS.values())


def color_of(name: str) -> str:
    """The fixed colour of a condition or method ``name``: clean grey, noise (and its purified copies
    ``noise@b``) orange, protected blue; others by a stable hash of the name (``X@b`` as ``X``)."""
    base = str(name).partition("@")[0]
    if base in FIXED_COLORS:
        return FIXED_COLORS[base]
    if base.startswith("noise"):
        return FIXED_COLORS["noise"]
    return _FREE[int(hashlib.sha256(base.encode("utf-8")).hexdigest(), 16) % len(_FREE)]


def esc(text: object) -> str:
    """Text escaped for SVG/HTML content and attribute values."""
    return html.escape(str(text), quote=True)


def fmt_tick(value: float) -> str:
    """A tick label: ticks are round numbers (or settings such as eps), so up to 6 significant digits."""
    return f"{value:g}"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 x 10^k) inside [low, high], as close to ``count`` of them
    as such steps allow."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    magnitude = 10.0 ** math.floor(math.log10((high - low) / max(count - 1, 1)))

    def ticks(step: float) -> list[float]:
        first = math.ceil(low / step - 1e-9)
        last = math.floor(high / step + 1e-9)
        return [round(k * step, 12) for k in range(first, last + 1)]

    options = [ticks(m * magnitude) for m in (1, 2, 2.5, 5, 10)]
    return min(options, key=lambda t: abs(len(t) - count))  # the first (finest) of equally close ones


class Chart:
    """One plot area. ``x_values``: the x positions in order (numbers: placed to scale, anything else:
    categories placed evenly); ``y_values``: every y the marks will use (means and interval ends), so
    that the axis covers them all."""

    def __init__(
        self,
        title: str,
        x_values: Sequence,
        y_values: Iterable[float | None],
        x_label: str = "",
        y_label: str = "",
        width: int = 480,
        height: int = 300,
        margins: tuple[int, int, int, int] = (62, 20, 30, 50),
    ):
        self.title, self.x_label, self.y_label = title, x_label, y_label
        self.width, self.height = width, height
        self.left, self.right, self.top, self.bottom = margins
        self.x_values = list(dict.fromkeys(x_values))
        self.numeric = bool(self.x_values) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.x_values
        )
        if self.numeric:
            self.x_values.sort()
        ys = [float(y) for y in y_values if y is not None and math.isfinite(y)] or [0.0, 1.0]
        low, high = min(ys), max(ys)
        pad = 0.06 * (high - low) if high - low > 1e-12 else max(0.5, 0.05 * abs(low))
        self.y_low, self.y_high = low - pad, high + pad
        self.parts: list[str] = []
        self.legend_entries: list[tuple[str, str]] = []

    # -- coordinates ------------------------------------------------------------------------------
    @property
    def plot_width(self) -> float:
        return self.width - self.left - self.right

    def x(self, value) -> float:
        """Pixel x of an x value (categorical: the centre of its band)."""
        n = len(self.x_values)
        if self.numeric and n > 1:
            lo, hi = float(self.x_values[0]), float(self.x_values[-1])
            inner = 0.06 * self.plot_width
            return self.left + inner + (float(value) - lo) / (hi - lo) * (self.plot_width - 2 * inner)
        return self.left + (self.x_values.index(value) + 0.5) / max(n, 1) * self.plot_width

    def y(self, value: float) -> float:
        return self.top + (self.y_high - value) / (self.y_high - self.y_low) * (self.height - self.top - self.bottom)

    # -- marks --------------------------------------------------------------------------------------
    def marker(
        self, x_value, y: float, color: str, label: str | None = None, dx: float = 0.0, radius: float = 4.0
    ) -> None:
        """A filled circle; ``label`` becomes its tooltip. ``dx`` shifts it sideways in pixels (to set
        several series apart at one x)."""
        tip = f"<title>{esc(label)}</title>" if label else ""
        self.parts.append(
            f'<circle class="mark" cx="{self.x(x_value) + dx:.1f}" cy="{self.y(y):.1f}" r="{radius:g}" '
            f'fill="{color}">{tip}</circle>'
        )

    def error_bar(
        self, x_value, low: float | None, high: float | None, color: str, dx: float = 0.0, cap: float = 4.0
    ) -> None:
        """A vertical interval with caps, one path; nothing when an end is missing."""
        if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
            return
        x, y0, y1 = self.x(x_value) + dx, self.y(low), self.y(high)
        self.parts.append(
            f'<path class="errorbar" d="M{x:.1f},{y0:.1f}V{y1:.1f}M{x - cap:.1f},{y0:.1f}H{x + cap:.1f}'
            f'M{x - cap:.1f},{y1:.1f}H{x + cap:.1f}" stroke="{color}" stroke-width="1.3" fill="none"/>'
        )

    def line(
        self, points: Sequence[tuple[object, float]], color: str, dx: float = 0.0, name: str | None = None
    ) -> None:
        """A polyline through (x value, y) points, in the order given; ``name`` adds it to the legend."""
        coords = " ".join(f"{self.x(xv) + dx:.1f},{self.y(y):.1f}" for xv, y in points)
        self.parts.append(
            f'<polyline class="series" fill="none" stroke="{color}" stroke-width="1.8" points="{coords}"/>'
        )
        if name is not None:
            self.legend_entries.append((name, color))

    def reference(self, y: float, color: str, label: str) -> None:
        """A dashed horizontal line across the plot (e.g. the clean condition's mean), labelled at its right end."""
        py = self.y(y)
        self.parts.append(
            f'<line class="reference" x1="{self.left}" y1="{py:.1f}" x2="{self.width - self.right}" y2="{py:.1f}" '
            f'stroke="{color}" stroke-dasharray="4 3"/>'
        )
        self.parts.append(
            f'<text x="{self.width - self.right - 2}" y="{py - 3:.1f}" text-anchor="end" '
            f'fill="{color}">{esc(label)}</text>'
        )

    # -- the frame ----------------------------------------------------------------------------------
    def _frame(self) -> list[str]:
        w, h, base = self.width, self.height, self.height - self.bottom
        out = [
            f'<text x="{w / 2:.1f}" y="16" text-anchor="middle" font-size="13">{esc(self.title)}</text>',
            f'<line x1="{self.left}" y1="{base}" x2="{w - self.right}" y2="{base}" stroke="black"/>',
            f'<line x1="{self.left}" y1="{self.top}" x2="{self.left}" y2="{base}" stroke="black"/>',
        ]
        for tick in nice_ticks(self.y_low, self.y_high):
            y = self.y(tick)
            out.append(
                f'<line x1="{self.left - 4}" y1="{y:.1f}" x2="{self.left}" y2="{y:.1f}" stroke="black"/>'
                f'<line x1="{self.left}" y1="{y:.1f}" x2="{w - self.right}" y2="{y:.1f}" stroke="#e4e4e4"/>'
                f'<text x="{self.left - 6}" y="{y + 4:.1f}" text-anchor="end">{fmt_tick(tick)}</text>'
            )
        band = self.plot_width / max(len(self.x_values), 1)
        rotate = not self.numeric and max((len(str(v)) for v in self.x_values), default=0) * 6.2 > band
        for v in self.x_values:
            x = self.x(v)
            text = fmt_tick(v) if self.numeric else str(v)
            out.append(f'<line x1="{x:.1f}" y1="{base}" x2="{x:.1f}" y2="{base + 4}" stroke="black"/>')
            if rotate:
                out.append(
                    f'<text x="{x:.1f}" y="{base + 14}" text-anchor="end" '
                    f'transform="rotate(-25 {x:.1f} {base + 14})">{esc(text)}</text>'
                )
            else:
                out.append(f'<text x="{x:.1f}" y="{base + 16}" text-anchor="middle">{esc(text)}</text>')
        if self.x_label:
            out.append(
                f'<text x="{self.left + self.plot_width / 2:.1f}" y="{h - 8}" text-anchor="middle">'
                f"{esc(self.x_label)}</text>"
            )
        if self.y_label:
            cy = self.top + (h - self.top - self.bottom) / 2
            out.append(
                f'<text x="14" y="{cy:.1f}" text-anchor="middle" transform="rotate(-90 14 {cy:.1f})">'
                f"{esc(self.y_label)}</text>"
            )
        return out

    def _legend(self) -> list[str]:
        """Named lines, listed in the right margin (a chart with a legend sets that margin wide)."""
        out = []
        for k, (name, color) in enumerate(self.legend_entries):
            y = self.top + 6 + 14 * k
            x = self.width - self.right + 10
            out.append(
                f'<line x1="{x}" y1="{y}" x2="{x + 16}" y2="{y}" stroke="{color}" stroke-width="2.5"/>'
                f'<text x="{x + 20}" y="{y + 4}">{esc(name)}</text>'
            )
        return out

    def svg(self, element_id: str | None = None, standalone: bool = True) -> str:
        """The chart as an <svg> element: a .svg file (``standalone``, with its XML namespace) or inline
        in HTML (where the parser supplies the namespace, so the page holds no URL at all)."""
        ident = f' id="{esc(element_id)}"' if element_id else ""
        namespace = ' xmlns="http://www.w3.org/2000/svg"' if standalone else ""
        head = (
            f'<svg{namespace}{ident} width="{self.width}" height="{self.height}" '
            f'viewBox="0 0 {self.width} {self.height}" font-family="sans-serif" font-size="11">'
            f'<rect width="{self.width}" height="{self.height}" fill="white"/>'
        )
        return "\n".join([head, *self._frame(), *self.parts, *self._legend(), "</svg>"]) + "\n"
