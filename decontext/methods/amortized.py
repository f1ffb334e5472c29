"""The amortized protector: a small network that protects a photo in one forward pass.

``Protector`` is diffusers' ``UNet2DModel`` (fully convolutional, ~1 M parameters by default) mapping an
image to a perturbation ``eps * tanh(out)``: inside the L-inf budget by construction. It runs at the
editor's working size for the photo (what the editor sees: 64 px on the toy, ~1 MP on FLUX.1-Kontext);
its perturbation is resized to the photo's own size and clamped to eps again, and the 8-bit save keeps
the exact budget as for every other method (``images.save_protected``).

A protector is trained through the same seam as PGD, with any method's own loss (``decontext.amortize``),
and stored as ``protector.safetensors`` + ``protector.json`` (architecture, editor family and model,
method and options, eps, working size, recipe, data digest, validation). Shipped ones live in
``data/protectors/<name>/`` and load by name (``--protector toy-decontext``).

Used two ways (``decontext.protect``): ``--method amortized --protector P`` saves the protector's output
(no PGD steps; measured with the objective it was trained on), and ``--init P`` starts PGD of any method
from it instead of the clean image.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..editors.base import Editor
from . import METHODS
from .base import Method, protector_start
from .protector import (  # noqa: F401 (re-exported: the network and its loading)
    CONV_ARCHITECTURE,
    DEFAULT_ARCHITECTURE,
    Protector,
    load_protector,
    protected_start,
)
from .protector_files import (  # noqa: F401 (re-exported)
    CONFIG_FILE,
    WEIGHTS_FILE,
    protector_folder,
    read_config,
    shipped_protectors,
    weights_digest,
)


class Amortized(Method, spec="amortized"):
    """``--method amortized --protector P``: the protector's output, no PGD steps by default; measured with
    the objective the protector was trained on (e.g. DeContext's share), as a PGD run of it would be.
    Steps asked for anyway continue with that objective from the protector's output."""

    def __init__(self, protector: str | Path = METHODS["amortized"].defaults["protector"]):
        if protector is None:
            raise ValueError(
                f"--method amortized needs --protector NAME or FOLDER (shipped: {', '.join(shipped_protectors())})"
            )
        from . import build_method

        self.protector = str(protector)
        self.trained = read_config(protector)
        trained_method = dict(self.trained["method"])
        self.objective = build_method(trained_method.pop("method"), **trained_method.get("options", {}))

    @property
    def pgd_defaults(self) -> dict:
        return {"steps": 0, "eps": float(self.trained["eps"])}

    def check_applies(
        self, editor
    ) -> None:  # what the objective needs (the protector's own family: checked by the CLI and below)
        self.objective.check_applies(editor)

    def config(self) -> dict:
        return {
            "method": self.name,
            "protector": self.protector,
            "sha256": weights_digest(self.protector),
            "trained_for": {
                "editor": self.trained["editor"],
                "eps": self.trained["eps"],
                "steps": self.trained.get("steps"),
            },
            "objective": self.objective.config(),
        }

    def prepare(self, editor: Editor) -> None:
        self.objective.ready(editor)

    def hold(self, editor: Editor):
        return self.objective.hold(editor)

    def start(self, editor: Editor, pixels: torch.Tensor, size: tuple[int, int]) -> None:
        self.objective.start(editor, pixels, size)

    def initial(self, editor: Editor, pixels: torch.Tensor, config) -> torch.Tensor:
        return protector_start(self.protector, editor, pixels, config)

    def loss(self, editor, pixels, size, step, generators):
        return self.objective.loss(editor, pixels, size, step, generators)

    def measure(self, editor, pixels, size, draws: int = 4, seed: int = 1234) -> dict[str, float]:
        return self.objective.measure(editor, pixels, size, draws, seed)
