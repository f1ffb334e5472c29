"""The toy world: procedurally drawn 64x64 faces with an exact ground truth for every edit.

A person (an :class:`Identity`) is four attributes: skin tone (5), eye colour (4), hair colour (5) and
hair style (3), i.e. 300 identities. A :class:`Scene` adds the nuisance (background colour, a small
position jitter) and the edit state (hat, glasses, background colour, smile). Six edits change the
edit state and nothing else, so the ground-truth result of an edit is simply the render of the edited
scene: every pixel outside the edited region is identical to the source.

Split: the 100 identities with ``(skin + eyes + hair_color + hair_style) % 3 == 0`` are held out for
evaluation (the editor and its VAE never see them); the other 200 are for training. Every
(skin, eyes, hair colour) triple appears in both halves, with different hair styles.

Everything is deterministic: ``sample_scene(identity, seed)`` draws the nuisance from ``seed`` only and
``render`` has no randomness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np
from PIL import Image, ImageDraw

NAME = "v1"
SIZE = 64
_S = 2  # supersampling factor: drawn at 128 px, box-filtered to 64 px

SKIN = ((255, 224, 200), (236, 190, 150), (200, 148, 104), (150, 100, 66), (96, 62, 42))
SKIN_NAMES = ("pale", "light", "tan", "brown", "dark")
EYES = ((112, 62, 22), (40, 100, 235), (30, 170, 60), (128, 128, 140))
EYE_NAMES = ("brown", "blue", "green", "grey")
HAIR = ((24, 22, 26), (120, 66, 28), (240, 212, 96), (206, 104, 30), (232, 92, 168))
HAIR_NAMES = ("black", "brown", "blonde", "ginger", "pink")
STYLES = ("short", "long", "bangs")
ATTRIBUTES = ("skin", "eyes", "hair_color", "hair_style")
N_VALUES = {"skin": len(SKIN), "eyes": len(EYES), "hair_color": len(HAIR), "hair_style": len(STYLES)}
N_IDENTITIES = len(SKIN) * len(EYES) * len(HAIR) * len(STYLES)

# Nuisance backgrounds: pale colours, far from the saturated edit backgrounds below.
NUISANCE_BG = (
    (205, 205, 205),
    (228, 214, 186),
    (206, 196, 228),
    (240, 236, 176),
    (246, 206, 178),
    (186, 206, 204),
    (222, 190, 212),
    (170, 170, 160),
)
BACKGROUNDS = {"blue": (46, 86, 222), "green": (44, 168, 76), "red": (212, 34, 64)}
BG_STATES = ("other", "blue", "green", "red")  # what the reader reports about the background

HAT = (92, 40, 124)
HAT_BAND = (236, 196, 60)
GLASSES = (20, 20, 24)
MOUTH = (128, 34, 44)
TEETH = (250, 250, 246)

EDITS = ("hat", "glasses", "background_blue", "background_green", "background_red", "smile")


class MixedRadixIdentity:
    """A person as one index per attribute (the dataclass fields, in order, with ``RADIX`` values each);
    ``index`` numbers the people in mixed radix, the first attribute most significant."""

    RADIX: tuple[int, ...] = ()

    def as_tuple(self) -> tuple[int, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))

    @property
    def index(self) -> int:
        value = 0
        for digit, size in zip(self.as_tuple(), self.RADIX, strict=False):
            value = value * size + digit
        return value

    @classmethod
    def from_index(cls, index: int):
        count = math.prod(cls.RADIX)
        if not 0 <= index < count:
            raise ValueError(f"identity index {index} out of range 0..{count - 1}")
        digits = []
        for size in reversed(cls.RADIX):
            index, digit = divmod(index, size)
            digits.append(digit)
        return cls(*reversed(digits))

    @classmethod
    def everyone(cls) -> list:
        """Every identity, in index order."""
        return [cls.from_index(i) for i in range(math.prod(cls.RADIX))]

    @classmethod
    def split(cls, held_out: bool) -> list:
        """The held-out (or the training) identities, in index order (``is_held_out``)."""
        return [i for i in cls.everyone() if is_held_out(i) == held_out]


class EditableScene:
    """What every world's scene shares: the face's centre (a +-3 px shift around (32, 34)) and the
    background state the reader reports."""

    @property
    def center(self) -> tuple[int, int]:
        return 32 + self.dx, 34 + self.dy

    @property
    def bg_state(self) -> int:
        return BG_STATES.index(self.background) if self.background else 0


@dataclass(frozen=True)
class Identity(MixedRadixIdentity):
    skin: int
    eyes: int
    hair_color: int
    hair_style: int

    RADIX = (len(SKIN), len(EYES), len(HAIR), len(STYLES))

    def describe(self) -> str:
        return (
            f"{SKIN_NAMES[self.skin]} skin, {EYE_NAMES[self.eyes]} eyes, "
            f"{HAIR_NAMES[self.hair_color]} {STYLES[self.hair_style]} hair"
        )


def is_held_out(identity) -> bool:
    """The fixed split of every world: attribute indices summing to a multiple of 3 are held out."""
    return sum(identity.as_tuple()) % 3 == 0


def eval_identities() -> list[Identity]:
    """The 100 held-out identities, in index order."""
    return Identity.split(held_out=True)


def train_identities() -> list[Identity]:
    """The 200 training identities, in index order."""
    return Identity.split(held_out=False)


@dataclass(frozen=True)
class Scene(EditableScene):
    identity: Identity
    bg: tuple[int, int, int]  # the nuisance background colour (used when background is None)
    dx: int = 0
    dy: int = 0
    hat: bool = False
    glasses: bool = False
    background: str | None = None  # None (nuisance colour) or a key of BACKGROUNDS
    smile: bool = False


def draw_placement(rng: np.random.Generator) -> tuple[tuple[int, int, int], int, int]:
    """The nuisance every world draws first: a pale background colour (jittered by +-12) and a +-3 px shift."""
    base = NUISANCE_BG[rng.integers(len(NUISANCE_BG))]
    bg = tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in base)
    dx, dy = (int(v) for v in rng.integers(-3, 4, size=2))
    return bg, dx, dy


def draw_edit_state(rng: np.random.Generator, extras: float) -> dict:
    """Each edit attribute switched on with probability ``extras`` (the scene fields hat, glasses,
    background, smile)."""
    flags = rng.random(4) < extras
    background = ("blue", "green", "red")[rng.integers(3)] if flags[2] else None
    return {"hat": bool(flags[0]), "glasses": bool(flags[1]), "background": background, "smile": bool(flags[3])}


def sample_scene(identity: Identity, seed: int, extras: float = 0.0) -> Scene:
    """A scene of ``identity`` with nuisance drawn from ``seed``. With probability ``extras`` each edit
    attribute (hat, glasses, background, smile) is also switched on at random."""
    rng = np.random.default_rng(seed)
    bg, dx, dy = draw_placement(rng)
    return Scene(identity, bg, dx, dy, **draw_edit_state(rng, extras))


def apply_edit(scene, edit: str):
    """The scene after ``edit`` (one of EDITS): the exact ground truth of that edit."""
    if edit == "hat":
        return replace(scene, hat=True)
    if edit == "glasses":
        return replace(scene, glasses=True)
    if edit == "smile":
        return replace(scene, smile=True)
    if edit.startswith("background_") and edit[len("background_") :] in BACKGROUNDS:
        return replace(scene, background=edit[len("background_") :])
    raise ValueError(f"unknown edit {edit!r}; expected one of {EDITS}")


def edit_region(scene: Scene, edit: str) -> tuple[int, int, int, int] | None:
    """Bounding box (x0, y0, x1, y1), in 64-px pixels and exclusive, of what ``edit`` may change;
    None for background edits (they change exactly the visible background)."""
    cx, cy = scene.center
    if edit == "hat":
        return (cx - 22, cy - 33, cx + 23, cy - 12)
    if edit == "glasses":
        return (cx - 15, cy - 11, cx + 16, cy + 5)
    if edit == "smile":
        return (cx - 11, cy + 5, cx + 12, cy + 18)
    return None


def _ellipse(draw, cx, cy, rx, ry, fill):
    draw.ellipse([_S * (cx - rx), _S * (cy - ry), _S * (cx + rx) - 1, _S * (cy + ry) - 1], fill=fill)


def _rect(draw, x0, y0, x1, y1, fill):
    draw.rectangle([_S * x0, _S * y0, _S * x1 - 1, _S * y1 - 1], fill=fill)


def render(scene: Scene) -> np.ndarray:
    """Render ``scene`` to a (64, 64, 3) uint8 array."""
    ident = scene.identity
    bg = BACKGROUNDS[scene.background] if scene.background else scene.bg
    img = Image.new("RGB", (SIZE * _S, SIZE * _S), tuple(bg))
    d = ImageDraw.Draw(img)
    cx, cy = scene.center
    skin, hair, eye = SKIN[ident.skin], HAIR[ident.hair_color], EYES[ident.eyes]
    style = STYLES[ident.hair_style]

    # hair behind the head (long style): side panels down to the shoulders
    if style == "long":
        _ellipse(d, cx, cy - 4, 21, 22, hair)
        _rect(d, cx - 21, cy - 4, cx + 21, cy + 26, hair)
    # neck and head
    _rect(d, cx - 6, cy + 16, cx + 6, cy + 30, skin)
    _ellipse(d, cx, cy, 17, 20, skin)
    # ears
    _ellipse(d, cx - 17, cy - 1, 3, 4, skin)
    _ellipse(d, cx + 17, cy - 1, 3, 4, skin)
    # hair on top: a cap down to the hair line; short hair has sideburns, bangs a low straight fringe
    hair_line = {"short": cy - 10, "long": cy - 10, "bangs": cy - 6}[style]
    cap = Image.new("L", img.size, 0)
    cd = ImageDraw.Draw(cap)
    _ellipse(cd, cx, cy - 3, 19, 23, 255)
    _rect(cd, 0, hair_line, SIZE, SIZE, 0)
    if style == "short":
        _rect(cd, cx - 18, cy - 12, cx - 14, cy - 1, 255)
        _rect(cd, cx + 14, cy - 12, cx + 18, cy - 1, 255)
    img.paste(hair, mask=cap)
    # eyes: white, iris in the eye colour, small pupil
    for ex in (cx - 7, cx + 7):
        _ellipse(d, ex, cy - 3, 5, 4, (250, 250, 250))
        _ellipse(d, ex, cy - 3, 3, 3, eye)
        d.ellipse([_S * ex - 1, _S * (cy - 3) - 1, _S * ex, _S * (cy - 3)], fill=(10, 10, 10))
    # nose
    _rect(d, cx - 1, cy + 1, cx + 1, cy + 5, tuple(int(c * 0.8) for c in skin))
    # mouth
    if scene.smile:
        d.chord([_S * (cx - 9), _S * (cy + 3), _S * (cx + 9) - 1, _S * (cy + 16) - 1], 0, 180, fill=MOUTH)
        _rect(d, cx - 6, cy + 10, cx + 6, cy + 12, TEETH)
    else:
        _rect(d, cx - 6, cy + 10, cx + 6, cy + 12, MOUTH)
    # glasses: round frames around the eyes and a bridge
    if scene.glasses:
        for ex in (cx - 7, cx + 7):
            d.ellipse([_S * (ex - 7), _S * (cy - 10), _S * (ex + 7) - 1, _S * (cy + 4) - 1], outline=GLASSES, width=3)
        _rect(d, cx - 2, cy - 5, cx + 2, cy - 3, GLASSES)
    # hat: crown, band and brim on top of the head
    if scene.hat:
        _rect(d, cx - 13, cy - 32, cx + 13, cy - 15, HAT)
        _rect(d, cx - 13, cy - 20, cx + 13, cy - 16, HAT_BAND)
        _rect(d, cx - 21, cy - 16, cx + 21, cy - 13, HAT)
    return np.asarray(img.resize((SIZE, SIZE), Image.BOX), dtype=np.uint8).copy()


def render_pil(scene: Scene) -> Image.Image:
    return Image.fromarray(render(scene))


def labels(scene: Scene) -> dict[str, int]:
    """The reader's targets for a scene: the 4 identity attributes and the edit state."""
    i = scene.identity
    return {
        "skin": i.skin,
        "eyes": i.eyes,
        "hair_color": i.hair_color,
        "hair_style": i.hair_style,
        "hat": int(scene.hat),
        "glasses": int(scene.glasses),
        "background": scene.bg_state,
        "smile": int(scene.smile),
    }


def importance(scene: Scene) -> np.ndarray:
    """A (64, 64) float32 weight map for reconstruction losses: 1 on the background, 3 on the head
    and hair, 8 on the eyes (the smallest identity cue)."""
    cx, cy = scene.center
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5
    w = np.ones((SIZE, SIZE), np.float32)
    head = ((xx - cx) / 23.0) ** 2 + ((yy - cy + 2) / 28.0) ** 2 <= 1.0
    w[head] = 3.0
    w[cy - 9 : cy + 3, cx - 14 : cx + 15] = 8.0
    return w
