"""A command-line option as data.

A ``Flag`` is what argparse needs (name, type, help, choices) and nothing it does not: its default is
``None`` unless it says otherwise, so "the user did not set it" stays visible and the owner's default
(an editor family's, a method's, a preset's) applies. Editor families (``decontext.editors``) and
methods (``decontext.methods``) declare their options as ``Flag``s, each once; the command lines
(``decontext.cli``) turn them into parsers. No torch here.
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
