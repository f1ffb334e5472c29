"""The toy attribute reader: a small CNN that reads the 4 identity attributes and the edit state of a
toy-world image, and the toy metrics built on it.

- ``toy_identity``: share of the source's identity attributes (v1: skin, eyes, hair colour, hair style; v3: face,
  hair, eyes, nose) that the reader finds again in the edited image (1.0 = same person, ~0.25 = a random person).
- ``edit_success``: 1 if the requested edit is visible in the edited image (hat / glasses / smile
  read as present, or the background read as the requested colour), else 0.

Usage::

    from decontext.toy.reader import ToyReader, score_edit
    reader = ToyReader.load()
    score_edit(source_png, edited_png, "Put a hat on this person.", reader)  # {"toy_identity": .., "edit_success": ..}
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from decontext.toy import world
from decontext.toy.worlds import DEFAULT_WORLD, get_world, reader_heads

HEADS = reader_heads(world)  # world v1's; a reader of another world has that world's (config.json "world")
WEIGHTS_FILE = "reader.safetensors"


class ReaderNet(nn.Module):
    def __init__(self, width: int = 32, heads: dict[str, int] | None = None):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, w, 3, stride=2, padding=1),
            nn.ReLU(),  # 32
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.ReLU(),  # 16
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1),
            nn.ReLU(),  # 8
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1),
            nn.ReLU(),  # 4
            nn.Flatten(),
            nn.Linear(4 * w * 16, 256),
            nn.ReLU(),
        )
        self.heads = nn.ModuleDict({k: nn.Linear(256, n) for k, n in (heads or HEADS).items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, 3, 64, 64) in [-1, 1] -> logits per head."""
        h = self.features(x)
        return {k: head(h) for k, head in self.heads.items()}


def _as_batch(images) -> torch.Tensor:
    """PIL image / path / uint8 HWC array / list of those / float tensor in [-1,1] -> (B,3,64,64) in [-1,1]."""
    from PIL import Image

    if isinstance(images, torch.Tensor):
        return images if images.dim() == 4 else images[None]
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    if not isinstance(images, (list, tuple)):
        images = [images]
    arrays = []
    for im in images:
        if isinstance(im, (str, Path)):
            im = Image.open(im)
        if isinstance(im, Image.Image):
            im = im.convert("RGB")
            if im.size != (world.SIZE, world.SIZE):
                im = im.resize((world.SIZE, world.SIZE), Image.BICUBIC)
            im = np.asarray(im)
        arrays.append(np.asarray(im, dtype=np.uint8))
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


