"""Protection methods: one module per method, registered here by one line each.

Every method's ``options`` become flags of the attack CLIs (``add_method_arguments``); a flag two
methods share (``--prompts``, ``--t-range``) is one flag, and each method applies its own default
when the user leaves it unset.
"""

from __future__ import annotations

import argparse
import importlib

from .base import Method, Option

# name -> "module:class". Adding a method = its module + one line here.
METHODS = {
    "decontext": "decontext.methods.decontext:DeContext",
    "noise": "decontext.methods.noise:RandomNoise",
    "encoder": "decontext.methods.encoder:EncoderAttack",
    "flow_loss": "decontext.methods.flow_loss:FlowLoss",
}
METHOD_HELP = "decontext (default); noise: random +-eps control; encoder: PhotoGuard encoder attack; flow_loss: diff-PGD on the flow-matching loss"


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} (choose from {', '.join(METHODS)})")
    module, _, cls = METHODS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def build_method(name: str, **options) -> Method:
    """A method by registry name with constructor arguments (those it does not take are an error)."""
    return method_class(name)(**options)


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """``--method`` plus every registered method's options (defaults None: the method's own apply)."""
    parser.add_argument("--method", default="decontext", choices=list(METHODS), help=METHOD_HELP)
    group = parser.add_argument_group("method options (each applies to the methods that take it)")
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
    return method_class(args.method).from_args(args)


__all__ = ["METHODS", "Method", "Option", "add_method_arguments", "build_method", "method_class", "method_from_args"]
