"""What a protection run is, as plain data (no torch: the command lines build and check it before any
model loads, and manifests record it).

``PGDConfig``: the budget and the optimiser (``decontext.pgd`` runs it). ``ProtectConfig``: that plus
where the editor works (``resolution``), how the method's measure is taken before and after, and the
breakers the protection is optimised to survive (EOT). Budgets and step sizes are in 1/255 units of
the [0, 1] scale, as on the command line (``eps=12.75`` means 12.75/255).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

LEVELS = 255.0  # 8-bit levels in the [0, 1] scale: budgets and steps are given in 1/255 units (levels)


def fraction(levels: float) -> float:
    """A budget or step in 1/255 units (levels, as flags and configs give it) on the [0, 1] pixel scale."""
    return float(levels) / LEVELS


def levels(fraction_of_range: float) -> float:
    """The inverse of ``fraction``: a [0, 1]-scale amount in 1/255 units (levels)."""
    return float(fraction_of_range) * LEVELS


SCHEDULES = ("constant", "linear", "cosine")  # step-size schedules (pgd.step_size)
UPDATES = ("sign", "l2", "adam")  # update rules (pgd.PGD)
STARTS = (
    "clean",
    "uniform",
    "sign",
)  # where PGD starts: the clean image, a uniform point of the eps-ball, a corner of it


@dataclass(frozen=True)
class PGDConfig:
    """What a PGD run is, apart from its seed: budget, step, steps, update rule and start."""

    eps: float = 12.75  # L-inf radius in 1/255 units (the DeContext paper's 0.1 on [-1, 1])
    alpha: float = 0.6375  # (first) step size in 1/255 units
    steps: int = 800
    momentum: float = 0.0  # MI-FGSM decay; 0 = plain sign steps
    schedule: str = "constant"  # step-size schedule (SCHEDULES)
    start: str = (
        "clean"  # STARTS: "uniform" = PhotoGuard's random start; "sign" = every pixel +-eps (the noise control)
    )
    update: str = "sign"  # update rule (UPDATES)
    psnr_floor: float | None = None  # dB: also keep PSNR(protected, clean) at or above this (an L2 ball)
    eot_samples: int = 1  # with a transform (EOT): draws of it per step, their gradients averaged
    # The stopping rule (decontext.pgd.Plateau; 0 = never stop early, the paper's): stop once the mean loss
    # over the last ``stop_window`` steps has not risen above its best by more than ``stop_tol`` times the
    # gain so far for ``stop_patience`` steps.
    stop_patience: int = 0
    stop_window: int = 25
    stop_tol: float = 0.01

    def __post_init__(self):
        if self.eps < 0 or self.alpha <= 0 or self.steps < 0:
            raise ValueError(
                f"need eps >= 0, alpha > 0, steps >= 0 (got eps={self.eps}, alpha={self.alpha}, steps={self.steps})"
            )
        if not 0.0 <= self.momentum < 1.0 + 1e-9:
            raise ValueError(f"momentum must be in [0, 1], got {self.momentum}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown step-size schedule {self.schedule!r} (choose from {', '.join(SCHEDULES)})")
        if self.update not in UPDATES:
            raise ValueError(f"unknown update rule {self.update!r} (choose from {', '.join(UPDATES)})")
        if self.start not in STARTS:
            raise ValueError(f"unknown start {self.start!r} (choose from {', '.join(STARTS)})")
        if int(self.eot_samples) != self.eot_samples or self.eot_samples < 1:
            raise ValueError(f"eot_samples must be a whole number >= 1, got {self.eot_samples}")
        if self.psnr_floor is not None and not self.psnr_floor > 0:
            raise ValueError(f"psnr_floor must be a positive number of dB, got {self.psnr_floor}")
        if self.stop_patience < 0 or self.stop_window < 1 or self.stop_tol < 0:
            raise ValueError(
                "need stop_patience >= 0, stop_window >= 1, stop_tol >= 0 "
                f"(got {self.stop_patience}, {self.stop_window}, {self.stop_tol})"
            )

    @classmethod
    def for_method(
        cls,
        method=None,
        defaults: dict | None = None,
        preset: str | None = None,
        family_presets: dict | None = None,
        **explicit,
    ) -> "PGDConfig":
        """The config of a run of ``method``: the library's defaults, under ``defaults`` (e.g. an editor
        family's official budget), under the ``preset`` (PRESETS, with a family's own settings of it from
        ``family_presets``, e.g. its fast budget), under the method's ``pgd_defaults``, under the
        ``explicit`` choices (None = not chosen)."""
        names = {f.name for f in fields(cls)}
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
        preferred = dict(getattr(method, "pgd_defaults", {}) or {})
        chosen = {k: v for k, v in explicit.items() if v is not None}
        if preset == "paper" and chosen.get("stop_patience"):
            raise ValueError(
                "the paper preset never stops early (it is the official fixed-step run); drop --stop-patience, "
                "or use --preset fast, or no preset"
            )
        presetting = {**PRESETS[preset], **(family_presets or {}).get(preset, {})} if preset else {}
        scale = presetting.pop("alpha_scale", 1.0)  # a preset's step is relative to the family's own
        layers = [dict(defaults or {}), presetting, preferred, chosen]
        unknown = set().union(*layers) - names
        if unknown:
            raise TypeError(f"not PGD settings: {sorted(unknown)} (PGD has {sorted(names)})")
        merged: dict = {}
        for layer in layers:
            merged.update(layer)
        if scale != 1.0 and "alpha" not in chosen:
            merged["alpha"] = merged.get("alpha", cls.alpha) * scale
        return cls(**merged)

    def to_dict(self) -> dict:
        """The settings as manifests record them. Without the stopping rule (``stop_patience`` 0, the paper's
        fixed-step run) its three fields are left out, so such a run's record is what it was before the rule
        existed and earlier outputs still resume."""
        values = asdict(self)
        if not self.stop_patience:
            for name in STOP_FIELDS:
                values.pop(name)
        return values

    def replace(self, **changes) -> "PGDConfig":
        return replace(self, **changes)


STOP_FIELDS = ("stop_patience", "stop_window", "stop_tol")

# PGD presets, laid over an editor family's official budget (and under a method's own preferences and
# explicit flags). "paper": the official DeContext settings, nothing changed. "fast": the update rule,
# schedule and stopping rule that docs/EVIDENCE.md ("Fewer PGD steps") found to reach the paper's result in
# a fraction of its steps.
PRESETS = {
    "paper": {},
    "fast": {
        "steps": 100,
        "alpha_scale": 4.0,
        "momentum": 0.9,
        "schedule": "cosine",
        "stop_patience": 30,
        "stop_window": 20,
        "stop_tol": 0.01,
    },
}


def describe_preset(name: str, family_presets: dict | None = None) -> str:
    """What a preset sets (with a family's own settings of it), in words, e.g. for a flag's help."""
    values = {**PRESETS[name], **(family_presets or {}).get(name, {})}
    if not values.get("stop_patience", 1):  # the family turns the stopping rule off
        values = {k: v for k, v in values.items() if not k.startswith("stop_")} | {"stop_patience": 0}
    words = {
        "alpha_scale": lambda v: f"step x{v:g} the family's",
        "stop_patience": lambda v: f"stopping rule (patience {v}" if v else "no stopping rule",
        "stop_window": lambda v: f"window {v}",
        "stop_tol": lambda v: f"tol {v:g})",
    }
    return ", ".join(words[k](v) if k in words else f"{k} {v}" for k, v in values.items()) or "nothing changed"


@dataclass(frozen=True)
class ProtectConfig:
    """One protection's settings besides the method and the editor (``decontext.protect``)."""

    pgd: PGDConfig = field(default_factory=PGDConfig)
    # The editor's working size: auto (its pipeline's choice), native or N (an N x N area); None: the editor's
    # own default (``editor.default_resolution``: 64 on the toys, auto on real checkpoints; ``for_editor``).
    resolution: str | int | None = None
    measure_draws: int = 4  # fixed draws of the method's measure before and after (0 = none)
    eot: tuple[str, ...] = ()  # breakers (decontext.purify specs) the protection is optimised to survive
    init: str | None = None  # a protector (name or folder): PGD starts from its output, not the clean image

    def __post_init__(self):
        if self.measure_draws < 0:
            raise ValueError(f"measure_draws must be >= 0, got {self.measure_draws}")

    def replace(self, **changes) -> "ProtectConfig":
        return replace(self, **changes)

    def for_editor(self, editor) -> "ProtectConfig":
        """These settings with the working size resolved for ``editor`` (its default where none is set)."""
        if self.resolution is not None:
            return self
        return replace(self, resolution=getattr(editor, "default_resolution", "auto"))
