"""Protection methods: one module per method, declared here as data (no torch: the command lines build
their flags and refuse a method an editor cannot serve before anything heavy is imported).

A ``MethodSpec`` says where the method's class lives, what it needs of an editor (``requires``:
``editors.CAPABILITIES``), the options it takes with its OWN defaults (each stated here once; the class
reads them from its spec), and the PGD settings its paper prescribes. Every option is a flag declared
once in ``OPTIONS``; a flag two methods share (``--prompts``, ``--t-range``) is one flag,
and each method applies its own default when the user leaves it unset. ``--method a+b`` composes
methods on one PGD run (``composite.Composite``).

Adding a method = its module + one entry here.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass, field
from typing import Sequence

from ..options import Flag, parse_given

PAPER_BLOCKS = "single:0-25/38"  # single-stream blocks 0..25 of FLUX's 38, scaled to other depths
PAPER_T_RANGE = (0.98, 1.0)  # the official t in 980..999 of 1000
PHOTOGUARD_PGD = {"schedule": "linear", "start": "uniform"}  # PhotoGuard's pgd(): uniform start, linear decay
NORMALIZE = ("grad", "none")  # how a composition combines its terms' gradients (composite.Composite)


# Every option a protection method takes, declared once; each method's default is in its entry below.
OPTIONS = {
    f.dest: f
    for f in (
        Flag(
            "--blocks",
            "attention layers to probe, e.g. single:0-25/38 (single blocks 0-25 of FLUX's 38, "
            "scaled to the model's depth), double, single.3, all",
            type=str,
        ),
        Flag(
            "--t-range",
            "noise level (sigma, 1 = pure noise) drawn per step from [LO, HI)",
            nargs=2,
            metavar=("LO", "HI"),
        ),
        Flag(
            "--t-one-every",
            "every K-th PGD step uses sigma = 1 exactly (the official Step1X attack: 10; 0 = never)",
            type=int,
        ),
        Flag("--prompts", "edit-prompt pool file (decontext.prompts format); one prompt is drawn per step", type=str),
        Flag("--prompts-per-step", "prompts drawn per PGD step, batched in one forward", type=int),
        Flag(
            "--distribution",
            "the noise control: sign (every pixel +-eps) or uniform in the eps-ball",
            type=str,
            choices=("sign", "uniform"),
        ),
        Flag("--target-value", "grey level in [0, 1] of the encoder / diffusion attack's target image"),
        Flag(
            "--decoys",
            "encoder / diffusion attack: a folder of photos of OTHER people (or toy-train, a toy world's training "
            "identities); each photo (its latents, or its edit) is pulled toward the one whose latents are farthest "
            "from its own, instead of grey",
            type=str,
        ),
        Flag("--sample-steps", "denoising steps the diffusion attack backpropagates through", type=int),
        Flag(
            "--edit-space",
            "edit_away: where the protected photo's edit is pushed from the clean one's: latent (the sampler's clean "
            "latents) or pixel (decoded)",
            type=str,
            choices=("latent", "pixel"),
        ),
        Flag(
            "--sample-schedule",
            "edit_away: the sampler it differentiates: even (evenly spaced noise levels, every editor) or editor "
            "(the sampler of the editor's real pipeline: at zero perturbation, the CLI's edit)",
            type=str,
            choices=("even", "editor"),
        ),
        Flag("--threshold-std", "DANP: k of the dynamic threshold mean + k*std of each attention map"),
        Flag("--attention-weight", "DANP: weight of the attention term"),
        Flag("--noise-weight", "DANP: weight of the noise term"),
        Flag(
            "--balance",
            "DANP: grad (each term's gradient scaled to unit mean |g|) or none (plain weighted sum)",
            type=str,
            choices=("grad", "none"),
        ),
        Flag("--flat-weight", "TDAE: FlatGrad lambda/h (0 = off)"),
        Flag("--flat-radius", "TDAE: FlatGrad finite-difference step h in 1/255 units"),
        Flag("--dpd-every", "TDAE: image steps per dynamic-prompt cycle", type=int),
        Flag("--dpd-steps", "TDAE: embedding steps per cycle (0 = off)", type=int),
        Flag("--dpd-lr", "TDAE: Adam learning rate of the embedding steps"),
        Flag(
            "--protector",
            "amortized: a trained protector, by shipped name (toy-decontext, toy-encoder, toy-decoy, toy-decoy-edit, "
            "toy-robust, toy-v3-robust) or folder (decontext amortize trains one)",
            type=str,
        ),
    )
}


@dataclass(frozen=True)
class MethodSpec:
    target: str  # "module:Class"
    summary: str  # one line for --help
    defaults: dict = field(default_factory=dict)  # option (a key of OPTIONS) -> this method's default
    requires: frozenset = frozenset()  # editor capabilities it needs
    pgd_defaults: dict = field(
        default_factory=dict
    )  # config.PGDConfig fields its paper prescribes (under explicit choices)
    optimises: bool = True  # False: no loss to climb (the noise control)
    # several images per PGD step, one generator each (``--batch-size``); else a batch of one (methods.base.only)
    batched: bool = False


METHODS = {
    "decontext": MethodSpec(
        "decontext.methods.decontext:DeContext",
        "minimise the target->context attention share (DeContext, the core)",
        {"blocks": PAPER_BLOCKS, "t_range": PAPER_T_RANGE, "t_one_every": 0, "prompts": None, "prompts_per_step": 1},
        frozenset({"context_attention"}),
        batched=True,
    ),
    "noise": MethodSpec(
        "decontext.methods.noise:RandomNoise",
        "random +-eps noise of the same budget: the control",
        {"distribution": "sign"},
        optimises=False,
        batched=True,
    ),
    "encoder": MethodSpec(
        "decontext.methods.encoder:EncoderAttack",
        "PhotoGuard's encoder attack on the editor's VAE",
        {"target_value": 0.5, "decoys": None},
        frozenset({"vae"}),
        PHOTOGUARD_PGD,
        batched=True,
    ),
    "flow_loss": MethodSpec(
        "decontext.methods.flow_loss:FlowLoss",
        "diff-PGD: maximise the editor's flow-matching (or noise-prediction) loss",
        {"t_range": (0.0, 1.0), "prompts": None},
        frozenset({"diffusion_loss"}),
        batched=True,
    ),
    "danp": MethodSpec(
        "decontext.methods.danp:DANP",
        "DANP: dual attention-guided noise (text-attention contrast + noise discrepancy)",
        {
            "blocks": "all",
            "t_range": (0.0, 1.0),
            "threshold_std": 1.0,
            "attention_weight": 1.0,
            "noise_weight": 1.0,
            "balance": "grad",
            "prompts": None,
        },
        frozenset({"text_cross_attention", "diffusion_loss"}),
    ),
    "tdae": MethodSpec(
        "decontext.methods.tdae:TDAE",
        "TDAE: edit discrepancy with FlatGrad and dynamic prompt embeddings",
        {
            "t_range": (0.0, 1.0),
            "flat_weight": 0.5,
            "flat_radius": 2.0,
            "dpd_every": 10,
            "dpd_steps": 3,
            "dpd_lr": 0.01,
            "prompts": None,
        },
        frozenset({"diffusion_loss", "text_embeddings"}),
        {"start": "uniform"},
    ),  # D and its gradient vanish at the original image
    "diffusion": MethodSpec(
        "decontext.methods.diffusion:DiffusionAttack",
        "PhotoGuard's diffusion attack: pull the editor's own few-step edit to grey",
        {"sample_steps": 4, "target_value": 0.5, "prompts": None, "decoys": None},
        frozenset({"sampling"}),
        PHOTOGUARD_PGD,
    ),
}
METHODS["edit_away"] = MethodSpec(
    "decontext.methods.edit_away:EditAway",
    "through the edit: push the editor's own few-step edit of the photo away from its edit of the clean photo",
    {"sample_steps": 4, "edit_space": "latent", "prompts": None, "sample_schedule": "even"},
    frozenset({"sampling"}),
    {"start": "uniform"},  # the squared distance and its gradient vanish at the clean photo
    batched=True,
)
METHODS["amortized"] = MethodSpec(
    "decontext.methods.amortized:Amortized",
    "a trained protector network: one forward pass per photo, no PGD (--protector; `decontext amortize` trains one)",
    {"protector": None},
    optimises=False,
    batched=True,
)
DEFAULT_METHOD = "decontext"


def method_names(spec: str) -> list[str]:
    """The registered methods of a ``--method`` value such as ``decontext`` or ``decontext+encoder``."""
    names = [n.strip() for n in str(spec).split("+")]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not all(names):
        raise ValueError(
            f"unknown method {unknown[0] if unknown else spec!r} in {spec!r} "
            f"(choose from {', '.join(METHODS)}, or join them with '+')"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"{spec!r} names a method twice")
    return names


def parse_method(spec: str) -> tuple[str, dict]:
    """One method of a benchmark spec with its options: ``encoder`` or ``encoder:decoys=toy-train`` -> (name,
    the options given), parsed as an attacker's are (``options.parse_given``)."""
    return parse_given("method", spec, METHODS)


