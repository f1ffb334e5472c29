"""Does an editor share the paper's premise? Cut its target->context attention and see what is lost.

DeContext rests on a premise about FLUX.1-Kontext: identity flows from the context image into the
edit through the target->context attention, mostly in the early, high-noise sampling steps and in
the front-to-middle blocks. This module tests that premise on any Kontext editor in the diffusers
layout (the toy editor first) by *cutting* that attention while the stock pipeline samples:

- ``Cut``: which sampling steps (0-based; ``None`` = every step), which blocks (``"double.i"`` /
  ``"single.j"``; ``None`` = every block) and how much: the unnormalised attention weights of the
  target queries on the context keys are multiplied by ``factor`` (0 blocks them; 0.5 halves them
  before the softmax renormalises), i.e. ``log(factor)`` is added to those scores. Nothing else
  changes: text and context queries, and target queries on text and target keys, are as stock.
- ``CutState``: the attention hook of every block (``decontext.editors.blocks``: the one FLUX processor
  that restates the stock q/k/v path); when no cut is active and no share is measured a layer's
  attention is the stock call, so outputs are bit-identical to the stock processor.
- ``cutting(pipe)``: installs the hook on every block of ``pipe.transformer`` and a forward
  pre-hook on the transformer that reads, from each call's own inputs, the joint-sequence layout
  (text count from ``encoder_hidden_states``; context tokens are those whose position id axis 0 is
  non-zero, as the pipeline flags them) and the sampling step (the timestep the transformer
  receives, looked up in ``pipe.scheduler.timesteps``). The stock processors come back afterwards.
- With ``CutState.measure`` the layers also record the share of target attention on context
  (``decontext.attention.context_share``: exact, from q and k after RMSNorm and RoPE; the share
  after the cut where a cut is active), per step and block, mean over images, heads and target
  queries. The layer outputs stay bit-identical to stock when no cut is active.

``run_premise`` is the toy measurement behind ``bench/premise.py``: held-out scenes, the stock
``FluxKontextPipeline`` with the editor folder's recommended settings, the toy reader's identity
and edit success per cut, with bootstrap intervals over identities.

On an InstructPix2Pix folder (``toy-ip2p``) the same bench asks where that editor reads its source:
there is no context attention, so a cut scales the source-image channels of the UNet input in the
chosen steps (block cuts are dropped; no share is measured).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from decontext.attention import AttentionHook, Layout, context_share, sdpa
from decontext.editors.blocks import block_map, resolve_blocks
from decontext.methods.decontext import PAPER_BLOCKS

BLOCK = 0.0  # factor that removes the target->context attention
HALVE = 0.5  # factor that halves it (before renormalisation)
TIMESTEP_SCALE = 1000.0  # FluxKontextPipeline passes scheduler timestep / 1000 to the transformer


# ---------------------------------------------------------------------------------------------- cuts
@dataclass(frozen=True)
class Cut:
    """A cut of the target->context attention: where (steps x blocks) and how much (``factor``)."""

    steps: tuple[int, ...] | None = None  # 0-based sampling steps; None = every step
    blocks: tuple[str, ...] | None = None  # "double.i" / "single.j"; None = every block
    factor: float = BLOCK  # multiplies the unnormalised weights of target queries on context keys

    def __post_init__(self):
        if not (self.factor >= 0 and math.isfinite(self.factor)):
            raise ValueError(f"cut factor must be a finite number >= 0, got {self.factor}")

    def applies(self, step: int | None, block: str) -> bool:
        """Whether this cut acts in ``block`` at ``step`` (a step outside the schedule is ``None``:
        only an every-step cut acts there)."""
        if self.blocks is not None and block not in self.blocks:
            return False
        return self.steps is None or (step is not None and step in self.steps)


def score_bias(factor: float) -> float:
    """What a cut adds to the attention scores: log(factor); factor 0 gives -inf."""
    return -math.inf if factor == 0 else math.log(factor)


@dataclass
class CutState(AttentionHook):
    """Shared state of the cut layers of one transformer, and their attention hook.

    ``cut`` (or None) is set by the caller; ``step``, ``sigma`` and ``layout`` are set before every
    transformer call by the pre-hook of ``cutting``. With ``measure`` the layers add the context
    share of each call to ``share_sums[(step, block)] = [sum over images, number of images]``.
    Without an active cut (and without share measurement) a layer's attention is the stock call, so
    its output is bit-identical to the stock processor's.
    """

    cut: Cut | None = None
    measure: bool = False
    step: int | None = None
    sigma: float | None = None
    layout: Layout | None = None
    share_sums: dict = field(default_factory=dict)
    sigmas: dict = field(default_factory=dict)  # step -> timestep the transformer received

    def factor_for(self, block: str) -> float | None:
        """The cut factor acting in ``block`` now, or None."""
        if self.cut is None or not self.cut.applies(self.step, block):
            return None
        return self.cut.factor

    def record_share(self, block: str, share: torch.Tensor) -> None:
        """Add a (B, H, T) per-query share: each image's mean over heads and target queries."""
        per_image = share.detach().double().mean(dim=(1, 2))
        entry = self.share_sums.setdefault((self.step, block), [0.0, 0])
        entry[0] += float(per_image.sum())
        entry[1] += int(per_image.numel())

    def clear_shares(self) -> None:
        self.share_sums = {}

    def shares(self) -> dict:
        """``{step: {block: mean share}}`` of what was recorded."""
        table: dict = {}
        for (step, block), (total, count) in sorted(
            self.share_sums.items(), key=lambda kv: (kv[0][0] is None, kv[0][0] or 0, kv[0][1])
        ):
            table.setdefault(step, {})[block] = total / count
        return table

    def step_shares(self) -> dict:
        """``{step: mean share over blocks}``."""
        return {step: float(np.mean(list(blocks.values()))) for step, blocks in self.shares().items()}

    def joint(self, name: str, query, key, value, attend) -> torch.Tensor:
        factor = self.factor_for(name)
        if factor is None and not self.measure:
            return attend(query, key, value)
        layout = self.layout
        if layout is None:
            raise RuntimeError(f"{name}: no layout; install the hooks with experiments.premise.cutting(pipe)")
        if query.shape[1] != layout.total:
            raise ValueError(f"{name}: sequence length {query.shape[1]} does not match layout {layout}")
        if self.measure and layout.context and layout.target:
            share = context_share(query, key, layout)
            self.record_share(name, share if factor is None else cut_share(share, factor))
        if factor is None or layout.context == 0 or layout.target == 0:
            return attend(query, key, value)
        return cut_attention(query, key, value, layout, factor, attend)


