"""Attackers: everything an adversary may do to a protected photo before editing it, each a named,
parameterised object deterministic from its seed, used alike by the benchmark (``decontext.benchmark``),
the run-folder stage and EOT (through the breakers' differentiable twins).

Why a module beside ``purify.py`` and not a ``purify/`` package: the breakers are plain, stateless
``PIL -> PIL`` functions with differentiable twins and a stable import path that EOT, the run-folder
stage and their tests use; the attackers added here are of another kind (they own models: a denoiser
trained once and shipped, a remover trained per protection under test), so they live in their own module
that wraps every breaker unchanged instead of moving ``purify.py``'s code and its imports.

    from decontext.attackers import parse_attacker
    regen = parse_attacker("regen:t=0.3")
    out = regen.apply(images, seed=0, state=regen.fit(context))     # images: uint8 (N, H, W, 3)

Specs, like the breakers': ``name`` or ``name:key=value,key=value``.

Each attacker, with its parameters and their defaults (docs/BENCHMARK.md has the same list for users):

- ``none``: the photo as posted (no attack).
- ``jpeg``, ``webp``, ``resize``, ``blur``, ``noise``, ``noise_upscale``, ``vae`` (as ``decontext.purify``): the
  breakers, unchanged.
- ``regen`` (t 0.3, steps 4, denoiser auto): DiffPure-style regeneration: noise to level t (x_t = (1 - t) x + t e)
  and denoise in ``steps`` steps with a small denoiser the attacker owns, trained on the toy world's TRAINING
  renders only (``train_denoiser``; auto = the shipped one of the editor's world).
- ``editor_clean`` (instruction): EditorClean-style: the editor itself asked to return the photo unchanged.
- ``remover`` (pairs 48, steps 200, width 16, lr 0.002, draw 0): a small image-to-image network trained on
  (protected, clean) pairs the attacker makes by running the protection under test on the toy world's TRAINING
  identities (never the held-out ones), then applied to the photo. ``draw`` picks another remover of the same
  recipe (its training seed is the run's seed plus ``draw``: the same training identities in other scenes,
  other initial weights and batches), so a reader can ask whether a result is the protection's or one
  remover's luck.
- ``worst``: the worst case over a cell's other attackers (computed from their results, not applied).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .options import parse_params
from .purify import KINDS as BREAKERS
from .purify import Breaker, parse_breaker

DENOISERS = {"v1": "attackers/toy_denoiser_v1", "v3": "attackers/toy_denoiser_v3"}  # shipped, under data/
EDITOR_CLEAN_INSTRUCTION = "Return the photo exactly as it is, unchanged."
_FITTED: dict = {}  # models of attackers called one image at a time (``Attacker.__call__``), by spec


@dataclass(frozen=True)
class _Kind:
    defaults: dict
    needs: str | None = None  # "editor": the editor under attack; "protection": the protection under test
    what: str = ""


KINDS: dict[str, _Kind] = {
    "none": _Kind({}, what="the photo as posted"),
    **{
        name: _Kind(dict(kind.defaults), "editor" if kind.needs_editor else None, "breaker")
        for name, kind in BREAKERS.items()
    },
    "regen": _Kind({"t": 0.3, "steps": 4, "denoiser": "auto"}, "world", "noise to t, denoise (attacker's own model)"),
    "editor_clean": _Kind({"instruction": EDITOR_CLEAN_INSTRUCTION}, "editor", "the editor asked for the photo back"),
    "remover": _Kind(
        {"pairs": 48, "steps": 200, "width": 16, "lr": 0.002, "draw": 0},
        "protection",
        "a net trained to undo the protection",
    ),
    "worst": _Kind({}, what="the worst case over the cell's other attackers"),
}


@dataclass
class AttackContext:
    """What an attacker may use: the editor under attack, the toy world (``decontext.toy.worlds``), and
    ``protect(images uint8 (N, H, W, 3), seed) -> uint8``: the protection under test, which the remover
    runs on its own photos."""

    editor: object = None
    world: object = None
    protect: Callable[[np.ndarray, int], np.ndarray] | None = None
    edit_settings: dict = field(default_factory=dict)  # steps, guidance, resolution of editor.edit


@dataclass(frozen=True)
class Attacker:
    """One named attacker with its parameters: ``fit(context)`` once (a model, or None), then
    ``apply(images, seed, state)`` on uint8 (N, H, W, 3) -> the same shape; image i uses seed + i."""

    kind: str
    params: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """A folder-safe name: ``regen_t0.3_steps4_denoiserauto``."""
        import hashlib

        def short(key, value):  # an instruction is free text: its digest names it
            return hashlib.sha256(str(value).encode()).hexdigest()[:8] if key == "instruction" else value

        # the remover's first draw keeps the name it had before draws existed (caches and folders stay valid)
        shown = {k: v for k, v in self.params.items() if not (k == "draw" and v == 0)}
        extra = "_".join(f"{k}{short(k, v)}" for k, v in shown.items())
        return f"{self.kind}_{extra}" if extra else self.kind

    @property
    def spec(self) -> str:
        changed = {k: v for k, v in self.params.items() if KINDS[self.kind].defaults.get(k) != v}
        return self.kind + (":" + ",".join(f"{k}={v}" for k, v in changed.items()) if changed else "")

    @property
    def needs(self) -> str | None:
        return KINDS[self.kind].needs

    @property
    def derived(self) -> bool:
        return self.kind == "worst"

    def fit(self, context: AttackContext | None = None, seed: int = 0):
        """The attacker's model for this context (None for those without one)."""
        context = context or AttackContext()
        if self.kind == "regen":
            return load_denoiser(self.params["denoiser"], context.world)
        if self.kind == "remover":
            if context.protect is None or context.world is None:
                raise ValueError("the remover needs the protection under test and the toy world of its photos")
            recipe = {k: v for k, v in self.params.items() if k != "draw"}
            return train_remover(context.world, context.protect, seed=seed + self.params["draw"], **recipe)
        return None

    def apply(self, images: np.ndarray, seed: int = 0, state=None, context: AttackContext | None = None) -> np.ndarray:
        images = np.asarray(images, dtype=np.uint8)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"attackers take uint8 images (N, H, W, 3), got shape {images.shape}")
        if self.kind == "none":
            return images.copy()
        if self.kind == "worst":
            raise ValueError("'worst' is the worst case over the other attackers: it is computed, not applied")
        context = context or AttackContext()
        if self.kind in BREAKERS:
            from PIL import Image

            breaker = Breaker(self.kind, dict(self.params))
            if breaker.kind == "vae" and context.editor is None:
                raise ValueError("the 'vae' attacker needs the editor (its own autoencoder)")
            return np.stack(
                [
                    np.asarray(breaker(Image.fromarray(im), seed=seed + i, editor=context.editor))
                    for i, im in enumerate(images)
                ]
            )
        if self.kind == "regen":
            return regenerate(images, state, self.params["t"], self.params["steps"], seed)
        if self.kind == "remover":
            return run_net(state, images)
        if self.kind == "editor_clean":
            return editor_clean(images, context, self.params["instruction"], seed)
        raise AssertionError(self.kind)  # pragma: no cover - KINDS and this dispatch are one list

    def __call__(self, image, seed: int = 0, editor=None):
        """One PIL image -> the attacked PIL image: the breakers' call, so that an attacker without a
        protection to learn (``regen`` with ``denoiser=v1`` or a file, ``editor_clean``, the breakers) can
        go wherever a breaker goes (``purify.purify_run``, the run-folder stage)."""
        from PIL import Image

        if self.needs == "protection":
            raise ValueError(f"attacker {self.kind!r} needs the protection under test (use fit and apply)")
        key = (self.kind, tuple(sorted(self.params.items())))
        if key not in _FITTED:
            _FITTED[key] = self.fit(AttackContext(editor=editor), seed=seed)
        array = np.asarray(image.convert("RGB"))[None]
        return Image.fromarray(self.apply(array, seed, _FITTED[key], AttackContext(editor=editor))[0])

    def differentiable(self, state=None, editor=None):
        """``t(x, generator) -> x'`` on (B, 3, H, W) in [0, 1], differentiable in x, for EOT: a breaker's
        twin (``purify``), or the regeneration / remover net itself (``state`` from ``fit``)."""
        import torch

        if self.kind in BREAKERS:
            return Breaker(self.kind, dict(self.params)).differentiable(editor)
        if self.kind == "none":
            return lambda x, generator: x
        if self.kind == "remover":
            return lambda x, generator: ((state.net(x * 2 - 1) + 1) / 2).clamp(0, 1)
        if self.kind == "regen":
            t, steps = float(self.params["t"]), int(self.params["steps"])

            def regen(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
                noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
                return (_walk_back(state.net, (1 - t) * (x * 2 - 1) + t * noise, t, steps) + 1) / 2

            return regen
        raise ValueError(f"attacker {self.kind!r} has no differentiable version")

    def bound(self, state=None) -> "BoundAttacker":
        """This attacker with its model, shaped like a breaker for ``purify.EOT``:
        ``EOT([parse_attacker("regen:t=0.2").bound(state)], editor)`` optimises through regeneration."""
        return BoundAttacker(self, state)


@dataclass(frozen=True)
class BoundAttacker:
    """An attacker and its fitted model: ``label`` and ``differentiable(editor)`` as a Breaker has them."""

    attacker: Attacker
    state: object = None

    @property
    def label(self) -> str:
        return self.attacker.label

    def differentiable(self, editor=None):
        return self.attacker.differentiable(self.state, editor)


def parse_attacker(spec: str) -> Attacker:
    """``none``, ``jpeg:quality=50``, ``regen:t=0.3,steps=4``, ``remover:pairs=32``, ``worst`` (see the table)."""
    name, params = parse_params("attacker", spec, KINDS)
    attacker = Attacker(name, params)
    if name in BREAKERS:
        parse_breaker(spec)  # the breaker's own checks (filter names ...)
    if name == "regen" and not 0 < params["t"] < 1:
        raise ValueError(f"attacker regen: t must be in (0, 1), got {params['t']}")
    if name == "regen" and params["steps"] < 1:
        raise ValueError(f"attacker regen: steps must be >= 1, got {params['steps']}")
    if name == "remover" and (params["pairs"] < 2 or params["steps"] < 1 or params["draw"] < 0):
        raise ValueError("attacker remover: pairs must be >= 2, steps >= 1 and draw >= 0")
    return attacker


# ---------------------------------------------------------------------------------------------- the small nets
def small_unet(channels_in: int = 3, width: int = 16):
    """A two-level U-Net small enough to train in minutes on a laptop CPU: the image is folded 2x2 into
    channels (pixel unshuffle), processed at 1/2 and 1/4 of its size (widths w and 2w; ~30k parameters
    at w=16) and unfolded; it predicts a residual added to its first three input channels (the
    denoiser's fourth is t). Sizes: multiples of 4."""
    import torch
    from torch import nn

    def block(a, b):
        return nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.SiLU(), nn.Conv2d(b, b, 3, padding=1), nn.SiLU())

    class SmallUNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc1, self.enc2 = block(4 * channels_in, width), block(width, 2 * width)
            self.dec1 = block(3 * width, width)
            self.out = nn.Conv2d(width, 12, 3, padding=1)
            nn.init.zeros_(self.out.weight)  # starts as the identity: x itself
            nn.init.zeros_(self.out.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """x: (B, channels_in, H, W), images in [-1, 1] -> (B, 3, H, W)."""
            e1 = self.enc1(nn.functional.pixel_unshuffle(x, 2))
            e2 = self.enc2(nn.functional.avg_pool2d(e1, 2))
            d1 = self.dec1(torch.cat([nn.functional.interpolate(e2, scale_factor=2.0, mode="nearest"), e1], 1))
            return x[:, :3] + nn.functional.pixel_shuffle(self.out(d1), 2)

    return SmallUNet()


def _to_tensor(images: np.ndarray):
    import torch

    return torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _to_uint8(x) -> np.ndarray:
    return np.round(((x.clamp(-1, 1) + 1.0) * 127.5).permute(0, 2, 3, 1).detach().cpu().numpy()).astype(np.uint8)


@dataclass
class NetState:
    """A trained small net and where it came from (its ``info`` is recorded beside its weights)."""

    net: object
    info: dict


def run_net(state: NetState, images: np.ndarray, extra=None) -> np.ndarray:
    import torch

    x = _to_tensor(images)
    with torch.no_grad():
        return _to_uint8(state.net(torch.cat([x, extra], 1) if extra is not None else x))


def save_net(state: NetState, path: str | Path) -> None:
    """Weights as safetensors (float16) and the info beside them as ``<path>.json``, both atomically."""
    from safetensors.torch import save

    from .images import atomic_write, write_json_atomic

    path = Path(path)
    tensors = {k: v.detach().to("cpu").half().contiguous() for k, v in state.net.state_dict().items()}
    blob = save(tensors)
    atomic_write(path, lambda handle: handle.write(blob))
    write_json_atomic(state.info, path.with_suffix(".json"))


def load_net(path: str | Path) -> NetState:
    from safetensors.torch import load_file

    path = Path(path)
    info = json.loads(path.with_suffix(".json").read_text())
    net = small_unet(info["channels_in"], info["width"])
    net.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    net.eval()
    return NetState(net, info)


def _train(net, inputs, targets, steps: int, lr: float, seed: int, batch: int = 16, noise_levels=None) -> list[float]:
    """Adam on the mean squared error to ``targets`` (the clean photos: never a judge's score), batches
    drawn with ``seed``, random flips; ``noise_levels`` (the denoiser): each draw is noised to a random t."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same weights on any machine, and faster for a net this small
    try:
        return _train_steps(net, inputs, targets, steps, lr, seed, batch, noise_levels)
    finally:
        torch.set_num_threads(threads)


def _train_steps(net, inputs, targets, steps, lr, seed, batch, noise_levels) -> list[float]:
    import torch
    from tqdm.auto import trange

    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    # a bar on a terminal only (disable=None): the strong remover's 2000 steps take minutes
    for _ in trange(steps, desc="attacker net", unit="step", leave=False, disable=None):
        index = torch.randint(len(inputs), (min(batch, len(inputs)),), generator=generator)
        x, y = inputs[index], targets[index]
        if bool(torch.rand((), generator=generator) < 0.5):
            x, y = x.flip(-1), y.flip(-1)
        if noise_levels is not None:
            t = torch.rand((len(x), 1, 1, 1), generator=generator) * noise_levels
            x = (1 - t) * x + t * torch.randn(x.shape, generator=generator)
            x = torch.cat([x, t.expand(-1, 1, *x.shape[-2:])], 1)
        loss = torch.nn.functional.mse_loss(net(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    return losses


# ---------------------------------------------------------------------------------------------- regeneration
def training_scenes(world, count: int, seed: int, extras: float = 0.0) -> list:
    """``count`` scenes of the world's TRAINING identities (spread over all of them, nuisance from
    ``seed + i``). Refuses any held-out identity: those are the benchmark's judge set."""
    identities = list(world.train_identities())
    if count < 1:
        raise ValueError("count must be >= 1")
    chosen = [identities[(i * 7919) % len(identities)] for i in range(count)]  # 7919: prime, spreads the picks
    leaked = [i for i in chosen if world.is_held_out(i)]
    if leaked:
        raise ValueError(f"held-out identities must never train an attacker: {leaked[:3]}")
    return [world.sample_scene(identity, seed=seed + i, extras=extras) for i, identity in enumerate(chosen)]


