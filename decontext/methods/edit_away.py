"""Through the edit: push the editor's own few-step edit of the protected photo AWAY from its edit of the clean one.

PhotoGuard's diffusion attack (``methods.diffusion``) pulls the edit toward a fixed grey target; DiffVax's
``L_edit`` and this objective ask for what the protection is for instead: whatever the editor would have made of
the clean photo, it must not make of the protected one. For each image and edit prompt the editor's sampler
(``editor.noise_like`` -> ``sample_steps`` x ``editor.denoise`` -> optionally ``editor.decode``) runs once on the
CLEAN pixels without gradient (kept for the image's session, computed the first time that prompt is drawn), then
every loss runs the same sampler, from the same noise, on the protected pixels with gradient and returns

    L(x) = mean((edit(x) - edit(x_clean))^2)        in the editor's latent space (``space="latent"``) or pixels

so L = 0, its minimum, at zero perturbation. The noise of image i's edits is drawn from ``noise_seed`` (one
fixed draw per image: the clean edit is a function of the image and the prompt alone); the prompt is drawn per
step from the run's generator. With ``checkpoint`` each sampler step is recomputed in the backward pass instead
of kept (``torch.utils.checkpoint``), so memory does not grow with ``sample_steps``. The gradient vanishes at the
clean photo (a squared distance), so PGD starts from a random point of the ball (``pgd_defaults``); a protector's
untrained output is already off the clean photo.

``sample_schedule="editor"`` runs the sampler the editor's real pipeline runs in ``editor.edit`` (the CLI's edit)
instead: its start noise (``editor.edit_noise``: the pipeline's own draw from ``noise_seed``), its noise levels
(``editor.edit_levels``: FLUX's resolution-shifted schedule) and its step arithmetic (``editor.edit_denoise``), on
the photo laid out as the pipeline lays it out; so at zero perturbation the clean edit, decoded, is the CLI's edit
of the photo (at its working size) with seed ``noise_seed``, ``sample_steps`` steps and the editor's guidance, to
the last bit before its 8-bit rounding (docs/METHODS.md says when not, and why). The default, ``even``, steps
through evenly spaced levels from ``editor.noise_like``'s draw with ``editor.denoise``, on every editor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..editors.base import Editor
from . import METHODS
from .base import Method, clean_rows, draw_per_image, image_means, prompt_list, sample

DEFAULTS = METHODS["edit_away"].defaults
SPACES = ("latent", "pixel")
SCHEDULES = ("even", "editor")  # evenly spaced levels from noise_like; the editor's real pipeline's (EDIT_SAMPLER)
EDIT_SAMPLER = ("edit_noise", "edit_levels", "edit_denoise")  # what an editor exposes of the sampler of its edit


class EditAway(Method, spec="edit_away"):
    """Args:
    sample_steps: denoising steps of the differentiable edit.
    edit_space: ``latent`` (the sampler's clean latents) or ``pixel`` (decoded) distance.
    prompts: edit prompts (list or pool file); one is drawn per image and step.
    noise_seed: seed of each image's fixed sampler noise.
    checkpoint: recompute each sampler step in the backward pass (less memory, one more forward).
    release_text_encoders: let the editor free its text encoders once the pool is embedded.
    sample_schedule: ``even`` (evenly spaced noise levels from ``editor.noise_like``) or ``editor`` (the sampler
        of the editor's real pipeline, ``EDIT_SAMPLER``: the CLI's edit).
    """

    def __init__(
        self,
        sample_steps: int = DEFAULTS["sample_steps"],
        edit_space: str = DEFAULTS["edit_space"],
        prompts: Sequence[str] | str | Path | None = DEFAULTS["prompts"],
        noise_seed: int = 0,
        checkpoint: bool = True,
        release_text_encoders: bool = True,
        sample_schedule: str = DEFAULTS["sample_schedule"],
    ):
        if sample_steps < 1:
            raise ValueError(f"sample_steps must be >= 1, got {sample_steps}")
        if edit_space not in SPACES:
            raise ValueError(f"edit_space must be one of {SPACES}, got {edit_space!r}")
        if sample_schedule not in SCHEDULES:
            raise ValueError(f"sample_schedule must be one of {SCHEDULES}, got {sample_schedule!r}")
        self.sample_steps = int(sample_steps)
        self.edit_space = edit_space
        self.prompts = prompt_list(prompts)
        self.noise_seed = int(noise_seed)
        self.checkpoint = bool(checkpoint)
        self.release_text_encoders = release_text_encoders
        self.sample_schedule = sample_schedule
        self._clean: torch.Tensor | None = None
        self._edits: dict[tuple[int, int], torch.Tensor] = {}
        self._fresh = True

    def config(self) -> dict:
        config = {
            "method": self.name,
            "sample_steps": self.sample_steps,
            "edit_space": self.edit_space,
            "noise_seed": self.noise_seed,
            "num_prompts": len(self.prompts),
        }
        if self.sample_schedule != "even":  # left out at the default: earlier manifests keep their fields
            config["sample_schedule"] = self.sample_schedule
        return config

    def prepare(self, editor: Editor) -> None:
        missing = [name for name in EDIT_SAMPLER if not hasattr(editor, name)]
        if self.sample_schedule == "editor" and missing:
            family = getattr(editor, "family", type(editor).__name__)
            raise ValueError(
                f"edit_away: sample_schedule 'editor' needs the sampler of the editor's real pipeline "
                f"({', '.join(EDIT_SAMPLER)}), which the {family} editor does not expose"
            )
        editor.prepare(self.prompts, release=self.release_text_encoders)

    def start(self, editor: Editor, pixels: torch.Tensor, size: tuple[int, int]) -> None:
        """Keep the clean pixels of this image (batch); their edits are made once per prompt, on first use."""
        self._clean = pixels.detach().clone()
        self._edits = {}
        self._fresh = True  # the next loss is this image's first: the editor reads it anew (condition step 0)

    def edit(self, editor: Editor, pixels: torch.Tensor, size, indices: Sequence[int], step: int | None = None):
        """The edit in the chosen space of ``pixels`` (B, 3, H, W) with prompt ``indices[i]`` for image i, each
        from its own fixed noise (image i's noise is the same whatever the prompt)."""
        if self.sample_schedule == "editor":
            # A copy laid out as diffusers' image processor hands a photo to the VAE: channels last (numpy's HWC
            # transposed), with the strides of a fresh tensor. The same numbers, but the VAE's convolutions pick their
            # kernel by the layout and sum in another order: the context latents would differ in the last bits.
            pixels = pixels.clone(memory_format=torch.channels_last)
        condition = editor.condition(pixels, [self.prompts[i] for i in indices], size, step=step)
        generators = [torch.Generator().manual_seed(self.noise_seed) for _ in range(condition.batch)]
        if self.sample_schedule == "editor":  # the real pipeline's draw, levels and step arithmetic (the CLI's edit)
            noise, levels = editor.edit_noise(condition, generators), editor.edit_levels(condition, self.sample_steps)
            latents = sample(editor, condition, noise, self.sample_steps, self.checkpoint, levels, editor.edit_denoise)
        else:
            latents = sample(
                editor, condition, editor.noise_like(condition, generators), self.sample_steps, self.checkpoint
            )
        return latents if self.edit_space == "latent" else editor.decode(latents, condition)

    def rows(self, pixels: torch.Tensor) -> list[int]:
        """Which clean image of the session each row of ``pixels`` is: row for row for the whole batch, else the
        clean image nearest each row (a protected photo is within the budget of its own clean one)."""
        if self._clean is None:
            raise RuntimeError("edit_away: start() was not called with this image's clean pixels")
        return clean_rows(pixels, self._clean)

    def clean_edits(self, editor: Editor, size, rows: Sequence[int], indices: Sequence[int]) -> torch.Tensor:
        """The edits of clean image ``rows[i]`` with prompt ``indices[i]``: each made once per session, no grad."""
        missing = sorted({(row, index) for row, index in zip(rows, indices, strict=True)} - set(self._edits))
        if missing:
            with torch.no_grad():
                made = self.edit(editor, self._clean[[row for row, _ in missing]], size, [i for _, i in missing])
            self._edits.update({key: made[k : k + 1] for k, key in enumerate(missing)})
        return torch.cat([self._edits[(row, index)] for row, index in zip(rows, indices, strict=True)])

    def _distance(self, editor, pixels, size, indices, step=None) -> torch.Tensor:
        target = self.clean_edits(editor, size, self.rows(pixels), indices)
        return image_means((self.edit(editor, pixels, size, indices, step).float() - target.float()).pow(2))

    def loss(self, editor: Editor, pixels: torch.Tensor, size: tuple[int, int], step: int, generators):
        indices, _ = draw_per_image(generators, len(self.prompts), (0.0, 1.0), count=1)
        if len(indices) != len(pixels):  # one generator shared by a batch: one prompt for all
            indices = indices * len(pixels)
        # A trainer starts every step on a new batch: the first loss after start() is a new image to the editor
        # (what it reads without gradient, e.g. a VLM's view of the photo, is read again); PGD's later steps reuse it.
        distance = self._distance(editor, pixels, size, indices, 0 if self._fresh else step)
        self._fresh = False
        return distance, {"edit_distance": float(distance.detach().mean())}

    @torch.no_grad()
    def measure(self, editor: Editor, pixels, size, draws: int = 4, seed: int = 1234) -> dict[str, float]:
        """Mean distance of the edits of ``pixels`` from those of the session's clean photo over ``draws`` prompts."""
        if self._clean is None:
            return {}
        generator = torch.Generator().manual_seed(seed)
        values = []
        for _ in range(draws):
            (index,), _ = draw_per_image([generator], len(self.prompts), (0.0, 1.0))
            values.append(self._distance(editor, pixels, size, [index] * len(pixels)).mean())
        return {"edit_distance": float(torch.stack(values).mean())}
