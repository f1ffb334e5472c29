"""Toy world v3: drawn 64x64 faces whose identity is SHAPE, with an exact ground truth for every edit.

In world v1 (``decontext.toy.world``) a person is mostly colours (skin, eyes, hair colour), flat regions
an editor can re-read and repair at any noise level. Here a person (an :class:`Identity`) is four
geometric attributes, at three scales:

- ``face`` (4): the head's outline and jaw: round, long, square (a boxy jaw), heart (wide forehead, a
  narrow chin): the largest structure in the picture;
- ``hair`` (4): the hair's silhouette: crop (a cap with sideburns), long (to the shoulders), bangs (a
  low fringe), puff (a wide round volume around the head);
- ``eyes`` (3): spacing and shape: close-set and round, wide-set and narrow, large and round;
- ``nose`` (3): button (a small round tip), long (a narrow ridge), broad (a wide triangle).

That is 144 identities. Colour carries no identity: skin tone, hair colour and eye colour are drawn
per scene with the rest of the nuisance (background colour, a position jitter of +-3 px, and the
lighting: a linear brightness gradient over the whole picture), so a reader or an editor that keeps
the colours but not the shapes keeps nothing of the person. The six edits are v1's (hat, glasses, three
background colours, smile); each changes only its own region (hat above the hair line, glasses as thin
frames around the eyes, a smile below the nose), so identity stays readable in every edited render.

Split: the 48 identities with ``(face + hair + eyes + nose) % 3 == 0`` are held out for evaluation;
the other 96 are for training, and every attribute value occurs in both halves.

The module has the same interface as ``decontext.toy.world`` (``decontext.toy.worlds`` picks one by
name). Everything is deterministic: ``sample_scene(identity, seed)`` draws the nuisance from ``seed``
only and ``render`` has no randomness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# shared with world v1: the background and edit colours, the six edits and how they apply, the split rule
from .world import (  # noqa: F401 (BG_STATES, EDITS, apply_edit, is_held_out: re-exported, world v3's too)
    BACKGROUNDS,
    BG_STATES,
    EDITS,
    GLASSES,
    HAT,
    HAT_BAND,
    MOUTH,
    TEETH,
    EditableScene,
    MixedRadixIdentity,
    apply_edit,
    draw_edit_state,
    draw_placement,
    is_held_out,
)

NAME = "v3"
SIZE = 64
_S = 4  # supersampling factor: drawn at 256 px, box-filtered to 64 px (smooth outlines)

FACES = ("round", "long", "square", "heart")
HAIRS = ("crop", "long", "bangs", "puff")
EYE_SHAPES = ("close", "wide", "large")
NOSES = ("button", "long", "broad")
ATTRIBUTES = ("face", "hair", "eyes", "nose")
N_VALUES = {"face": len(FACES), "hair": len(HAIRS), "eyes": len(EYE_SHAPES), "nose": len(NOSES)}
N_IDENTITIES = len(FACES) * len(HAIRS) * len(EYE_SHAPES) * len(NOSES)

# Colours are nuisance here: drawn per scene.
SKIN = ((255, 224, 200), (236, 190, 150), (200, 148, 104), (150, 100, 66), (96, 62, 42))
HAIR_COLOURS = ((24, 22, 26), (120, 66, 28), (240, 212, 96), (206, 104, 30), (170, 170, 176))
EYE_COLOURS = ((112, 62, 22), (40, 100, 235), (30, 170, 60), (90, 90, 100))
MIN_HAIR_CONTRAST = 100.0  # hair colour is drawn among those at least this far (RGB distance) from the skin
LIGHT_MAX = 0.12  # the lighting gradient changes brightness by at most this share from the centre to an edge


@dataclass(frozen=True)
class Identity(MixedRadixIdentity):
    face: int
    hair: int
    eyes: int
    nose: int

    RADIX = (len(FACES), len(HAIRS), len(EYE_SHAPES), len(NOSES))

    def describe(self) -> str:
        return (
            f"{FACES[self.face]} face, {HAIRS[self.hair]} hair, {EYE_SHAPES[self.eyes]} eyes, {NOSES[self.nose]} nose"
        )


def eval_identities() -> list[Identity]:
    """The 48 held-out identities, in index order."""
    return Identity.split(held_out=True)


def train_identities() -> list[Identity]:
    """The 96 training identities, in index order."""
    return Identity.split(held_out=False)


@dataclass(frozen=True)
class Scene(EditableScene):
    identity: Identity
    bg: tuple[int, int, int]  # the nuisance background colour (used when background is None)
    dx: int = 0
    dy: int = 0
    skin: tuple[int, int, int] = SKIN[1]
    hair_colour: tuple[int, int, int] = HAIR_COLOURS[0]
    eye_colour: tuple[int, int, int] = EYE_COLOURS[0]
    light: tuple[float, float] = (0.0, 0.0)  # brightness gradient along x and y (share at the edge)
    hat: bool = False
    glasses: bool = False
    background: str | None = None
    smile: bool = False


def _hair_colour_for(skin: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    far = [h for h in HAIR_COLOURS if math.dist(h, skin) >= MIN_HAIR_CONTRAST]
    return far[int(rng.integers(len(far)))]


def sample_scene(identity: Identity, seed: int, extras: float = 0.0) -> Scene:
    """A scene of ``identity`` with nuisance (colours, background, position, lighting) drawn from
    ``seed``. With probability ``extras`` each edit attribute is also switched on at random."""
    rng = np.random.default_rng(seed)
    bg, dx, dy = draw_placement(rng)
    skin = SKIN[int(rng.integers(len(SKIN)))]
    hair_colour = _hair_colour_for(skin, rng)
    eye_colour = EYE_COLOURS[int(rng.integers(len(EYE_COLOURS)))]
    light = tuple(float(v) for v in np.round(rng.uniform(-LIGHT_MAX, LIGHT_MAX, size=2), 3))
    return Scene(identity, bg, dx, dy, skin, hair_colour, eye_colour, light, **draw_edit_state(rng, extras))


def edit_region(scene: Scene, edit: str) -> tuple[int, int, int, int] | None:
    """Bounding box (x0, y0, x1, y1), in 64-px pixels and exclusive, of what ``edit`` may change;
    None for background edits (they change exactly the visible background)."""
    cx, cy = scene.center
    if edit == "hat":
        return (cx - 22, cy - 33, cx + 23, cy - 12)
    if edit == "glasses":
        return (cx - 15, cy - 11, cx + 16, cy + 5)
    if edit == "smile":
        return (cx - 11, cy + 8, cx + 12, cy + 18)
    return None


# ------------------------------------------------------------------------------------------ geometry
def face_outline(face: int, cx: float, cy: float, grow: float = 0.0, n: int = 96) -> list[tuple[float, float]]:
    """The head's outline as a polygon in 64-px units (``grow`` widens it by that many pixels)."""
    kind = FACES[face]
    points = []
    for k in range(n):
        a = 2 * math.pi * k / n
        c, s = math.cos(a), math.sin(a)  # s > 0: lower half (image y grows downwards)
        if kind == "round":
            rx, ry, x, y = 18.0, 18.0, c, s
        elif kind == "long":
            rx, ry, x, y = 13.5, 22.0, c, s
        elif kind == "square":  # a superellipse: straight cheeks and a boxy jaw
            rx, ry = 17.5, 20.0
            x, y = math.copysign(abs(c) ** 0.4, c), math.copysign(abs(s) ** 0.4, s)
        else:  # heart: wide forehead and cheekbones, the jaw narrowing to the chin
            rx, ry, x, y = 19.5, 20.5, c, s
            if s > 0:
                x *= 1.0 - 0.65 * s**1.3
        points.append((cx + (rx + grow) * x, cy + (ry + grow) * y))
    return points


