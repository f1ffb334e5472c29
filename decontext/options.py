"""A command-line option as data.

A ``Flag`` is what argparse needs (name, type, help, choices) and nothing it does not: its default is
``None`` unless it says otherwise, so "the user did not set it" stays visible and the owner's default
(an editor family's, a method's, a preset's) applies. Editor families (``decontext.editors``) and
methods (``decontext.methods``) declare their options as ``Flag``s, each once; the command lines
(``decontext.cli``) turn them into parsers. The ``name:key=value,...`` specs of breakers, attackers and a
benchmark spec's methods are parsed here too (``parse_params``). No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence


@dataclass(frozen=True)
class Flag:
    flag: str  # "--t-range"
    help: str
    type: Callable | None = float
    nargs: int | str | None = None
    metavar: Any = None
    choices: Sequence[Any] | None = None
    action: str | None = None  # e.g. "store_true" (then no type)
    default: Any = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def add_to(self, parser, help_suffix: str = "", **overrides) -> None:
        """Add this flag to an argparse parser or group (``overrides`` replace fields, e.g. ``dest``)."""
        options: dict = {"help": self.help + help_suffix, "default": self.default}
        if self.action:
            options["action"] = self.action
        else:
            options.update(type=self.type, nargs=self.nargs, metavar=self.metavar, choices=self.choices)
        options.update(overrides)
        parser.add_argument(self.flag, **{k: v for k, v in options.items() if v is not None or k == "default"})


def parse_given(what: str, spec: str, kinds: dict) -> tuple[str, dict]:
    """``name`` or ``name:key=value,...`` checked against ``kinds[name].defaults``: (name, the parameters given),
    each typed as its default is (text where the default is text or None). Parameters whose default is a list or
    tuple are not written this way. ``what`` names the thing in errors ("breaker", "attacker", "method")."""
    name, _, rest = str(spec).strip().partition(":")
    if name not in kinds:
        raise ValueError(f"unknown {what} {name!r} (choose from {', '.join(kinds)})")
    defaults = kinds[name].defaults
    keys = [k for k, v in defaults.items() if not isinstance(v, (list, tuple))]
    given = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, text = item.partition("=")
        if not sep or key not in keys:
            raise ValueError(f"{what} {name}: {item!r} is not KEY=VALUE with KEY one of {', '.join(keys) or '(none)'}")
        default = defaults[key]
        try:
            given[key] = text if default is None or isinstance(default, str) else type(default)(text)
        except ValueError:
            raise ValueError(f"{what} {name}: {key} takes a {type(default).__name__}, got {text!r}") from None
    return name, given


def parse_params(what: str, spec: str, kinds: dict) -> tuple[str, dict]:
    """``parse_given`` with the defaults filled in: (name, every parameter). The breakers and the attackers
    (decontext.purify, decontext.attackers) share this one parser."""
    name, given = parse_given(what, spec, kinds)
    return name, {**kinds[name].defaults, **given}