def cut_share(share: torch.Tensor, factor: float) -> torch.Tensor:
    """The context share after a cut, from the uncut share m of each query (exact):
    the context weights C become factor*C, so m' = factor*m / (factor*m + 1 - m)."""
    scaled = share * factor
    denominator = scaled + (1 - share)
    return torch.where(
        denominator > 0, scaled / denominator.clamp_min(torch.finfo(share.dtype).tiny), torch.zeros_like(share)
    )


def cut_attention(query, key, value, layout: Layout, factor: float, attend=None) -> torch.Tensor:
    """Attention over the joint sequence with log(factor) added to the target->context scores.

    Target queries go through one call with an additive (T, S) score mask, the text and context
    queries through one call without; the rows are put back in sequence order.

    Args:
        query, key, value: (B, S, H, D), order [text|target|context], after normalisation and RoPE.
        attend: ``attend(q, k, v, mask=...)`` on (B, S, H, D) tensors; default: torch's SDPA.
    Returns:
        (B, S, H, D) attention output.
    """
    if query.shape[1] != layout.total or key.shape[1] != layout.total:
        raise ValueError(f"sequence length {query.shape[1]} does not match layout {layout}")
    attend = attend or sdpa
    bias = torch.zeros(layout.target, layout.total, dtype=query.dtype, device=query.device)
    bias[:, layout.context_slice] = score_bias(factor)
    target_out = attend(query[:, layout.target_slice], key, value, mask=bias)
    others = torch.cat([query[:, layout.text_slice], query[:, layout.context_slice]], dim=1)
    other_out = attend(others, key, value)
    return torch.cat([other_out[:, : layout.text], target_out.to(other_out.dtype), other_out[:, layout.text :]], dim=1)


def layout_of_call(hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, img_ids: torch.Tensor) -> Layout:
    """The joint-sequence layout of one Kontext transformer call, from its inputs' shapes.

    The image tokens are [target | context]; the pipeline flags the context tokens by a non-zero
    position id on axis 0 (``FluxKontextPipeline.prepare_latents`` sets it to 1)."""
    ids = img_ids[0] if img_ids.ndim == 3 else img_ids  # diffusers still accepts batched ids
    flagged = ids[:, 0] != 0
    context = int(flagged.sum())
    target = hidden_states.shape[1] - context
    if ids.shape[0] != hidden_states.shape[1] or bool(flagged[:target].any()):
        raise ValueError("image tokens are not [target | context] with the context flagged on position axis 0")
    return Layout(text=encoder_hidden_states.shape[1], target=target, context=context)