def _scaled(points, factor=_S):
    return [(factor * x, factor * y) for x, y in points]


def _ellipse(draw, cx, cy, rx, ry, fill):
    draw.ellipse([_S * (cx - rx), _S * (cy - ry), _S * (cx + rx) - 1, _S * (cy + ry) - 1], fill=fill)


def _rect(draw, x0, y0, x1, y1, fill):
    draw.rectangle([_S * x0, _S * y0, _S * x1 - 1, _S * y1 - 1], fill=fill)


def _shade(colour, factor):
    return tuple(int(round(min(255, c * factor))) for c in colour)


def _draw_eyes(d, scene: Scene, cx: int, cy: int) -> None:
    kind = EYE_SHAPES[scene.identity.eyes]
    spacing, (wx, wy), iris = {
        "close": (5, (3.5, 3.5), 2.5),
        "wide": (9, (5.0, 2.0), 2.0),
        "large": (7, (4.5, 4.5), 3.2),
    }[kind]
    for ex in (cx - spacing, cx + spacing):
        _ellipse(d, ex, cy - 3, wx, wy, (250, 250, 250))
        _ellipse(d, ex, cy - 3, min(iris, wx), min(iris, wy), scene.eye_colour)
        _ellipse(d, ex, cy - 3, 0.9, 0.9, (10, 10, 10))


