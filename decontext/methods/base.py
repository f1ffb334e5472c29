"""What a protection method is: a small object, configured in its constructor, that maps
(editor, pixels, step, generator) to a scalar the PGD engine maximises. It sees the editor only
through the seam of ``decontext.editors.base.Editor``, so one method runs on every editor.

Adding a method = one new file in this package with a ``Method`` subclass, plus one line in
``decontext.methods.METHODS``. Its ``options`` become flags of every attack CLI.
"""

from __future__ import annotations

import contextlib
import weakref
from pathlib import Path
from typing import Callable, ClassVar, ContextManager, Sequence

import torch
from torch.utils.checkpoint import checkpoint as recompute

from ..editors.base import Condition, Editor
from ..options import Flag
from ..prompts import load_prompts
from . import METHODS, OPTIONS


class Method:
    """Base of the protection methods: defaults for everything a method may leave out.

    A registered method names its registry entry (``class DeContext(ProbedMethod, spec="decontext")``):
    its name, the options it takes (``options``, flags of ``cli.flags``), its ``requires``, its
    ``pgd_defaults`` and whether it ``optimises`` come from there (``decontext.methods.METHODS``)."""

    name: ClassVar[str] = ""
    batched: ClassVar[bool] = False  # several images per step, one generator each (else a batch of one)
    optimises: ClassVar[bool] = (
        True  # False: no loss to climb (the noise control: its PGD start is the whole perturbation)
    )
    options: ClassVar[tuple[Flag, ...]] = ()
    requires: ClassVar[frozenset[str]] = frozenset()  # editor capabilities (editors.CAPABILITIES) it needs
    pgd_defaults: ClassVar[
        dict
    ] = {}  # PGD settings the method's paper prescribes (config.PGDConfig fields), under explicit choices

    def __init_subclass__(cls, spec: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if spec is not None:
            entry = METHODS[spec]
            cls.name, cls.requires, cls.optimises, cls.batched = spec, entry.requires, entry.optimises, entry.batched
            cls.options = tuple(OPTIONS[dest] for dest in entry.defaults)
            if "pgd_defaults" not in cls.__dict__:
                cls.pgd_defaults = dict(entry.pgd_defaults)

    @classmethod
    def missing_capabilities(cls, editor) -> list[str]:
        """What this method needs that ``editor`` (an editor or its class) does not offer."""
        return sorted(set(cls.requires) - set(getattr(editor, "capabilities", ())))

    @classmethod
    def applies_to(cls, editor) -> bool:
        return not cls.missing_capabilities(editor)

    @classmethod
    def check_applies(cls, editor) -> None:
        """Raise a clear ValueError when ``editor`` (an editor or its class) lacks what this method needs."""
        from ..editors import CAPABILITIES

        missing = cls.missing_capabilities(editor)
        if missing:
            family = getattr(editor, "family", type(editor).__name__)
            needs = "; ".join(f"{m}: {CAPABILITIES.get(m, m)}" for m in missing)
            raise ValueError(f"method {cls.name!r} does not apply to the {family} editor: it needs {needs}")

    def prepare(self, editor: Editor) -> None:
        """One-time work before any image on ``editor`` (e.g. embed the prompt pool, then free text
        encoders). Called once per editor, by ``session`` (through ``ready``); never call it yourself."""

    def ready(self, editor: Editor) -> None:
        """``prepare(editor)`` the first time this method meets ``editor``; nothing after that."""
        prepared = self.__dict__.setdefault("_prepared_editors", weakref.WeakSet())
        if editor is not None and editor not in prepared:
            self.prepare(editor)
            prepared.add(editor)

    def hold(self, editor: Editor) -> ContextManager:
        """What the method holds on the editor while one image is optimised (e.g. attention probes);
        released, and the editor as before, when the ``with`` ends."""
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def session(self, editor: Editor):
        """``with method.session(editor):`` around everything done for one image (``start``, ``loss``,
        ``measure``): the method is prepared for ``editor`` (once), then holds what it needs on it."""
        self.ready(editor)
        with self.hold(editor) as held:
            yield held

    def start(self, editor: Editor, pixels: torch.Tensor, size: tuple[int, int]) -> None:
        """Called inside ``session`` once per image (or batch), before any ``loss``, with its CLEAN pixels
        (methods that compare against the original keep what they need here)."""

    def initial(self, editor: Editor, pixels: torch.Tensor, config) -> torch.Tensor | None:
        """Where PGD starts for these clean pixels under ``config`` (a ``ProtectConfig``): with ``config.init``
        (``--init``), that protector's output for them; None: PGD's own start (the clean image, or a random
        point of the ball). The amortized method starts from its own protector's output."""
        return None if config.init is None else protector_start(config.init, editor, pixels, config)

    def loss(
        self,
        editor: Editor,
        pixels: torch.Tensor,
        size: tuple[int, int],
        step: int,
        generators: Sequence[torch.Generator],
    ) -> tuple[torch.Tensor, dict]:
        """(B,) losses to maximise for ``pixels`` (B, 3, H, W) in [0, 1] at working size ``size``, and floats
        to log. ``generators``: one per image, each drawing that image's randomness as its run alone would;
        a single generator for B > 1 images is one draw shared by the batch (what ``measure`` uses)."""
        raise NotImplementedError

    def measure(
        self, editor: Editor, pixels: torch.Tensor, size: tuple[int, int], draws: int = 4, seed: int = 1234
    ) -> dict[str, float]:
        """What the method optimises, averaged over fixed draws (comparable before and after protection);
        stored in the manifest. Called inside ``session``."""
        return {}

    def config(self) -> dict:
        """Constructor arguments, for manifests."""
        return {"method": self.name}


class ProbedMethod(Method):
    """A method that reads attention through one of the editor's probes for the length of a session.

    Subclasses set ``blocks_spec``, ``prompts`` and ``release_text_encoders`` and say which probe they
    open (``open_probe``); ``self._probe`` is the open probe inside ``session`` (it holds no measurements:
    each ``editor.probed_velocity`` call returns its own)."""

    blocks_spec: str | Sequence[str]
    prompts: list[str]
    release_text_encoders: bool = True
    _blocks: list[str] | None = None
    _probe = None

    def init_probing(self, blocks: str | Sequence[str], prompts, release_text_encoders: bool) -> None:
        """Keep what every probing method takes: the block spec, the prompt pool, text-encoder release."""
        self.blocks_spec = blocks
        self.prompts = prompt_list(prompts)
        self.release_text_encoders = release_text_encoders
        self._blocks, self._probe = None, None

    def probing_config(self) -> dict:
        """The manifest fields every probing method records."""
        return {
            "method": self.name,
            "blocks": self.blocks_spec if isinstance(self.blocks_spec, str) else list(self.blocks_spec),
            "resolved_blocks": self._blocks,
            "num_prompts": len(self.prompts),
        }

    def open_probe(self, editor: Editor) -> ContextManager:
        raise NotImplementedError

    def prepare(self, editor: Editor) -> None:
        self._blocks = editor.resolve_blocks(self.blocks_spec)
        editor.prepare(self.prompts, release=self.release_text_encoders)

    @contextlib.contextmanager
    def hold(self, editor: Editor):
        with self.open_probe(editor) as probe:
            self._probe = probe
            try:
                yield probe
            finally:
                self._probe = None


def sample(
    editor: Editor,
    condition: Condition,
    noise: torch.Tensor,
    steps: int,
    checkpoint: bool = False,
    levels: Sequence[float] | None = None,
    step: Callable | None = None,
) -> torch.Tensor:
    """The editor's deterministic sampler from ``noise`` at sigma 1 to clean latents in ``steps`` evenly spaced
    ``editor.denoise`` steps: the differentiable edit of PhotoGuard's diffusion attack and of ``edit_away``; with
    ``checkpoint`` each step is recomputed in backward. ``levels``: the ``steps + 1`` noise levels to step through
    instead (from 1 down to 0, e.g. an editor's ``edit_levels``, the schedule of its real pipeline); ``step``: the
    step to take instead of ``editor.denoise``, with its arguments (e.g. ``editor.edit_denoise``)."""
    step = editor.denoise if step is None else step
    if levels is None:
        levels = torch.linspace(1.0, 0.0, steps + 1).tolist()
    elif len(levels) != steps + 1:
        raise ValueError(f"{steps} sampler steps need {steps + 1} noise levels, got {len(levels)}")
    x = noise
    for sigma, sigma_next in zip(levels[:-1], levels[1:], strict=True):
        if checkpoint and torch.is_grad_enabled():
            x = recompute(step, x, sigma, sigma_next, condition, use_reentrant=False)
        else:
            x = step(x, sigma, sigma_next, condition)
    return x


def prompt_list(prompts: Sequence[str] | str | Path | None) -> list[str]:
    """A list of prompts, or a pool file's prompts (default: the project's pool)."""
    if prompts is None or isinstance(prompts, (str, Path)):
        return [p.text for p in load_prompts(prompts)]
    prompts = [str(p) for p in prompts]
    if not prompts:
        raise ValueError("the prompt list is empty")
    return prompts


def check_t_range(t_range) -> tuple[float, float]:
    lo, hi = float(t_range[0]), float(t_range[1])
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"t_range must satisfy 0 <= lo <= hi <= 1, got {tuple(t_range)}")
    return lo, hi


