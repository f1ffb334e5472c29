"""Protection methods: one module per method, registered here by one line each.

Every method's ``options`` become flags of the attack CLIs (``add_method_arguments``); a flag two
methods share (``--prompts``, ``--t-range``) is one flag, and each method applies its own default
when the user leaves it unset. ``--method a+b`` composes methods on one PGD run (``compose.Composite``);
a shared flag then applies to every composed method that takes it.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Sequence

from .base import Method, Option
from .compose import NORMALIZE, parse_weights

# name -> "module:class". Adding a method = its module + one line here.
METHODS = {
    "decontext": "decontext.methods.decontext:DeContext",
    "noise": "decontext.methods.noise:RandomNoise",
    "encoder": "decontext.methods.encoder:EncoderAttack",
    "flow_loss": "decontext.methods.flow_loss:FlowLoss",
    "danp": "decontext.methods.danp:DANP",
    "tdae": "decontext.methods.tdae:TDAE",
    "diffusion": "decontext.methods.diffusion:DiffusionAttack",
}
METHOD_HELP = ("decontext (default); noise: random +-eps control; encoder: PhotoGuard encoder attack; flow_loss: diff-PGD on the "
               "flow-matching loss; danp: dual attention-guided noise; tdae: flat-gradient + dynamic-prompt defense; diffusion: PhotoGuard's diffusion attack; a+b: several on one run (e.g. decontext+encoder, weighted with --weights)")


def method_names(spec: str) -> list[str]:
    """The registered methods of a ``--method`` value such as ``decontext`` or ``decontext+encoder``."""
    names = [n.strip() for n in str(spec).split("+")]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not all(names):
        raise ValueError(f"unknown method {unknown[0] if unknown else spec!r} in {spec!r} (choose from {', '.join(METHODS)}, or join them with '+')")
    if len(set(names)) != len(names):
        raise ValueError(f"{spec!r} names a method twice")
    return names


def method_spec(value: str) -> str:
    """argparse type of ``--method``."""
    try:
        method_names(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} (choose from {', '.join(METHODS)})")
    module, _, cls = METHODS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def build_method(name: str, **options) -> Method:
    """A method by registry name with constructor arguments (those it does not take are an error)."""
    return method_class(name)(**options)


def compose(methods: Sequence[Method], weights: Sequence[float] | None = None, normalize: str = "grad") -> Method:
    """One method, or a ``Composite`` of several on the run's editor."""
    from .compose import Composite, Term

    methods = list(methods)
    if len(methods) == 1 and weights is None:
        return methods[0]
    weights = [1.0] * len(methods) if weights is None else list(weights)
    return Composite([Term(m, w) for m, w in zip(methods, weights, strict=True)], normalize=normalize)


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """``--method`` plus every registered method's options (defaults None: the method's own apply)."""
    parser.add_argument("--method", default="decontext", type=method_spec, help=METHOD_HELP)
    group = parser.add_argument_group("method options (each applies to the methods that take it)")
    group.add_argument("--weights", default=None, help="weights of a composed --method, e.g. decontext:1,encoder:0.5 (default 1 each)")
    group.add_argument("--compose-norm", default=None, choices=NORMALIZE,
                       help="combining a composed --method: grad (default: each term's gradient scaled to unit mean |g| before weighting) or none (plain weighted sum)")
    seen: dict[str, Option] = {}
    for name in METHODS:
        for option in method_class(name).options:
            if option.flag in seen:
                if (seen[option.flag].type, seen[option.flag].nargs) != (option.type, option.nargs):
                    raise TypeError(f"methods disagree on the type of {option.flag}")
                continue
            seen[option.flag] = option
            group.add_argument(option.flag, type=option.type, nargs=option.nargs, metavar=option.metavar, choices=option.choices, default=None, help=option.help)


def method_from_args(args: argparse.Namespace) -> Method:
    """The method (or composition) the parsed flags describe."""
    names = method_names(args.method)
    if len(names) == 1:
        if getattr(args, "weights", None):
            raise ValueError("--weights is for a composed --method such as decontext+encoder")
        return method_class(names[0]).from_args(args)
    weights = parse_weights(getattr(args, "weights", None), names)
    norm = getattr(args, "compose_norm", None) or "grad"
    return compose([method_class(n).from_args(args) for n in names], [weights[n] for n in names], norm)


__all__ = ["METHODS", "Method", "Option", "add_method_arguments", "build_method", "compose", "method_class", "method_from_args", "method_names"]