def train_denoiser(
    world, images: int = 2000, steps: int = 3000, width: int = 16, lr: float = 0.003, seed: int = 0, max_t: float = 0.5
):
    """The regeneration attacker's denoiser for one toy world: predicts the clean render from x_t =
    (1 - t) x + t e, t uniform in [0, max_t) (regeneration noises to moderate levels only), trained on
    renders of TRAINING identities only (edit states drawn too, so hats and glasses are in its data).
    Deterministic from ``seed``."""
    import torch

    torch.manual_seed(seed)
    renders = np.stack([world.render(s) for s in training_scenes(world, images, seed=seed + 1_000_000, extras=0.5)])
    clean = _to_tensor(renders)
    net = small_unet(4, width)
    losses = _train(net, clean, clean, steps, lr, seed, batch=32, noise_levels=max_t)
    info = {
        "kind": "toy denoiser",
        "world": world.NAME,
        "channels_in": 4,
        "width": width,
        "images": images,
        "steps": steps,
        "lr": lr,
        "seed": seed,
        "max_t": max_t,
        "identities": "training (world.train_identities; held-out refused by training_scenes)",
        "final_loss": float(np.mean(losses[-50:])),
    }
    net.eval()
    return NetState(net, info)


def load_denoiser(name: str, world=None) -> NetState:
    """``auto`` = the shipped denoiser of ``world``; a shipped world name (``v1``); or a .safetensors path."""
    from .assets import data_path

    if name == "auto":
        if world is None:
            raise ValueError("regen:denoiser=auto needs the toy world of the photos (on real editors: editor_clean)")
        name = world.NAME
    if name in DENOISERS:
        path = data_path("data/" + DENOISERS[name] + ".safetensors")
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: no denoiser of world {name} yet (python -m bench.train_denoiser --world {name})"
            )
        return load_net(path)
    return load_net(name)