def image_means(values: torch.Tensor) -> torch.Tensor:
    """(B,) the mean of each image's row of ``values`` (B, ...), each reduced as that image alone would be
    (so a batch of one reproduces a lone image's float mean to the last bit)."""
    return torch.stack([row.mean() for row in values])


def clean_rows(pixels: torch.Tensor, clean: torch.Tensor) -> list[int]:
    """Which clean image each row of ``pixels`` is: row for row when the batch is the clean batch's shape, else
    the clean image nearest each row (a protected photo is within the budget of its own clean one)."""
    if pixels.shape == clean.shape:
        return list(range(len(pixels)))
    gaps = (pixels.detach()[:, None].float() - clean[None].float()).abs().flatten(2).mean(-1)
    return gaps.argmin(dim=1).tolist()


def only(generators: Sequence[torch.Generator], method: str) -> torch.Generator:
    """The one generator of a method that protects one image at a time (``batched`` False)."""
    if len(generators) != 1:
        raise ValueError(f"method {method!r} protects one image at a time, got {len(generators)} generators")
    return generators[0]


def protector_start(protector: str, editor: Editor, pixels: torch.Tensor, config) -> torch.Tensor:
    """The output of ``protector`` (a name or folder) for clean ``pixels``, within ``config``'s budget: the
    one way a run starts from a protector (``--init``, and the amortized method's own)."""
    from .protector import load_protector, protected_start

    return protected_start(load_protector(protector, editor.device), editor, pixels, config.resolution, config.pgd.eps)


