"""UVR's constants as data (no torch: the command lines read the official values for their help).

Constants are the official code's (github deng12yx/UVR, read for facts); where we differ, the docstring
of the field says so and why.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

OFFICIAL_BLOCK = "single.10"  # the anchor block: single-stream block 10 of FLUX.1's 38
OFFICIAL_SINGLE_DEPTH = 38
OFFICIAL_ANCHOR_T = 104.0  # the official collection saves the block output at timestep 104 (of 1000)


@dataclass(frozen=True)
class UVRConfig:
    """Every constant of localisation and restriction. ``UVRConfig.preset("t2i" | "edit")`` gives the
    official values for FLUX.1-dev and FLUX.1-Kontext-dev."""

    # "replace": flagged patch outputs become noise (T2I);
    # "attention": scale attention to flagged context keys (editing)
    restrict: str = "replace"
    window_start: float = 850.0  # the start-up window: localise while t > this, restrict while t >= this (t in 0..1000)
    localize_at: str = "window"  # "window": every step in the window (T2I); "first": the first step only (Kontext)
    threshold: float = 0.6  # hard gate on the patch score (0.6 FLUX.1-dev, 0.2 Kontext)
    close_size: int = 3  # elliptic structuring element of the morphological closing (<= 1: none)
    fill_holes: bool = True
    keep: str = "mass_ratio"  # connected components kept: "mass_ratio", "topk_mass" or "topk_area"
    mass_ratio: float = 0.3  # "mass_ratio": keep the heaviest components until this share of the mass
    top_k: int = 3  # "topk_*": keep this many components
    min_area: int = 5  # components smaller than this many patches are dropped
    # at most this share of the patches (official: 2000 of 64x64; we keep the highest-scoring, not the first in
    # raster order)
    max_flagged: float = 2000 / 4096
    ring_radius: int = 0  # editing: the mask is dilated by an ellipse of this radius ...
    ring_iterations: int = 2  # ... this many times, and the added patches form the ring
    keep_share: float = 0.001  # T2I: flagged outputs become keep_share * out + (1 - keep_share) * N(0, 1)
    core_factor: float = 0.2  # editing: attention to flagged (core) context keys is scaled by this
    ring_factor: float = 0.4  # ... and to ring context keys by this
    boost: float = 1.05  # editing: attention of target queries to text and target keys is scaled by this
    seed: int = 0  # of the T2I noise (one generator per generation)

    def __post_init__(self):
        problems = []
        if self.restrict not in ("replace", "attention"):
            problems.append(f"restrict must be 'replace' or 'attention', got {self.restrict!r}")
        if self.localize_at not in ("window", "first"):
            problems.append(f"localize_at must be 'window' or 'first', got {self.localize_at!r}")
        if self.keep not in ("mass_ratio", "topk_mass", "topk_area"):
            problems.append(f"keep must be 'mass_ratio', 'topk_mass' or 'topk_area', got {self.keep!r}")
        if not 0 < self.mass_ratio <= 1:
            problems.append(f"mass_ratio must be in (0, 1], got {self.mass_ratio}")
        if not 0 < self.max_flagged <= 1:
            problems.append(f"max_flagged must be in (0, 1], got {self.max_flagged}")
        if not 0 <= self.keep_share <= 1:
            problems.append(f"keep_share must be in [0, 1], got {self.keep_share}")
        if min(self.top_k, self.min_area) < 1 or min(self.ring_radius, self.ring_iterations) < 0:
            problems.append("top_k and min_area must be >= 1, ring_radius and ring_iterations >= 0")
        if min(self.core_factor, self.ring_factor, self.boost) < 0:
            problems.append("core_factor, ring_factor and boost must be >= 0")
        if problems:
            raise ValueError("UVRConfig: " + "; ".join(problems))

    @classmethod
    def preset(cls, pipeline: str, **overrides) -> "UVRConfig":
        """The official settings for ``pipeline`` ("t2i": FLUX.1-dev; "edit": FLUX.1-Kontext-dev), then
        ``overrides`` (names of fields; ``None`` values are ignored)."""
        if pipeline == "t2i":
            base = {}
        elif pipeline == "edit":
            # The official Kontext call passes mass_ratio=0.8 but keeps its default "topk_mass" mode, where
            # the ratio is not read: the three heaviest components are kept.
            base = {
                "restrict": "attention",
                "localize_at": "first",
                "threshold": 0.2,
                "keep": "topk_mass",
                "mass_ratio": 0.8,
                "min_area": 3,
                "max_flagged": 1.0,
                "ring_radius": 3,
                "ring_iterations": 2,
            }
        else:
            raise ValueError(f"no UVR preset {pipeline!r}: use 't2i' or 'edit'")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown UVR settings {sorted(unknown)}")
        return cls(**{**base, **{k: v for k, v in overrides.items() if v is not None}})

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)
