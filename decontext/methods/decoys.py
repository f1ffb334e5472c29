"""Decoy targets: pull each photo toward ANOTHER person's photo instead of a flat grey.

PhotoGuard's encoder and diffusion attacks take any target image; our default is flat grey. A decoy pool
gives each photo its own target: of the pool's photos, the one whose latents (the editor's own VAE) lie
farthest from the clean photo's, chosen once per photo when the method is started with its clean pixels.
So the encoder attack spends its budget moving the photo's latents toward someone as unlike it as the pool
holds, and the diffusion attack pulls the editor's edit of the photo toward that person's photo. Nothing here
reads an identity model: the choice is a latent distance of the attacked editor itself.

A pool is a folder of images (photos of people who consented, or faces you generated: never the photos you
protect) or ``toy-train``: the training identities of a toy editor's own world, one render each (never a
held-out identity). Each decoy is resized to the working size (its aspect ratio is not kept).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..editors.base import Editor
from .base import clean_rows, image_means

TOY_DECOYS = "toy-train"
DECOY_SEED = 7  # nuisance seed of the toy decoy renders (training identities only; any fixed value)


def toy_decoys(editor: Editor) -> torch.Tensor:
    """(N, 3, 64, 64) in [0, 1]: one render of each training identity of the toy editor's world."""
    from ..toy.names import is_toy_model, toy_world_name
    from ..toy.worlds import get_world

    if not is_toy_model(editor.name, editor.family):
        raise ValueError(
            f"decoys {TOY_DECOYS!r} are the toy world's training identities, but the editor is "
            f"{editor.family}:{editor.name}, not a toy editor: give a folder of decoy photos"
        )
    world = get_world(toy_world_name(editor.name, editor.family))
    renders = [world.render(world.sample_scene(identity, seed=DECOY_SEED)) for identity in world.train_identities()]
    return torch.stack([torch.from_numpy(r).permute(2, 0, 1).float() / 255 for r in renders])


def folder_decoys(folder: str | Path) -> list[torch.Tensor]:
    """Every image of ``folder`` as (1, 3, H, W) in [0, 1]; an unreadable file is an error naming it."""
    from ..images import list_images, load_image

    paths = list_images(folder)
    if not paths:
        raise ValueError(f"decoys {folder}: no images in this folder")
    return [load_image(path).pixels for path in paths]


class Decoys:
    """A pool of decoy images (``toy-train`` or a folder), its latents per working size, and each started
    photo's choice."""

    def __init__(self, source: str | Path):
        self.source = str(source)
        if self.source != TOY_DECOYS and not Path(self.source).is_dir():
            raise ValueError(f"decoys {self.source}: not a folder of images (nor {TOY_DECOYS!r})")
        self._images: Sequence[torch.Tensor] | None = None
        self._sized: dict[tuple[int, int], torch.Tensor] = {}
        self._latents: dict[tuple[int, int], torch.Tensor] = {}
        self._clean: torch.Tensor | None = None
        self._started: tuple[Editor, tuple[int, int]] | None = None
        self._choice: list[int] | None = None

    def __len__(self) -> int:
        return 0 if self._images is None else len(self._images)

    def images(self, editor: Editor, size: tuple[int, int]) -> torch.Tensor:
        """(N, 3, H, W) decoys at the working size ``size``, in [0, 1] (made once per size)."""
        size = tuple(size)
        if size not in self._sized:
            self._sized[size] = self._resize(editor, size)
        return self._sized[size]

    def _resize(self, editor: Editor, size: tuple[int, int]) -> torch.Tensor:
        if self._images is None:
            self._images = toy_decoys(editor) if self.source == TOY_DECOYS else folder_decoys(self.source)
        return torch.cat(
            [
                torch.nn.functional.interpolate(
                    image.reshape(-1, 3, *image.shape[-2:]).float(),
                    size=size,
                    mode="bilinear",
                    antialias=True,
                    align_corners=False,
                )
                for image in self._images
            ]
        ).clamp(0, 1)

    @torch.no_grad()
    def latents(self, editor: Editor, size: tuple[int, int], chunk: int = 16) -> torch.Tensor:
        """(N, ...) the editor's image latents of every decoy at ``size`` (made once per size)."""
        size = tuple(size)
        if size not in self._latents:
            images = self.images(editor, size).to(editor.device)
            self._latents[size] = torch.cat(
                [editor.image_latents(images[i : i + chunk], size).float() for i in range(0, len(images), chunk)]
            )
        return self._latents[size]

    def start(self, editor: Editor, clean: torch.Tensor, size: tuple[int, int]) -> None:
        """Take each clean photo, whose decoy is chosen on first use (``choices``): a protector's forward pass
        never asks, so it pays no encoding for it. The pool is loaded here, so a bad ``decoys`` fails at once."""
        self.images(editor, size)
        self._clean = clean.detach().clone()
        self._started = (editor, tuple(size))
        self._choice = None

    @torch.no_grad()
    def choices(self) -> list[int]:
        """For each started clean photo, the decoy whose latents are farthest from its own."""
        if self._clean is None:
            raise RuntimeError("decoys: start() was not called with this image's clean pixels")
        if self._choice is None:
            editor, size = self._started
            pool = self.latents(editor, size)
            own = editor.image_latents(self._clean.to(editor.device), size).float()
            distances = torch.stack([image_means((pool - row[None]).pow(2)) for row in own])  # (B, N)
            self._choice = distances.argmax(dim=1).tolist()
        return self._choice

    def chosen(self, pixels: torch.Tensor) -> list[int]:
        """The decoy chosen for each row of ``pixels`` (rows matched to the started clean photos)."""
        choices = self.choices()
        return [choices[row] for row in clean_rows(pixels, self._clean)]

    def targets(self, editor: Editor, pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The chosen decoys' latents for each row of ``pixels``: the encoder attack's targets."""
        return self.latents(editor, size)[self.chosen(pixels)]

    def target_pixels(self, editor: Editor, pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The chosen decoys themselves at ``size`` for each row of ``pixels``: the diffusion attack's targets."""
        return self.images(editor, size)[self.chosen(pixels)].to(pixels.device)


class DecoyTarget:
    """What a method with a ``decoys`` option shares (the encoder and diffusion attacks): the pool, started with
    each photo's clean pixels, and its source in the method's config (left out without decoys, so that earlier
    manifests keep their fields)."""

    decoys: Decoys | None = None

    def start(self, editor: Editor, pixels: torch.Tensor, size: tuple[int, int]) -> None:
        if self.decoys is not None:
            self.decoys.start(editor, pixels, size)

    def with_decoys(self, config: dict) -> dict:
        return config if self.decoys is None else {**config, "decoys": self.decoys.source}
