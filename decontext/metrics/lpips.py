"""LPIPS (the ``lpips`` package): perceptual distance, imperceptibility and clean-vs-protected edits.

Directions (better protection):
- ``lpips_input`` (source vs protected input): *lower* = the perturbation is less visible (cost side).
- ``lpips_vs_clean`` (clean edit vs protected edit, same stem/prompt/seed): *higher* = better protection.

Weights: the small linear heads ship inside the lpips wheel; the backbone (AlexNet by default) is a
torchvision ImageNet checkpoint that torchvision downloads on first use. It is looked up in
``--weights-dir`` (or ``<weights-dir>/checkpoints``) and in torch.hub's cache
(``$TORCH_HOME/hub/checkpoints``), never downloaded here; without it the metric is unavailable (a
random backbone would give meaningless numbers).
"""

from __future__ import annotations

import re
import warnings
from typing import Callable

import torch

from decontext.metrics.base import EvalOptions, MetricBackend, MetricSpec, register
from decontext.metrics.imageops import clean_edit_pair, input_pair, to_tensor
from decontext.metrics.run import EditRecord, RunData
from decontext.metrics.weights import find_file, missing_reason, torch_hub_checkpoints

# torchvision's checkpoint file for each LPIPS trunk
BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _load_backbone(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy torchvision ``features.<i>.*`` tensors into lpips' ``slice<k>.<i>.*`` modules."""
    targets: dict[str, str] = {}
    for key in model.net.state_dict():
        m = re.match(r"^slice\d+\.(\d+)\.(.+)$", key)
        if m:
            targets[f"features.{m.group(1)}.{m.group(2)}"] = key
    missing = sorted(k for k in targets if k not in state)
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} backbone tensors (e.g. {missing[0]})")
    new = {targets[k]: state[k] for k in targets}
    model.net.load_state_dict(new, strict=True)


@register("lpips", order=20)
class LPIPSBackend(MetricBackend):
    metrics = (
        MetricSpec(
            "lpips_input",
            "lower",
            "input",
            "LPIPS source vs protected input; lower = less visible perturbation",
            "protected",
        ),
        MetricSpec(
            "lpips_vs_clean",
            "higher",
            "edit",
            "LPIPS clean edit vs protected edit (same stem, prompt, seed); higher = better protection",
            "protected",
        ),
    )

    def __init__(self, options: EvalOptions | None = None, distance: Distance | None = None) -> None:
        """``distance`` (tests only): a stand-in taking two (N,3,H,W) tensors in [-1, 1]."""
        super().__init__(options)
        self.net = str(self.options.extra.get("lpips_net", "alex"))
        self._distance = distance

    def load(self) -> None:
        if self._distance is not None:
            self._ok()
            return
        if self.net not in BACKBONE_FILES:
            self._unavailable(f"unknown LPIPS trunk '{self.net}' (use one of {', '.join(BACKBONE_FILES)})")
            return
        try:
            import lpips as lpips_pkg
        except ImportError as exc:
            self._unavailable(f"the lpips package is not installed ({exc}); pip install lpips==0.1.4")
            return
        path, tried = find_file(
            BACKBONE_FILES[self.net], self.options.weights_dir, ("checkpoints", "lpips"), (torch_hub_checkpoints(),)
        )
        if path is None:
            self._unavailable(
                missing_reason(
                    f"LPIPS {self.net} backbone weights ({BACKBONE_FILES[self.net]})",
                    tried,
                    "Put torchvision's ImageNet checkpoint there (see docs/EVALUATION.md).",
                )
            )
            return
        try:
            with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=`
                warnings.simplefilter("ignore", UserWarning)
                model = lpips_pkg.LPIPS(net=self.net, pretrained=True, pnet_rand=True, verbose=False)
            _load_backbone(model, torch.load(path, map_location="cpu", weights_only=True))
            model = model.eval().to(self.options.device)
        except Exception as exc:
            self._unavailable(f"could not load LPIPS backbone from {path}: {type(exc).__name__}: {exc}")
            return
        self._distance = model
        self._ok()

    def distance(self, a, b) -> float:
        x = to_tensor(a).to(self.options.device) * 2 - 1
        y = to_tensor(b).to(self.options.device) * 2 - 1
        with torch.no_grad():
            return float(self._distance(x, y).reshape(-1)[0])

    def score_input(self, condition: str, stem: str, run: RunData) -> dict[str, float]:
        pair = input_pair(condition, stem, run)
        return {} if pair is None else {"lpips_input": self.distance(*pair)}

    def score_edit(self, edit: EditRecord, run: RunData) -> dict[str, float]:
        pair = clean_edit_pair(edit, run)
        return {} if pair is None else {"lpips_vs_clean": self.distance(*pair)}