def nose_colour(skin: tuple[int, int, int]) -> tuple[int, int, int]:
    """A shadow on light skin, a highlight on dark skin: the nose's shape keeps its contrast on every tone."""
    luminance = 0.3 * skin[0] + 0.59 * skin[1] + 0.11 * skin[2]
    return _shade(skin, 0.55) if luminance > 100 else _shade(skin, 1.7)


def _draw_nose(d, scene: Scene, cx: int, cy: int) -> None:
    colour = nose_colour(scene.skin)
    kind = NOSES[scene.identity.nose]
    if kind == "button":
        _ellipse(d, cx, cy + 5, 2.6, 2.3, colour)
    elif kind == "long":
        _rect(d, cx - 1.25, cy - 3, cx + 1.25, cy + 8, colour)
    else:
        d.polygon(_scaled([(cx, cy), (cx - 6.0, cy + 7.5), (cx + 6.0, cy + 7.5)]), fill=colour)


def _hair_mask(size, scene: Scene, cx: int, cy: int) -> Image.Image:
    """The hair drawn in front of the head: a cap following the head's own outline down to the hair
    line (crop adds sideburns)."""
    kind = HAIRS[scene.identity.hair]
    cap = Image.new("L", size, 0)
    cd = ImageDraw.Draw(cap)
    cd.polygon(_scaled([(x, y - 3) for x, y in face_outline(scene.identity.face, cx, cy, grow=2.0)]), fill=255)
    hair_line = cy - 5 if kind == "bangs" else cy - 10
    _rect(cd, 0, hair_line, SIZE, SIZE, 0)
    if kind == "crop":
        _rect(cd, cx - 19, cy - 12, cx - 14, cy + 1, 255)
        _rect(cd, cx + 14, cy - 12, cx + 19, cy + 1, 255)
        # the sideburns stop at the head's outline
        outside = Image.new("L", size, 255)
        ImageDraw.Draw(outside).polygon(_scaled(face_outline(scene.identity.face, cx, cy, grow=1.0)), fill=0)
        burns = Image.new("L", size, 0)
        _rect(ImageDraw.Draw(burns), 0, cy - 10, SIZE, SIZE, 255)
        cap.paste(0, mask=Image.composite(outside, Image.new("L", size, 0), burns))
    return cap


