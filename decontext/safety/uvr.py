"""UVR: a training-free regulator that stops an unsafe concept in an MM-DiT (FLUX.1-dev text-to-image,
FLUX.1-Kontext editing) while it generates.

1. **Anchors** (``collect_anchors``, ``python -m decontext.safety.collect``): generate from prompts that
   show the concept and keep, per generation, the attention output of the image tokens at one block
   (per head, averaged over the image tokens) at chosen timesteps. Stored per concept in a safetensors
   file with the settings they were taken with (``Anchors``).
2. **Localisation**, in the "semantic start-up" window (t > 850 of 1000): at the anchor block, each
   target patch scores ``out . anchor / sqrt(d)`` averaged over heads and anchors; the patch map is
   thresholded, closed, its holes filled, its connected components kept by mass and area, and (for
   editing) dilated into a ring (``localize``).
3. **Restriction**, while t >= 850: text-to-image replaces the flagged patches' attention outputs by
   ``0.001 * out + 0.999 * N(0, 1)``; editing scales the attention that text and target queries pay to
   the flagged context keys (core 0.2, ring 0.4) and the attention target queries pay to text and
   target keys (1.05), without renormalising.

Everything is installed through attention processors and one forward pre-hook on the transformer
(``with regulate(pipe, anchors): pipe(...)``) and removed on exit; diffusers' code is never edited.
When nothing is flagged, or outside ``regulate``, every output is bit-identical to the stock pipeline.

Constants are the official code's (github deng12yx/UVR, read for facts); where we differ, the
docstring of the field says so and why. Our additions: per-sample masks (the official code averages
the score over the batch), a seeded noise generator, masks carried from the target grid to a context
grid of another size, and the 1.05 boost applied only once something is flagged (the official code
applies it at the first step before localising, which would change unflagged generations).
"""

from __future__ import annotations

from .anchors import (
    FORMAT,
    FORMAT_VERSION,
    METADATA_KEY,
    AnchorFileError,
    Anchors,
    collect_anchors,
    default_block,
    make_anchors,
    merge,
)
from .config import OFFICIAL_ANCHOR_T, OFFICIAL_BLOCK, OFFICIAL_SINGLE_DEPTH, UVRConfig
from .localize import T_SCALE, Localization, geometry, localize, patch_scores, transformer_of
from .regulator import Regulator, regulate

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "METADATA_KEY",
    "OFFICIAL_ANCHOR_T",
    "OFFICIAL_BLOCK",
    "OFFICIAL_SINGLE_DEPTH",
    "T_SCALE",
    "AnchorFileError",
    "Anchors",
    "Localization",
    "Regulator",
    "UVRConfig",
    "collect_anchors",
    "default_block",
    "geometry",
    "localize",
    "make_anchors",
    "merge",
    "patch_scores",
    "regulate",
    "transformer_of",
]
