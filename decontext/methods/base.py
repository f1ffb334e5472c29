"""What a protection method is: a small object, configured in its constructor, that maps
(editor, pixels, step, generator) to a scalar the PGD engine maximises.

Adding a method = one new file in this package with a class following ``Method``.
"""

from __future__ import annotations

from typing import Protocol

import torch


class Method(Protocol):
    name: str

    def prepare(self, editor) -> None:
        """One-time work before any image (e.g. pre-compute prompt embeddings, then free text encoders)."""

    def loss(self, editor, pixels: torch.Tensor, size: tuple[int, int], step: int, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """Scalar to maximise for ``pixels`` (1, 3, H, W) in [0, 1] at working size ``size``, and floats to log."""

    def config(self) -> dict:
        """Constructor arguments, for manifests."""