def method_spec(value: str) -> str:
    """argparse type of ``--method``."""
    try:
        method_names(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def missing_capabilities(spec: str, capabilities) -> list[str]:
    """What the methods of ``spec`` (``a`` or ``a+b``) need that an editor with ``capabilities`` lacks."""
    return sorted({c for name in method_names(spec) for c in METHODS[name].requires} - set(capabilities))


def method_class(name: str):
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} (choose from {', '.join(METHODS)})")
    module, _, cls = METHODS[name].target.partition(":")
    return getattr(importlib.import_module(module), cls)


def build_method(name: str, **options):
    """A method by registry name with constructor arguments (those it does not take are an error)."""
    return method_class(name)(**options)


def compose(methods: Sequence, weights: Sequence[float] | None = None, normalize: str = "grad"):
    """One method, or a ``Composite`` of several on the run's editor."""
    from .composite import Composite, Term

    methods = list(methods)
    if len(methods) == 1 and weights is None:
        return methods[0]
    weights = [1.0] * len(methods) if weights is None else list(weights)
    return Composite([Term(m, w) for m, w in zip(methods, weights, strict=True)], normalize=normalize)


def parse_weights(spec: str | None, names: Sequence[str]) -> dict[str, float]:
    """``"decontext:1,encoder:0.5"`` -> {name: weight} for the composed ``names`` (unnamed ones: 1)."""
    weights = {name: 1.0 for name in names}
    if not spec:
        return weights
    for item in spec.split(","):
        name, sep, value = item.strip().partition(":")
        if not sep:
            raise ValueError(f"bad weight {item!r}: write name:weight, e.g. decontext:1,encoder:0.5")
        if name not in weights:
            raise ValueError(f"weight for {name!r}, which is not in the composition ({'+'.join(names)})")
        try:
            weights[name] = float(value)
        except ValueError:
            raise ValueError(f"bad weight {item!r}: {value!r} is not a number") from None
        if not weights[name] > 0:
            raise ValueError(f"weights must be positive, got {item!r}")
    return weights


def build_from_options(spec: str, options: dict, weights: str | None = None, normalize: str | None = None):
    """The method (or composition) of a ``--method`` value, each built with the options it takes out of
    ``options`` (dest -> value; None = unset, the method's own default applies)."""
    names = method_names(spec)

    def one(name):
        return build_method(name, **{k: v for k, v in options.items() if k in METHODS[name].defaults and v is not None})

    if len(names) == 1:
        if weights:
            raise ValueError("--weights is for a composed --method such as decontext+encoder")
        return one(names[0])
    parsed = parse_weights(weights, names)
    return compose([one(n) for n in names], [parsed[n] for n in names], normalize or "grad")


__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "OPTIONS",
    "MethodSpec",
    "build_from_options",
    "build_method",
    "compose",
    "method_class",
    "method_names",
    "method_spec",
    "missing_capabilities",
    "parse_weights",
    "NORMALIZE",
]