class ToyReader:
    def __init__(self, net: ReaderNet, world_name: str = DEFAULT_WORLD):
        self.net = net.eval()
        self.world_name = world_name
        self.world = get_world(world_name)
        if set(self.net.heads) != set(reader_heads(self.world)):
            raise ValueError(
                f"the reader's heads {sorted(self.net.heads)} "
                f"are not world {world_name}'s {sorted(reader_heads(self.world))}"
            )

    @property
    def attributes(self) -> tuple[str, ...]:
        """The identity attributes this reader reads (its world's)."""
        return tuple(self.world.ATTRIBUTES)

    @classmethod
    def load(cls, path: str | Path | None = None) -> "ToyReader":
        from safetensors.torch import load_file

        from decontext.toy.model import READER_DIR

        path = Path(path) if path is not None else READER_DIR
        config = path / "config.json"
        if not config.is_file():
            raise FileNotFoundError(f"{path}: not a toy reader folder (no config.json)")
        cfg = json.loads(config.read_text())
        name = cfg.get("world", DEFAULT_WORLD)
        net = ReaderNet(width=cfg.get("width", 32), heads=reader_heads(get_world(name)))
        net.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
        return cls(net, name)

    @classmethod
    def for_editor(
        cls, model: str | Path = "toy", family: str = "flux_kontext", path: str | Path | None = None
    ) -> "ToyReader":
        """The reader that measures toy editor ``model`` (a name such as ``toy-v3`` or a folder): the one
        its decontext_toy.json names (or the reader folder ``path``), checked to read that editor's world."""
        from decontext.toy.names import toy_reader_dir, toy_world_name

        reader = cls.load(path if path is not None else toy_reader_dir(model, family))
        wanted = toy_world_name(model, family)
        if reader.world_name != wanted:
            raise ValueError(
                f"toy editor {model}: its reader reads world {reader.world_name}, the editor was trained on {wanted}"
            )
        return reader

    def save(self, path: str | Path, extra: dict | None = None) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.net.state_dict().items()}
        save_file(state, str(path / WEIGHTS_FILE))
        cfg = {
            "width": self.net.features[0].out_channels,
            "heads": {k: head.out_features for k, head in self.net.heads.items()},
        }
        if self.world_name != DEFAULT_WORLD:
            cfg["world"] = self.world_name
        cfg.update(extra or {})
        (path / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")

    @torch.no_grad()
    def read(self, images, batch_size: int = 256) -> dict[str, np.ndarray]:
        """Attribute indices per head (see HEADS / world.labels) for each image."""
        x = _as_batch(images)
        out: dict[str, list] = {k: [] for k in self.net.heads}
        for i in range(0, len(x), batch_size):
            logits = self.net(x[i : i + batch_size])
            for k, v in logits.items():
                out[k].append(v.argmax(1).numpy())
        return {k: np.concatenate(v) for k, v in out.items()}


def edit_name(prompt_or_edit: str, pool: str | Path | None = None) -> str:
    """The world edit (one of world.EDITS) asked for by an edit name, a pool category or a prompt text.

    Prompts are looked up in the toy prompt pool (their category is the edit); other text falls back
    to keywords (hat / glasses / smile / background colour)."""
    from decontext.prompts import load_prompts
    from decontext.toy.model import PROMPTS_FILE

    key = prompt_or_edit.strip()
    if key in world.EDITS:
        return key
    for p in load_prompts(pool or PROMPTS_FILE):
        if p.text.strip().lower() == key.lower() and p.category in world.EDITS:
            return p.category
    low = key.lower()
    for colour in world.BACKGROUNDS:
        if "background" in low and colour in low:
            return f"background_{colour}"
    for edit in ("hat", "glasses", "smile"):
        if edit in low:
            return edit
    raise ValueError(
        f"cannot tell which toy edit {prompt_or_edit!r} asks for; "
        f"expected one of {world.EDITS} or a prompt of {PROMPTS_FILE}"
    )


def edit_visible(state: dict[str, int], edit: str) -> bool:
    if edit in ("hat", "glasses", "smile"):
        return bool(state[edit])
    return world.BG_STATES[int(state["background"])] == edit[len("background_") :]


def score_reads(source: dict, edited: dict, edit: str, attributes: tuple[str, ...] = world.ATTRIBUTES) -> dict:
    """Scores from reader outputs (dicts of scalars) of a source and its edit; ``attributes``: the
    identity attributes of the reader's world (``ToyReader.attributes``; default v1's)."""
    same = [int(source[a]) == int(edited[a]) for a in attributes]
    return {"toy_identity": float(np.mean(same)), "edit_success": int(edit_visible(edited, edit))}


def score_edit(
    source, edited, prompt_or_edit: str, reader: ToyReader | None = None, source_identity: world.Identity | None = None
) -> dict:
    """Score one edit: ``{"toy_identity": float in [0, 1], "edit_success": 0 or 1}``.

    ``source`` and ``edited`` are PIL images, paths or uint8 arrays; ``prompt_or_edit`` a prompt of the
    toy pool, a pool category or an edit name. The source's attributes are read by the reader unless
    ``source_identity`` (the ground truth) is given."""
    reader = reader or ToyReader.load()
    edit = edit_name(prompt_or_edit)
    reads = reader.read([source, edited])
    src = {k: v[0] for k, v in reads.items()}
    if source_identity is not None:
        src.update(dict(zip(reader.attributes, source_identity.as_tuple(), strict=False)))
    return score_reads(src, {k: v[1] for k, v in reads.items()}, edit, reader.attributes)
