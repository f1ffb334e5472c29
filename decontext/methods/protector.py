"""The amortized protector's network and its files: ``Protector`` (diffusers' ``UNet2DModel`` mapping an image,
optionally folded into channels, to ``eps * tanh(out)``), its named architectures (``ARCHITECTURES``), loading
by name or folder, and its output as the start of a protection (``protected_start``). The method that uses it
is ``decontext.methods.amortized``; this module knows no method, so the base ``Method`` can start any run from
a protector (``--init``) without an import cycle."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import fraction
from ..editors.base import Editor
from .protector_files import CONFIG_FILE, WEIGHTS_FILE, protector_folder, read_config

# diffusers UNet2DModel: 3 levels, one ResNet block each, ~1.06 M parameters (4.3 MB in float32)
DEFAULT_ARCHITECTURE = {
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 1,
    "block_out_channels": [32, 64, 64],
    "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "UpBlock2D"],
    "norm_num_groups": 16,
}
# The same without the mid block's self-attention (UNet2DModel's add_attention): at a 1 MP working size that
# attention would see 256 x 256 = 65,536 positions (quadratic); this one costs linear in pixels.
CONV_ARCHITECTURE = {**DEFAULT_ARCHITECTURE, "add_attention": False}
# Folded (``fold``: a key of this class, not of UNet2DModel): each 4 x 4 cell of pixels becomes 48 channels
# (pixel_unshuffle), a 4-level UNet2DModel of 64 channels and no attention runs on 1/16 of the positions, and
# pixel_shuffle puts its 48 output channels back as 4 x 4 cells: ~1.99 M parameters (8.0 MB in float32), a 1 MP
# working size in well under 2 s on a 2-core CPU (docs/AMORTIZED.md has the measured numbers)
FOLD4_ARCHITECTURE = {
    "fold": 4,
    "in_channels": 48,
    "out_channels": 48,
    "layers_per_block": 1,
    "block_out_channels": [64, 64, 64, 64],
    "down_block_types": ["DownBlock2D"] * 4,
    "up_block_types": ["UpBlock2D"] * 4,
    "norm_num_groups": 16,
    "add_attention": False,
}
# Stochastic (``noise``: a key of this class): the small network with one more input channel of Gaussian noise
# drawn from a seed that is a hash of the photo's 8-bit pixels, so one photo always gets the same perturbation
# (equal uploads, equal bytes) while someone who only sees protected photos cannot predict the noise behind
# each: a remover trained on (protected, clean) pairs then faces a perturbation that is not a function of the
# protected photo alone (issue 41, measured in docs/AMORTIZED.md)
STOCHASTIC_ARCHITECTURE = {**DEFAULT_ARCHITECTURE, "noise": 1, "in_channels": 4}
# the names of ``decontext amortize --architecture`` and ``bench.protector_step --architecture``
ARCHITECTURES = {
    "small": DEFAULT_ARCHITECTURE,
    "conv": CONV_ARCHITECTURE,
    "fold4": FOLD4_ARCHITECTURE,
    "stochastic": STOCHASTIC_ARCHITECTURE,
}


def content_noise(pixels: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, channels, H, W) standard normal noise, each image's drawn on the CPU from a seed hashed from its own
    8-bit pixels (the same photo, the same noise, on any device)."""
    import hashlib

    out = []
    for image in pixels.detach():
        quantised = (image.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().contiguous().numpy()
        seed = int.from_bytes(hashlib.sha256(quantised.tobytes()).digest()[:8], "little") & (2**63 - 1)
        generator = torch.Generator().manual_seed(seed)
        out.append(torch.randn((channels, *image.shape[-2:]), generator=generator))
    return torch.stack(out).to(pixels.device, pixels.dtype)


class Protector(torch.nn.Module):
    """P(x) -> delta: (B, 3, H, W) pixels in [0, 1] at any size -> a perturbation with |delta| <= eps/255.

    The input is reflect-padded to the network's multiple and the output cropped back, so any size and
    aspect ratio works. An architecture with ``fold`` f runs the UNet on the image folded f x f into channels
    (``in_channels`` = ``out_channels`` = 3 f^2) and unfolds its output; without it (the shipped ones), f = 1.
    With ``noise`` k, k channels of ``content_noise`` join the photo's 3 at the input (``in_channels`` (3 + k) f^2)."""

    def __init__(self, architecture: dict | None = None, eps: float = 16.0):
        super().__init__()
        from diffusers import UNet2DModel

        self.architecture = dict(architecture or DEFAULT_ARCHITECTURE)
        unet = {k: v for k, v in self.architecture.items() if k not in ("fold", "noise")}
        self.fold = int(self.architecture.get("fold", 1))
        self.noise = int(self.architecture.get("noise", 0))
        if not (
            unet.get("in_channels", 3) == (3 + self.noise) * self.fold**2
            and unet.get("out_channels", 3) == 3 * self.fold**2
        ):
            raise ValueError(
                f"a protector folded {self.fold} x {self.fold} with {self.noise} noise channels needs "
                f"{(3 + self.noise) * self.fold**2} channels in and {3 * self.fold**2} out"
            )
        self.net = UNet2DModel(sample_size=None, **unet)
        self.eps = float(eps)
        self.multiple = self.fold * 2 ** (len(self.architecture["block_out_channels"]) - 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        height, width = pixels.shape[-2:]
        pad_h, pad_w = -height % self.multiple, -width % self.multiple
        x = pixels * 2 - 1
        if self.noise:
            x = torch.cat([x, content_noise(pixels, self.noise)], 1)
        if pad_h or pad_w:
            x = F.pad(
                x, (0, pad_w, 0, pad_h), mode="reflect" if min(height, width) > max(pad_h, pad_w) else "replicate"
            )
        if self.fold > 1:
            x = F.pixel_unshuffle(x, self.fold)
        out = self.net(x, timestep=0).sample
        if self.fold > 1:
            out = F.pixel_shuffle(out, self.fold)
        out = out[..., :height, :width]
        return fraction(self.eps) * torch.tanh(out)

    def parameters_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save(self, folder: str | Path, config: dict) -> Path:
        """``protector.safetensors`` + ``protector.json`` (``config`` plus the architecture and eps)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        save_file(state, str(folder / (WEIGHTS_FILE + ".part")))
        (folder / (WEIGHTS_FILE + ".part")).replace(folder / WEIGHTS_FILE)
        full = {**config, "architecture": self.architecture, "eps": self.eps, "parameters": self.parameters_count()}
        (folder / (CONFIG_FILE + ".part")).write_text(json.dumps(full, indent=1), encoding="utf-8")
        (folder / (CONFIG_FILE + ".part")).replace(folder / CONFIG_FILE)
        return folder

    @classmethod
    def load(cls, name_or_path: str | Path, device="cpu") -> "Protector":
        from safetensors.torch import load_file

        config = read_config(name_or_path)
        protector = cls(config["architecture"], config["eps"])
        protector.net.load_state_dict(load_file(str(protector_folder(name_or_path) / WEIGHTS_FILE)))
        protector.config = config
        return protector.to(device).eval().requires_grad_(False)


@functools.lru_cache(maxsize=4)
def _loaded(folder: str, device: str) -> Protector:
    return Protector.load(folder, device)


def load_protector(name_or_path: str | Path, device="cpu") -> Protector:
    """A protector by name or folder, loaded once per process and device."""
    return _loaded(str(protector_folder(name_or_path).resolve()), str(device))


def protected_start(
    protector: Protector, editor: Editor, pixels: torch.Tensor, resolution="native", eps: float | None = None
) -> torch.Tensor:
    """The protector's result for clean ``pixels`` (B, 3, H, W) in [0, 1] at their own size: the network runs
    at the editor's working size for this image, its perturbation is resized back (bicubic) and clamped to
    ``eps`` (default the protector's; 1/255 units)."""
    limit = fraction(protector.eps if eps is None else min(eps, protector.eps))
    height, width = pixels.shape[-2:]
    size = tuple(editor.working_size(height, width, resolution))
    x = pixels.float().to(next(protector.parameters()).device)
    seen = (
        x
        if size == (height, width)
        else F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    )
    with torch.no_grad():
        delta = protector(seen)
    if size != (height, width):
        delta = F.interpolate(delta, size=(height, width), mode="bicubic", align_corners=False)
    return (x + delta.clamp(-limit, limit)).clamp(0, 1).to(pixels.device)