def render(scene: Scene) -> np.ndarray:
    """Render ``scene`` to a (64, 64, 3) uint8 array."""
    bg = BACKGROUNDS[scene.background] if scene.background else scene.bg
    img = Image.new("RGB", (SIZE * _S, SIZE * _S), tuple(bg))
    d = ImageDraw.Draw(img)
    cx, cy = scene.center
    hair_kind = HAIRS[scene.identity.hair]
    skin, hair = scene.skin, scene.hair_colour

    # hair behind the head
    if hair_kind == "long":
        _ellipse(d, cx, cy - 4, 21, 22, hair)
        _rect(d, cx - 21, cy - 4, cx + 21, cy + 26, hair)
    elif hair_kind == "puff":
        _ellipse(d, cx, cy - 7, 27, 23, hair)
    # neck, head and ears
    _rect(d, cx - 6, cy + 15, cx + 6, cy + 30, _shade(skin, 0.9))
    d.polygon(_scaled(face_outline(scene.identity.face, cx, cy)), fill=skin)
    half = max(x for x, _ in face_outline(scene.identity.face, 0, 0))
    _ellipse(d, cx - half + 0.5, cy - 1, 2.5, 4, skin)
    _ellipse(d, cx + half - 0.5, cy - 1, 2.5, 4, skin)
    img.paste(hair, mask=_hair_mask(img.size, scene, cx, cy))
    _draw_eyes(d, scene, cx, cy)
    _draw_nose(d, scene, cx, cy)
    # mouth, below the nose
    if scene.smile:
        d.chord([_S * (cx - 9), _S * (cy + 4), _S * (cx + 9) - 1, _S * (cy + 17) - 1], 0, 180, fill=MOUTH)
        _rect(d, cx - 6, cy + 11, cx + 6, cy + 13, TEETH)
    else:
        _rect(d, cx - 6, cy + 11, cx + 6, cy + 13, MOUTH)
    if scene.glasses:  # thin frames: the eyes' shape and spacing stay visible inside them
        for ex in (cx - 8, cx + 8):
            d.ellipse([_S * (ex - 7), _S * (cy - 10), _S * (ex + 7) - 1, _S * (cy + 4) - 1], outline=GLASSES, width=_S)
        _rect(d, cx - 1, cy - 5, cx + 1, cy - 4, GLASSES)
    if scene.hat:
        _rect(d, cx - 13, cy - 32, cx + 13, cy - 15, HAT)
        _rect(d, cx - 13, cy - 20, cx + 13, cy - 16, HAT_BAND)
        _rect(d, cx - 21, cy - 16, cx + 21, cy - 13, HAT)
    small = np.asarray(img.resize((SIZE, SIZE), Image.BOX), dtype=np.float32)
    ax, ay = scene.light
    ramp = np.linspace(-1.0, 1.0, SIZE, dtype=np.float32)
    gain = 1.0 + ax * ramp[None, :] + ay * ramp[:, None]
    return np.clip(np.round(small * gain[..., None]), 0, 255).astype(np.uint8)


def render_pil(scene: Scene) -> Image.Image:
    return Image.fromarray(render(scene))


def labels(scene: Scene) -> dict[str, int]:
    """The reader's targets for a scene: the 4 identity attributes and the edit state."""
    i = scene.identity
    return {
        "face": i.face,
        "hair": i.hair,
        "eyes": i.eyes,
        "nose": i.nose,
        "hat": int(scene.hat),
        "glasses": int(scene.glasses),
        "background": scene.bg_state,
        "smile": int(scene.smile),
    }


def importance(scene: Scene) -> np.ndarray:
    """A (64, 64) float32 weight map for reconstruction losses: 1 on the background, 3 on the head and
    hair, 8 on the eyes and nose (the smallest identity cues)."""
    cx, cy = scene.center
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5
    w = np.ones((SIZE, SIZE), np.float32)
    head = ((xx - cx) / 28.0) ** 2 + ((yy - cy + 4) / 30.0) ** 2 <= 1.0
    w[head] = 3.0
    w[max(cy - 9, 0) : cy + 8, max(cx - 15, 0) : cx + 16] = 8.0
    return w
