"""Methods that compose: several losses on one PGD run, and one protection against several editors.

``Composite([Term(DeContext(), 1.0), Term(EncoderAttack(), 0.5)])`` is what ``--method
decontext+encoder --weights decontext:1,encoder:0.5`` builds; a term may carry its own editor
(``Term(method, weight, editor)``), which is how one perturbation is optimised against the toy
Kontext and the toy InstructPix2Pix together (``bench/transfer.py``). Every term's loss and logged
floats appear in the PGD history under the term's label.

Combining. With ``normalize="none"`` the objective is the weighted sum ``sum_i w_i L_i`` and its
gradient the weighted sum of the terms' gradients. Sign-PGD only sees the sign of that sum, so a term
whose gradient is larger in magnitude silently decides every pixel; with ``normalize="grad"`` (the
default, our choice) each term's gradient is first scaled to unit mean absolute value, and the step
follows ``sum_i w_i g_i / mean|g_i|``, so the weights say how much each term counts. The reported loss
is ``sum_i w_i L_i`` either way. Each term's graph is freed after its own backward, so the terms never
hold their activations at the same time.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import torch

from . import NORMALIZE
from .base import Method


def unit_gradient(value: torch.Tensor, pixels: torch.Tensor, retain_graph: bool = False) -> torch.Tensor:
    """d value / d pixels scaled to unit mean absolute value (zeros where value does not depend on pixels)."""
    (grad,) = torch.autograd.grad(value, pixels, retain_graph=retain_graph, allow_unused=True)
    if grad is None:
        return torch.zeros_like(pixels, dtype=torch.float32)
    grad = grad.float()
    return grad / grad.abs().mean().clamp_min(1e-30)


def with_gradient(value: float | torch.Tensor, pixels: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """A scalar whose value is ``value`` and whose gradient through ``pixels`` (and whatever made them,
    e.g. an EOT transform) is ``direction``: how a loss hands PGD a gradient it assembled itself."""
    surrogate = (pixels.float() * direction.detach()).sum()
    return surrogate - surrogate.detach() + (value.detach() if torch.is_tensor(value) else value)


@dataclass
class Term:
    method: Method
    weight: float = 1.0
    editor: object | None = None  # None: the editor of the run

    @property
    def label(self) -> str:
        return self.method.name if self.editor is None else f"{self.method.name}@{self.editor.family}"


class Composite(Method):
    """A weighted combination of methods' losses (see the module docstring)."""

    def __init__(self, terms: Sequence[Term], normalize: str = "grad"):
        self.terms = list(terms)
        if not self.terms:
            raise ValueError("a composition needs at least one term")
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
        labels = [t.label for t in self.terms]
        if len(set(labels)) != len(labels):
            raise ValueError(f"a method appears twice in one composition: {labels}")
        for term in self.terms:
            if not term.method.optimises:
                raise ValueError(f"{term.method.name!r} is not an optimisation and cannot be composed")
            if not float(term.weight) > 0:
                raise ValueError(f"weights must be positive, got {term.label}: {term.weight}")
            if term.editor is not None:
                term.method.check_applies(term.editor)
        self.normalize = normalize
        self.name = "+".join(labels)
        self.requires = frozenset().union(*(t.method.requires for t in self.terms if t.editor is None))
        # The first term's preferences win where terms disagree.
        self.pgd_defaults = {}
        for term in reversed(self.terms):
            self.pgd_defaults.update(getattr(term.method, "pgd_defaults", {}))

    # Applicability is per instance here (the terms decide), so these shadow the base classmethods.
    def missing_capabilities(self, editor) -> list[str]:
        return sorted({m for t in self.terms if t.editor is None for m in t.method.missing_capabilities(editor)})

    def applies_to(self, editor) -> bool:
        return not self.missing_capabilities(editor)

    def check_applies(self, editor) -> None:
        for term in self.terms:
            if term.editor is None:
                term.method.check_applies(editor)

    def config(self) -> dict:
        return {
            "method": self.name,
            "normalize": self.normalize,
            "terms": [
                {
                    "weight": t.weight,
                    **({"editor": t.editor.family, "model": t.editor.name} if t.editor is not None else {}),
                    **t.method.config(),
                }
                for t in self.terms
            ],
        }

    def _editor(self, term: Term, editor):
        return editor if term.editor is None else term.editor

    @contextlib.contextmanager
    def session(self, editor=None):
        """Every term's session on its own editor (each term's method is prepared there once)."""
        with contextlib.ExitStack() as stack:
            for term in self.terms:
                stack.enter_context(term.method.session(self._editor(term, editor)))
            yield self

    def start(self, editor, pixels: torch.Tensor, size: tuple[int, int]) -> None:
        for term in self.terms:
            term.method.start(self._editor(term, editor), pixels, size)

    def loss(self, editor, pixels: torch.Tensor, size: tuple[int, int], step: int, generators):
        logs: dict[str, float] = {}
        total = 0.0
        if self.normalize == "none" or not pixels.requires_grad:  # no gradient wanted: the plain weighted sum
            value = None
            for term in self.terms:
                term_value, term_log = term.method.loss(self._editor(term, editor), pixels, size, step, generators)
                value = term.weight * term_value if value is None else value + term.weight * term_value
                logs.update(self._log(term, term_value, term_log))
            return value, logs
        direction = torch.zeros_like(pixels, dtype=torch.float32)
        for term in self.terms:
            term_value, term_log = term.method.loss(self._editor(term, editor), pixels, size, step, generators)
            direction += term.weight * unit_gradient(term_value, pixels)
            total += term.weight * float(term_value.detach())
            logs.update(self._log(term, term_value, term_log))
        return with_gradient(total, pixels, direction).reshape(1), logs

    @staticmethod
    def _log(term: Term, value: torch.Tensor, log: dict) -> dict:
        return {f"{term.label}:loss": float(value.detach()), **{f"{term.label}:{k}": v for k, v in log.items()}}

    @torch.no_grad()
    def measure(self, editor, pixels, size, draws: int = 4, seed: int = 1234) -> dict[str, float]:
        out = {}
        for term in self.terms:
            out.update(
                {
                    f"{term.label}:{k}": v
                    for k, v in term.method.measure(self._editor(term, editor), pixels, size, draws, seed).items()
                }
            )
        return out