def regenerate(images: np.ndarray, state: NetState, t: float, steps: int, seed: int) -> np.ndarray:
    """Noise each image to level ``t`` (its own noise from seed + i) and walk back to 0 in ``steps``
    deterministic steps, each predicting the clean image and re-noising it to the next level with the
    noise that prediction implies (DDIM-like, on the straight path x_t = (1 - t) x + t e)."""
    import torch

    x = _to_tensor(images)
    noise = torch.stack(
        [torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(seed + i)) for i in range(len(x))]
    )
    with torch.no_grad():
        return _to_uint8(_walk_back(state.net, (1 - t) * x + t * noise, t, steps))


def _walk_back(net, xt, t: float, steps: int):
    """From x_t (in [-1, 1] units) at level t to level 0 in ``steps`` steps of the denoiser ``net``."""
    import torch

    levels = np.linspace(t, 0.0, steps + 1)
    for now, after in zip(levels[:-1], levels[1:], strict=True):
        level = torch.full((len(xt), 1, *xt.shape[-2:]), float(now), dtype=xt.dtype, device=xt.device)
        clean = net(torch.cat([xt, level], 1)).clamp(-1, 1)
        implied = (xt - (1 - now) * clean) / now
        xt = (1 - after) * clean + after * implied
    return xt


