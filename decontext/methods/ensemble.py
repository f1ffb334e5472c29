"""One protection against several editors at once: the sum of a method's losses on each.

``EditorEnsemble([(editor_a, method_a), (editor_b, method_b)])`` answers the ``Method`` interface:
``prepare`` and ``session`` run every member on its own editor, ``loss`` sums the members' losses
(and prefixes their logged floats with the editor family). The ``editor`` argument the PGD driver
passes is ignored, since every member brings its own; the members' working sizes must agree (the
caller passes one). Used by ``bench/transfer.py`` to protect against the toy Kontext and the toy
InstructPix2Pix together.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch

from .base import Method


class EditorEnsemble(Method):
    name = "ensemble"

    def __init__(self, members: Sequence[tuple[object, Method]], weights: Sequence[float] | None = None):
        self.members = list(members)
        if not self.members:
            raise ValueError("an ensemble needs at least one (editor, method) pair")
        self.weights = [1.0] * len(self.members) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.members):
            raise ValueError(f"{len(self.weights)} weights for {len(self.members)} members")
        for editor, method in self.members:
            method.check_applies(editor)
        self.name = "+".join(f"{m.name}@{e.family}" for e, m in self.members)

    def config(self) -> dict:
        return {"method": "ensemble", "members": [{"editor": e.family, "model": e.name, "weight": w, **m.config()} for (e, m), w in zip(self.members, self.weights)]}

    def prepare(self, editor=None) -> None:
        for member_editor, method in self.members:
            method.prepare(member_editor)

    @contextlib.contextmanager
    def session(self, editor=None):
        with contextlib.ExitStack() as stack:
            for member_editor, method in self.members:
                stack.enter_context(method.session(member_editor))
            yield self

    def loss(self, editor, pixels: torch.Tensor, size: tuple[int, int], step: int, generator: torch.Generator):
        total, logs = None, {}
        for (member_editor, method), weight in zip(self.members, self.weights):
            value, log = method.loss(member_editor, pixels, size, step, generator)
            total = weight * value if total is None else total + weight * value
            logs.update({f"{member_editor.family}:{k}": v for k, v in log.items()})
        return total, logs

    @torch.no_grad()
    def measure(self, editor, pixels, size, draws: int = 4, seed: int = 1234) -> dict[str, float]:
        out = {}
        for member_editor, method in self.members:
            out.update({f"{member_editor.family}:{k}": v for k, v in method.measure(member_editor, pixels, size, draws, seed).items()})
        return out