def draw_per_image(
    generators: Sequence[torch.Generator], num_prompts: int, t_range: tuple[float, float], count: int = 1
) -> tuple[list[int], torch.Tensor]:
    """Prompt indices and noise levels: one of each per generator (per image), in the order
    ``draw_prompts_and_sigmas`` draws them for a lone image, so image i's draws equal its run alone; a
    single generator draws ``count`` (several prompts for one image, or one draw shared by a batch)."""
    if len(generators) == 1:
        return draw_prompts_and_sigmas(generators[0], num_prompts, t_range, count)
    if count != 1:
        raise ValueError("several prompts per step work on one image at a time, not with a batch of images")
    drawn = [draw_prompts_and_sigmas(g, num_prompts, t_range) for g in generators]
    return [index[0] for index, _ in drawn], torch.cat([sigma for _, sigma in drawn])


def draw_prompts_and_sigmas(
    generator: torch.Generator, num_prompts: int, t_range: tuple[float, float], count: int = 1
) -> tuple[list[int], torch.Tensor]:
    """``count`` prompt indices and noise levels drawn uniformly from [lo, hi), in this order from
    ``generator`` (the order is part of the reproducibility contract of a seeded run)."""
    index = torch.randint(num_prompts, (count,), generator=generator).tolist()
    lo, hi = t_range
    return index, lo + (hi - lo) * torch.rand(count, generator=generator)