# ---------------------------------------------------------------------------------------------- learned remover
def train_remover(
    world, protect, pairs: int = 48, steps: int = 200, width: int = 16, lr: float = 0.002, seed: int = 0
) -> NetState:
    """The learned remover: renders ``pairs`` scenes of the world's TRAINING identities (held-out ones
    refused), protects them with ``protect`` (the protection under test, as the attacker can run it),
    and trains a small image-to-image net from protected to clean (mean squared error to the clean
    render; no judge involved). Deterministic from ``seed``."""
    import torch

    torch.manual_seed(seed)
    scenes = training_scenes(world, pairs, seed=seed + 2_000_000)
    clean = np.stack([world.render(s) for s in scenes])
    protected = np.asarray(protect(clean, seed + 3_000_000), dtype=np.uint8)
    if protected.shape != clean.shape:
        raise ValueError(f"the protection returned {protected.shape} for {clean.shape}")
    net = small_unet(3, width)
    losses = _train(net, _to_tensor(protected), _to_tensor(clean), steps, lr, seed)
    net.eval()
    info = {
        "kind": "learned remover",
        "world": world.NAME,
        "channels_in": 3,
        "width": width,
        "pairs": pairs,
        "steps": steps,
        "lr": lr,
        "seed": seed,
        "identities": sorted({int(s.identity.index) for s in scenes}),
        "final_loss": float(np.mean(losses[-20:])),
    }
    return NetState(net, info)


# ---------------------------------------------------------------------------------------------- EditorClean
def editor_clean(images: np.ndarray, context: AttackContext, instruction: str, seed: int) -> np.ndarray:
    """The editor under attack asked to return each photo unchanged (EditorClean style), at its own
    sampling settings (``context.edit_settings``)."""
    from PIL import Image

    if context.editor is None:
        raise ValueError("the 'editor_clean' attacker needs the editor")
    settings = {"steps": 28, "guidance": 2.5, "resolution": "native", **context.edit_settings}
    out = []
    for i, im in enumerate(images):
        (edited,) = context.editor.edit([Image.fromarray(im)], [instruction], [seed + i], **settings)
        edited = edited.convert("RGB")
        if edited.size != (im.shape[1], im.shape[0]):
            edited = edited.resize((im.shape[1], im.shape[0]), Image.BICUBIC)
        out.append(np.asarray(edited))
    return np.stack(out)