def step_of(
    timestep: torch.Tensor, schedule: torch.Tensor | None, after: int | None = None, scale: float = TIMESTEP_SCALE
) -> int | None:
    """Index of the denoiser's ``timestep`` in the scheduler's ``schedule`` (None if not in it).

    The Kontext pipeline passes ``t.to(latents dtype) / 1000`` (``scale``; an InstructPix2Pix
    pipeline passes ``t`` itself: scale 1); the schedule is converted the same way so the match is
    exact. Should a low-precision dtype map two steps onto one value, the first of
    them after ``after`` (the previous step seen) is taken.
    """
    if schedule is None or len(schedule) == 0:
        return None
    value = timestep.reshape(-1)[0]
    converted = schedule.to(value.device, value.dtype) / scale
    hits = [int(i) for i in (converted == value).nonzero().flatten()]
    if not hits:
        return None
    later = [i for i in hits if after is None or i > after]
    return (later or hits)[0]


def _track_call(state: CutState, scheduler):
    """Forward pre-hook of the transformer: the step and layout of this call, from its inputs."""

    def hook(module, args, kwargs):
        hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        state.layout = layout_of_call(hidden_states, kwargs["encoder_hidden_states"], kwargs["img_ids"])
        timestep = kwargs.get("timestep")
        state.step = None if timestep is None else step_of(timestep, getattr(scheduler, "timesteps", None), state.step)
        if state.step is not None:
            state.sigmas.setdefault(state.step, float(timestep.reshape(-1)[0]))

    return hook


