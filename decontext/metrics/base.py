"""Metric backends: the common interface, the options they share, and the registry the CLI iterates.

A *backend* is a class that produces one or more metric columns. It never raises out of ``load``:
when its weights (or a package it needs) are missing it sets ``available = False`` and explains why
in ``unavailable_reason``; the evaluation then reports the metric as unavailable and runs the rest.

Adding a backend = one new module in ``decontext/metrics/`` that defines a ``MetricBackend``
subclass decorated with ``@register(...)``, plus its module name in ``BUILTIN_MODULES`` below.
``applies`` decides from the run's ``run.json`` (``RunInfo``) whether the backend runs for a run,
e.g. ``applies=lambda info: info.model == "toy"``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar, Literal

HEADLINES = (
    "toy_identity",
    "ism_arcface",
    "ism_facenet",
    "ism_dlib",
    "clip_i",
    "lpips_vs_clean",
)  # headline preference order

if TYPE_CHECKING:  # pragma: no cover
    from decontext.metrics.run import EditRecord, RunData, RunInfo

Direction = Literal["higher", "lower", "none"]
Scope = Literal["edit", "input"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric column.

    ``direction`` says which way is *better protection*: "higher" means a larger value means the
    protection worked better. ``scope`` is "edit" (one value per edited output, in metrics.csv) or
    "input" (one value per protected input image vs its source, in inputs.csv).
    """

    name: str
    direction: Direction
    scope: Scope
    description: str
    conditions: Literal["all", "protected"] = "all"  # "protected": not defined for the clean condition


@dataclass
class EvalOptions:
    """Settings every backend may read. ``weights_dir`` is searched before the usual caches."""

    weights_dir: Path | None = None
    device: str = "cpu"
    clip_model: str = "openai/clip-vit-base-patch32"
    clip_neutral_text: str = "a photo of a person"
    arcface_model: Path | None = None
    psnr_cap_db: float = 100.0
    extra: dict[str, object] = field(default_factory=dict)  # free-form settings for third-party backends


class MetricBackend:
    """Base class. Subclasses set ``name`` and ``metrics`` and override ``load``/``score_*``."""

    name: ClassVar[str] = "base"
    metrics: ClassVar[tuple[MetricSpec, ...]] = ()

    def __init__(self, options: EvalOptions | None = None) -> None:
        self.options = options or EvalOptions()
        self.available = False
        self.unavailable_reason: str | None = "not loaded yet"
        # What produced the numbers, once loaded: network, weights file, detector (shown beside every
        # metric of this backend in summary.md, report.html and the command's summary).
        self.source: str | None = None

    # -- life cycle -------------------------------------------------------------------------------
    def load(self) -> None:
        """Find and load weights. Must not raise: call ``_ok()`` or ``_unavailable(reason)``."""
        self._ok()

    def prepare(self, run: "RunData") -> None:
        """Called once per run before scoring (e.g. reference embeddings). May raise; the
        evaluation then marks the backend unavailable with the error as reason."""

    def score_edit(self, edit: "EditRecord", run: "RunData") -> dict[str, float]:
        """Values of this backend's edit-scope metrics for one edit (missing keys = not defined)."""
        return {}

    def score_input(self, condition: str, stem: str, run: "RunData") -> dict[str, float]:
        """Values of this backend's input-scope metrics for one protected input image."""
        return {}

    # -- helpers ----------------------------------------------------------------------------------
    def _ok(self) -> None:
        self.available = True
        self.unavailable_reason = None

    def _unavailable(self, reason: str) -> None:
        self.available = False
        self.unavailable_reason = reason

    @classmethod
    def metric_names(cls, scope: Scope | None = None) -> list[str]:
        return [m.name for m in cls.metrics if scope is None or m.scope == scope]


# -- registry -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackendEntry:
    name: str
    factory: Callable[[EvalOptions], MetricBackend]
    applies: Callable[["RunInfo"], bool]
    order: int
    # said in the summary when ``applies`` is False (None: nothing worth saying, e.g. the toy reader on photos)
    why_not: str | None = None


_REGISTRY: dict[str, BackendEntry] = {}

# Modules imported by ``registered()`` so that their ``@register`` decorators run.
BUILTIN_MODULES: tuple[str, ...] = (
    "decontext.metrics.pixel",
    "decontext.metrics.lpips",
    "decontext.metrics.identity",
    "decontext.metrics.dlib_face",
    "decontext.metrics.arcface",
    "decontext.metrics.clip",
    "decontext.metrics.quality",
    "decontext.metrics.toy",
)


def _always(_info: "RunInfo") -> bool:
    return True


PHOTOGRAPHS_ONLY = (
    "the toy world's faces are 64 px drawings, not photographs: face detectors and recognisers say nothing "
    "about them (toy_identity measures identity there)"
)


def photographs(info: "RunInfo") -> bool:
    """``applies`` of the face detector and recogniser metrics: every run but a toy's (``PHOTOGRAPHS_ONLY``)."""
    from decontext.toy.names import is_toy_model

    return not is_toy_model(info.model)


def register(
    name: str, *, applies: Callable[["RunInfo"], bool] = _always, order: int = 100, why_not: str | None = None
):
    """Class decorator: make a backend known to the CLI under ``name``.

    ``applies(run_info)`` chooses, from run.json, whether it runs on a given run (``why_not`` says why
    not, in the summary); ``order`` sorts the columns (lower first)."""

    def deco(cls: type[MetricBackend]) -> type[MetricBackend]:
        cls.name = name
        _REGISTRY[name] = BackendEntry(name, cls, applies, order, why_not)
        return cls

    return deco


def registered() -> list[BackendEntry]:
    for mod in BUILTIN_MODULES:
        importlib.import_module(mod)
    return sorted(_REGISTRY.values(), key=lambda e: (e.order, e.name))


def all_metric_specs() -> dict[str, MetricSpec]:
    specs: dict[str, MetricSpec] = {}
    for entry in registered():
        cls = entry.factory if isinstance(entry.factory, type) else None
        for spec in getattr(cls, "metrics", ()):
            specs[spec.name] = spec
    return specs


def backends_for(info: "RunInfo", options: EvalOptions, only: list[str] | None = None) -> list[MetricBackend]:
    """Instantiate the registered backends that apply to this run (optionally only those named)."""
    entries = registered()
    if only:
        unknown = sorted(set(only) - {e.name for e in entries})
        if unknown:
            raise ValueError(
                f"unknown metric backend(s): {', '.join(unknown)}; known: {', '.join(e.name for e in entries)}"
            )
    chosen = [e for e in entries if (not only or e.name in only) and e.applies(info)]
    return [e.factory(options) for e in chosen]


def not_applying(info: "RunInfo", only: list[str] | None = None) -> dict[str, str]:
    """Backend name -> why it does not run on this run (of those asked for: ``only``, or all), for those whose
    absence is worth a line (``register(why_not=...)``)."""
    return {
        e.name: e.why_not for e in registered() if e.why_not and (not only or e.name in only) and not e.applies(info)
    }