def _cut_source_channels(state: CutState, scheduler, latent_channels: int):
    """Forward pre-hook of an InstructPix2Pix UNet: the step of this call (its timestep, looked up in
    the scheduler's), and, where the cut acts, the source-image input channels multiplied by the
    cut's factor (0: the zeros the pipeline itself feeds its unconditional-image branch)."""

    def hook(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        timestep = None if timestep is None else torch.as_tensor(timestep)
        state.step = (
            None
            if timestep is None
            else step_of(timestep, getattr(scheduler, "timesteps", None), state.step, scale=1.0)
        )
        if state.step is not None:
            state.sigmas.setdefault(state.step, float(timestep.reshape(-1)[0]) / (len(scheduler.alphas_cumprod) - 1))
        factor = state.factor_for(SOURCE_INPUT)
        if factor is None:
            return None
        cut = torch.cat([sample[:, :latent_channels], sample[:, latent_channels:] * factor], dim=1)
        return ((cut, *args[1:]), kwargs) if args else (args, {**kwargs, "sample": cut})

    return hook


SOURCE_INPUT = "source"  # the one "block" of a UNet editor: its source-image input channels


@contextlib.contextmanager
def cutting(pipe, state: CutState | None = None):
    """The cut hook on every block of ``pipe.transformer`` (stock processors back afterwards).

    Yields the shared ``CutState``: set ``state.cut`` (and ``state.measure``) between pipeline
    calls. Needs the transformer to be called with keyword arguments, as the pipeline does.
    On an InstructPix2Pix pipeline (``pipe.unet``; the source is read through input channels, not
    attention) the cut scales the source channels of the UNet input in the cut's steps instead;
    blocks do not apply and no attention share is measured.
    """
    if getattr(pipe, "transformer", None) is None and getattr(pipe, "unet", None) is not None:
        state = state or CutState()
        handle = pipe.unet.register_forward_pre_hook(
            _cut_source_channels(state, pipe.scheduler, pipe.vae.config.latent_channels), with_kwargs=True
        )
        try:
            yield state
        finally:
            handle.remove()
        return
    transformer = pipe.transformer
    state = state or CutState()
    blocks = block_map(transformer)
    handle = transformer.register_forward_pre_hook(_track_call(state, pipe.scheduler), with_kwargs=True)
    try:
        with blocks.hooked({name: state for name in blocks}):
            yield state
    finally:
        handle.remove()


# ------------------------------------------------------------------------------ cut specifications
_FIRST_LAST = re.compile(r"^(first|last):(\d+)(?:/(\d+))?$")
EACH = "each"


def resolve_steps(spec: str, n_steps: int) -> tuple[int, ...] | None:
    """Step indices (0-based) of a step specification for a sampler of ``n_steps`` steps.

    ``all`` (None); ``first:3`` / ``last:2`` (counts); ``first:1/2`` / ``last:1/4`` (fractions of
    ``n_steps``, rounded half up, at least one step); ``0-2,5`` (explicit indices).
    """
    spec = spec.strip()
    if spec == "all":
        return None
    match = _FIRST_LAST.match(spec)
    if match:
        side, numerator, denominator = match.groups()
        count = (
            int(numerator)
            if denominator is None
            else max(1, int(math.floor(n_steps * int(numerator) / int(denominator) + 0.5)))
        )
        if not 1 <= count <= n_steps:
            raise ValueError(f"step specification {spec!r} asks for {count} of {n_steps} steps")
        return tuple(range(count)) if side == "first" else tuple(range(n_steps - count, n_steps))
    chosen: set[int] = set()
    for item in spec.split(","):
        start, dash, end = item.strip().partition("-")
        if not start.isdigit() or (dash and not end.isdigit()):
            raise ValueError(
                f"bad step specification {spec!r} (examples: 'all', 'first:3', 'last:1/4', '0-2,5', 'each')"
            )
        lo, hi = int(start), int(end) if dash else int(start)
        if hi < lo or hi >= n_steps:
            raise ValueError(f"step range {item!r} is outside the sampler's steps 0-{n_steps - 1}")
        chosen.update(range(lo, hi + 1))
    return tuple(sorted(chosen))


@dataclass(frozen=True)
class CutSpec:
    """A cut before the sampler and model are known: ``steps`` and ``blocks`` are specifications
    (``resolve_steps`` / ``decontext.editors.base.resolve_blocks``, or ``all``); ``steps="each"``
    stands for one cut per step. ``factor=None`` is no cut at all (the reference row)."""

    key: str
    label: str
    steps: str = "all"
    blocks: str = "all"
    factor: float | None = BLOCK

    @classmethod
    def parse(cls, text: str) -> "CutSpec":
        """``steps=first:1/4;blocks=single:0-25/38;factor=0.5`` (any part may be left out)."""
        fields = {"steps": "all", "blocks": "all", "factor": str(BLOCK)}
        for part in filter(None, (p.strip() for p in text.split(";"))):
            name, eq, value = part.partition("=")
            if not eq or name.strip() not in fields:
                raise ValueError(
                    f"bad cut specification {text!r} (example: 'steps=first:3;blocks=single:0-25/38;factor=0.5')"
                )
            fields[name.strip()] = value.strip()
        return cls(key=text, label=text, steps=fields["steps"], blocks=fields["blocks"], factor=float(fields["factor"]))

    def resolve(self, n_steps: int, model_depths: dict[str, int]) -> list["Row"]:
        if self.factor is None:
            return [Row(self.key, self.label, self.key, self.label, None)]
        blocks = None if self.blocks == "all" else tuple(resolve_blocks(self.blocks, model_depths))
        if self.steps == EACH:
            return [
                Row(f"{self.key}:{s}", f"{self.label}: step {s}", self.key, self.label, Cut((s,), blocks, self.factor))
                for s in range(n_steps)
            ]
        return [
            Row(
                self.key, self.label, self.key, self.label, Cut(resolve_steps(self.steps, n_steps), blocks, self.factor)
            )
        ]


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    group: str  # rows of one CutSpec (several for steps="each")
    group_label: str
    cut: Cut | None


NAMED_CUTS = {
    spec.key: spec
    for spec in (
        CutSpec("none", "none (stock)", factor=None),
        CutSpec("all", "all steps, all blocks"),
        CutSpec("first1", "first 1 step", steps="first:1"),
        CutSpec("first2", "first 2 steps", steps="first:2"),
        CutSpec("first3", "first 3 steps", steps="first:3"),
        CutSpec("first_quarter", "first quarter of the steps", steps="first:1/4"),
        CutSpec("first_half", "first half of the steps", steps="first:1/2"),
        CutSpec("last_half", "last half of the steps", steps="last:1/2"),
        CutSpec("last_quarter", "last quarter of the steps", steps="last:1/4"),
        CutSpec("each_step", "each single step alone", steps=EACH),
        CutSpec("paper_blocks", "all steps, the paper's blocks", blocks=PAPER_BLOCKS),
        CutSpec(
            "first_quarter_paper_blocks", "first quarter AND the paper's blocks", steps="first:1/4", blocks=PAPER_BLOCKS
        ),
        CutSpec("halved", "halved, all steps, all blocks", factor=HALVE),
    )
}
CUT_SETS = {
    "default": tuple(NAMED_CUTS),
    "goal": ("none", "all", "first_quarter", "first_half", "last_half", "last_quarter", "first_quarter_paper_blocks"),
    "smoke": ("none", "all"),
}

# Issue 11's bar for an editor that shares the premise: cutting the first quarter of the steps removes
# at least half of the identity transfer (uncut identity minus chance), cutting the last half removes
# less than a quarter, and the uncut editor stays good.
GOAL = {
    "first_quarter_removes_at_least": 0.5,
    "last_half_removes_below": 0.25,
    "clean_identity_at_least": 0.9,
    "edit_success_at_least": 0.9,
}


def parse_cuts(tokens: Sequence[str]) -> list[CutSpec]:
    """Cut specifications from names of sets (``CUT_SETS``), named cuts (``NAMED_CUTS``) and raw
    specifications (``CutSpec.parse``), in order, without duplicates."""
    specs: dict[str, CutSpec] = {}
    for token in tokens:
        for item in CUT_SETS.get(token, (token,)):
            if item in NAMED_CUTS:
                specs.setdefault(item, NAMED_CUTS[item])
            elif "=" in item:
                specs.setdefault(item, CutSpec.parse(item))
            else:
                raise ValueError(
                    f"unknown cut {item!r}: sets {sorted(CUT_SETS)}, cuts {sorted(NAMED_CUTS)}, "
                    "or e.g. 'steps=first:3;factor=0.5'"
                )
    return list(specs.values())


def describe_steps(steps: tuple[int, ...] | None, n_steps: int) -> str:
    if steps is None:
        return f"all ({n_steps})"
    return _ranges(steps)


def describe_blocks(blocks: tuple[str, ...] | None) -> str:
    if blocks is None:
        return "all"
    by_stream: dict[str, list[int]] = {}
    for name in blocks:
        stream, _, index = name.partition(".")
        by_stream.setdefault(stream, []).append(int(index))
    return ", ".join(f"{stream} {_ranges(indices)}" for stream, indices in by_stream.items())


def _ranges(indices: Iterable[int]) -> str:
    values = sorted(indices)
    parts, start = [], None
    for i, v in enumerate(values):
        start = v if start is None else start
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ",".join(parts)


# ------------------------------------------------------------------------------ the toy measurement
DEFAULT_IDENTITIES = 30
DEFAULT_SEED = 0
DEFAULT_BATCH = 100  # edits per pipeline call (decontext.toy.evaluate.run_edits uses the same)
CI_LEVEL = 0.95
N_BOOT = 2000


def _edit(pipe, images: list, prompts: list[str], settings: dict, seed: int) -> np.ndarray:
    """One stock pipeline call with the editor folder's settings -> uint8 (B, H, W, 3)
    (``decontext.toy.evaluate.run_edits`` with a single batch seeded ``seed``)."""
    from decontext.toy.evaluate import run_edits
    from decontext.toy.model import DEFAULT_GUIDANCE, DEFAULT_STEPS

    return run_edits(
        pipe,
        list(images),
        list(prompts),
        settings.get("num_inference_steps", DEFAULT_STEPS),
        settings.get("guidance_scale", DEFAULT_GUIDANCE),
        seed,
        batch=max(1, len(images)),
        settings=settings,
    )


def _interval(values, seed: int) -> dict:
    from decontext.metrics.bootstrap import bootstrap_mean_ci

    return bootstrap_mean_ci(values, level=CI_LEVEL, n_boot=N_BOOT, seed=seed).as_dict()


def _display_path(path: Path) -> str:
    """``path`` relative to the working folder (the repository, where experiments run) when it lies inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@torch.no_grad()
def run_premise(
    editor_dir=None,
    identities: int = DEFAULT_IDENTITIES,
    seed: int = DEFAULT_SEED,
    cuts: Sequence[str] = ("default",),
    share_for_every_cut: bool = False,
    batch: int = DEFAULT_BATCH,
    progress: bool = True,
) -> dict:
    """Identity and edit success of the toy editor under each cut (held-out scenes, stock pipeline).

    Every cut edits the same scenes with the same prompts and noise, so rows are paired. Means are
    over all edits; intervals are percentile bootstraps over identities (each identity's mean over
    its edits), and ``identity_vs_none`` is the paired per-identity difference to the uncut run.
    The share of target attention on context is measured on the uncut run (every run with
    ``share_for_every_cut``: after the cut where one acts).
    """
    from tqdm.auto import tqdm

    from decontext.prompts import load_prompts
    from decontext.toy.evaluate import eval_scenes, load_pipeline
    from decontext.toy.model import DEFAULT_GUIDANCE, DEFAULT_STEPS, EDITOR_DIR, PROMPTS_FILE
    from decontext.toy.reader import ToyReader, score_reads

    t0 = time.time()
    from decontext.toy.names import is_toy_model, repo_path, toy_editor_dir

    if editor_dir is None:
        editor_dir = EDITOR_DIR
    editor_dir = toy_editor_dir(editor_dir) if is_toy_model(str(editor_dir)) else Path(editor_dir)
    pipe, settings = load_pipeline(editor_dir)
    settings = {"num_inference_steps": DEFAULT_STEPS, "guidance_scale": DEFAULT_GUIDANCE, **settings}
    n_steps = int(settings["num_inference_steps"])
    reader = ToyReader.for_editor(editor_dir)  # the editor's own reader, of its world
    world = reader.world
    pool = load_prompts(repo_path(settings.get("prompts_file"), PROMPTS_FILE))
    specs = parse_cuts(cuts)
    if not any(s.factor is None for s in specs):
        specs = [NAMED_CUTS["none"], *specs]  # the reference every row is compared with
    unet = getattr(pipe, "transformer", None) is None
    if unet:  # the source enters through input channels: cuts by step only
        specs = [s for s in specs if s.blocks == "all"]
    model_depths = {} if unet else block_map(pipe.transformer).depths
    rows = [row for spec in specs for row in spec.resolve(n_steps, model_depths)]

    scenes = eval_scenes(identities, world)
    n = len(scenes)
    sources = np.stack([world.render(s) for s in scenes])
    edits, prompts, owner = [], [], []
    for edit in world.EDITS:  # as decontext.toy.evaluate: identity k uses the (k % 2)-th phrasing
        texts = [p.text for p in pool if p.category == edit]
        for k in range(n):
            edits.append(edit)
            prompts.append(texts[k % len(texts)])
            owner.append(k)
    owner, edits = np.array(owner), np.array(edits)
    images = list(sources[owner])
    source_reads = reader.read(sources[owner])
    person_reads = reader.read(sources)  # one per identity, for the chance level

    results = []
    bar = tqdm(total=len(rows) * len(images), desc="premise", unit="edit", disable=not progress, dynamic_ncols=True)
    with cutting(pipe) as state:
        for row in rows:
            t_row = time.time()
            state.cut = row.cut
            state.measure = row.cut is None or share_for_every_cut
            state.clear_shares()
            bar.set_postfix_str(row.key)
            outputs = []
            for i in range(0, len(images), batch):  # seeded per batch as decontext.toy.evaluate.run_edits
                outputs.append(_edit(pipe, images[i : i + batch], prompts[i : i + batch], settings, seed + i))
                bar.update(len(outputs[-1]))
            reads = reader.read(np.concatenate(outputs))
            scores = [
                score_reads(
                    {k: v[j] for k, v in source_reads.items()},
                    {k: v[j] for k, v in reads.items()},
                    e,
                    reader.attributes,
                )
                for j, e in enumerate(edits)
            ]
            identity = np.array([s["toy_identity"] for s in scores])
            success = np.array([s["edit_success"] for s in scores], dtype=np.float64)
            record = {
                "key": row.key,
                "label": row.label,
                "group": row.group,
                "group_label": row.group_label,
                "steps": None if row.cut is None else (None if row.cut.steps is None else list(row.cut.steps)),
                "blocks": None if row.cut is None else (None if row.cut.blocks is None else list(row.cut.blocks)),
                "factor": None if row.cut is None else row.cut.factor,
                "per_identity_identity": [float(identity[owner == k].mean()) for k in range(n)],
                "per_identity_success": [float(success[owner == k].mean()) for k in range(n)],
                "per_edit": {
                    e: {
                        "toy_identity": float(identity[edits == e].mean()),
                        "edit_success": float(success[edits == e].mean()),
                    }
                    for e in world.EDITS
                },
                "seconds": round(time.time() - t_row, 1),
            }
            record["toy_identity"] = _interval(record["per_identity_identity"], seed)
            record["edit_success"] = _interval(record["per_identity_success"], seed)
            if row.cut is None:
                # chance: the same outputs scored against every other held-out person's source
                chance = np.array(
                    [
                        np.mean(
                            [
                                score_reads(
                                    {k: v[p] for k, v in person_reads.items()},
                                    {k: v[j] for k, v in reads.items()},
                                    e,
                                    reader.attributes,
                                )["toy_identity"]
                                for p in range(n)
                                if p != owner[j]
                            ]
                        )
                        for j, e in enumerate(edits)
                    ]
                )
                record["chance_identity"] = _interval([float(chance[owner == k].mean()) for k in range(n)], seed)
            if state.measure:
                record["share_per_step"] = {str(k): v for k, v in state.step_shares().items()}
                record["share_per_step_block"] = {str(k): v for k, v in state.shares().items()}
            results.append(record)
    bar.close()
    reference = next(r for r in results if r["factor"] is None)
    for record in results:
        diff = np.array(record["per_identity_identity"]) - np.array(reference["per_identity_identity"])
        record["identity_vs_none"] = _interval(diff, seed)
        diff = np.array(record["per_identity_success"]) - np.array(reference["per_identity_success"])
        record["success_vs_none"] = _interval(diff, seed)
    result = {
        "editor": _display_path(editor_dir),
        "n_identities": n,
        "n_edits": len(edits),
        "steps": n_steps,
        "guidance": settings.get("guidance_scale"),
        "seed": seed,
        "depths": model_depths,
        "cut_acts_on": "source-image input channels (UNet)" if unet else "target->context attention",
        "sigmas": {str(k): v for k, v in sorted(state.sigmas.items())},
        "ci": {"level": CI_LEVEL, "n_boot": N_BOOT, "over": "identities"},
        "rows": results,
        "seconds": round(time.time() - t0, 1),
    }
    result["goal"] = goal_check(result)
    return result


def goal_check(result: dict) -> dict | None:
    """The share of the identity transfer (uncut minus chance) each cut removes, and ``GOAL`` judged;
    ``None`` unless the result has the uncut, first-quarter and last-half rows."""
    rows = {r["key"]: r for r in result["rows"]}
    reference = next((r for r in result["rows"] if r["factor"] is None), None)
    if reference is None or "chance_identity" not in reference:
        return None
    clean, chance = reference["toy_identity"]["mean"], reference["chance_identity"]["mean"]
    transfer = clean - chance
    removed = {
        r["key"]: (clean - r["toy_identity"]["mean"]) / transfer
        for r in result["rows"]
        if r["factor"] is not None and transfer > 0
    }
    out = {"clean_identity": clean, "chance_identity": chance, "transfer": transfer, "removed": removed, "target": GOAL}
    if "first_quarter" in rows and "last_half" in rows and transfer > 0:
        checks = {
            "first_quarter": removed["first_quarter"] >= GOAL["first_quarter_removes_at_least"],
            "last_half": removed["last_half"] < GOAL["last_half_removes_below"],
            "clean_identity": clean >= GOAL["clean_identity_at_least"],
            "edit_success": reference["edit_success"]["mean"] >= GOAL["edit_success_at_least"],
        }
        out.update(checks=checks, met=all(checks.values()))
    return out


# ------------------------------------------------------------------------------ reporting
def _fmt(interval: dict, signed: bool = False) -> str:
    if interval["mean"] is None:
        return "-"
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(interval['mean'])} [{f.format(interval['low'])}, {f.format(interval['high'])}]"


def _factor_text(factor: float | None) -> str:
    if factor is None:
        return "-"
    return "block" if factor == BLOCK else f"x{factor:g}"


def markdown(result: dict) -> str:
    """The table of a ``run_premise`` result (groups of per-step rows summarised as min-max)."""
    n_steps = result["steps"]
    lines = [
        f"Editor `{result['editor']}`, {result['n_identities']} held-out identities x 6 edits = "
        f"{result['n_edits']} edits per row, "
        f"{n_steps} steps, guidance {result['guidance']}, seed {result['seed']}. "
        "Means; 95% percentile bootstrap intervals over "
        "identities (paired with the uncut run for the differences).",
        "",
        "| cut | steps | blocks | factor | toy_identity [95% CI] | edit_success [95% CI] | identity vs none [95% CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    groups: dict[str, list[dict]] = {}
    for row in result["rows"]:
        groups.setdefault(row["group"], []).append(row)
    for members in groups.values():
        first = members[0]
        steps = (
            "-"
            if first["factor"] is None
            else describe_steps(None if first["steps"] is None else tuple(first["steps"]), n_steps)
        )
        blocks = (
            "-"
            if first["factor"] is None
            else describe_blocks(None if first["blocks"] is None else tuple(first["blocks"]))
        )
        if len(members) == 1:
            cells = [
                _fmt(first["toy_identity"]),
                _fmt(first["edit_success"]),
                _fmt(first["identity_vs_none"], signed=True),
            ]
            label = first["label"]
        else:
            label = f"{first['group_label']} (min-max over {len(members)})"
            steps = "one at a time"
            cells = [
                _span([m["toy_identity"]["mean"] for m in members]),
                _span([m["edit_success"]["mean"] for m in members]),
                _span([m["identity_vs_none"]["mean"] for m in members], signed=True),
            ]
        lines.append(f"| {label} | {steps} | {blocks} | {_factor_text(first['factor'])} | " + " | ".join(cells) + " |")
    lines += _per_step_lines(result, groups)
    lines += _goal_lines(result.get("goal"))
    return "\n".join(lines) + "\n"


def _goal_lines(goal: dict | None) -> list[str]:
    if not goal:
        return []
    lines = [
        "",
        f"Identity transfer = uncut {goal['clean_identity']:.3f} - chance {goal['chance_identity']:.3f} "
        "(the uncut outputs scored against "
        f"every other held-out person) = {goal['transfer']:.3f}. Share of it each cut removes: "
        + ", ".join(f"{k} {v:+.0%}" for k, v in goal["removed"].items())
        + ".",
    ]
    if "met" in goal:
        t = goal["target"]
        verdict = (
            "MET" if goal["met"] else "NOT MET (" + ", ".join(k for k, ok in goal["checks"].items() if not ok) + ")"
        )
        lines.append(
            f"Premise goal (first quarter removes >= {t['first_quarter_removes_at_least']:.0%}, "
            f"last half < {t['last_half_removes_below']:.0%}, "
            f"clean identity >= {t['clean_identity_at_least']}, "
            f"edit success >= {t['edit_success_at_least']}): **{verdict}**."
        )
    return lines


def _span(values: list[float], signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(min(values))} to {f.format(max(values))}"


def _per_step_lines(result: dict, groups: dict) -> list[str]:
    n_steps = result["steps"]
    reference = next(r for r in result["rows"] if r["factor"] is None)
    header = "| step | " + " | ".join(str(s) for s in range(n_steps)) + " |"
    lines = [
        "",
        "Per sampling step (sigma = the timestep the transformer receives; on a UNet, its DDPM timestep / 999):",
        "",
        header,
        "|---" * (n_steps + 1) + "|",
    ]
    sigmas = result.get("sigmas", {})
    lines.append(
        "| sigma | " + " | ".join(f"{sigmas[str(s)]:.3f}" if str(s) in sigmas else "-" for s in range(n_steps)) + " |"
    )
    share = reference.get("share_per_step", {})
    lines.append(
        "| share of target attention on context, no cut | "
        + " | ".join(f"{share[str(s)]:.3f}" if str(s) in share else "-" for s in range(n_steps))
        + " |"
    )
    for members in groups.values():
        if len(members) < 2:
            continue
        by_step = {m["steps"][0]: m for m in members if m["steps"] and len(m["steps"]) == 1}
        name = members[0]["group_label"]
        for measure in ("toy_identity", "edit_success"):
            lines.append(
                f"| {measure}, {name} | "
                + " | ".join(f"{by_step[s][measure]['mean']:.3f}" if s in by_step else "-" for s in range(n_steps))
                + " |"
            )
    return lines


def write_outputs(result: dict, out: str | Path) -> tuple[Path, Path]:
    """``out`` (a .json path, or a stem) -> the JSON and its Markdown table beside it."""
    out = Path(out)
    json_path = out if out.suffix == ".json" else out.with_suffix(".json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2))
    md_path = json_path.with_suffix(".md")
    md_path.write_text(markdown(result))
    return json_path, md_path
