"""TDAE: Towards Transferable Defense Against Malicious Image Edits (arXiv 2512.14341).

No public code exists; the abstract fixes two mechanisms and we chose the rest (docs/METHODS.md):

- The image objective (maximised) is the EDIT DISCREPANCY: at a noise level drawn per step, the
  editor's prediction with the protected image as its condition against its prediction with the
  original, on the same noisy target (the original's latents noised along the editor's training
  pair) and the same prompt embeddings e:
  ``D(x; e) = mean((v(x_t, s, c(x, e)) - v(x_t, s, c(x_0, e)))^2)``. D is 0 at the original, so
  TDAE starts from a random point of the eps-ball (``pgd_defaults``).
- FlatGrad (FDM): maximise ``J(x) = D(x) - lambda * ||grad_x D(x)||_2`` so the perturbation sits on a
  flat maximum (reported to transfer better). grad J = g - lambda * H g/||g||, and the Hessian-vector
  product is taken by a finite difference along g/||g|| (two backward passes, no double backprop):
  ``grad J ~= g(x) - (lambda / h) * (g(x + h g/||g||) - g(x))``. ``flat_weight`` is lambda / h and
  ``flat_radius`` is h (in 1/255 units).
- Dynamic Prompt Defense (DPD): every ``dpd_every`` image steps a prompt is drawn and its
  embeddings are optimised for ``dpd_steps`` Adam steps to MINIMISE D at the current protected image
  (the adversary's best prompt: the edit of the protected image made to match the edit of the
  original); the image steps until the next cycle maximise D under those embeddings. Cycling
  through prompts and their adversarial embeddings is what the paper credits for transfer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch

from ..config import fraction
from ..editors.base import Editor, text_embeddings, with_text_embeddings
from . import METHODS
from .base import Method, check_t_range, draw_prompts_and_sigmas, only, prompt_list
from .composite import with_gradient

DEFAULTS = METHODS["tdae"].defaults

Objective = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def flat_gradient(
    objective: Objective, pixels: torch.Tensor, generator: torch.Generator, radius: float, weight: float
) -> tuple[torch.Tensor, dict]:
    """FlatGrad of a scalar ``objective(pixels, generator)``: a tensor whose VALUE is
    ``J = f(x) - weight * radius * ||grad f(x)||`` (per-sample L2 norms, summed over the batch) and whose
    gradient in ``pixels`` is the finite-difference estimate ``g - weight * (g(x + radius * g/||g||) - g)``
    of grad J. Both evaluations of ``objective`` see the same random draws (the generator is rewound).
    ``radius`` is in pixel units of [0, 1]."""
    state = generator.get_state()
    value = objective(pixels, generator)
    (g1,) = torch.autograd.grad(value, pixels)
    after = generator.get_state()
    norms = g1.flatten(1).norm(dim=1).reshape(-1, *([1] * (g1.dim() - 1)))
    shifted = (pixels.detach() + radius * g1 / norms.clamp_min(1e-30)).requires_grad_(True)
    generator.set_state(state)
    (g2,) = torch.autograd.grad(objective(shifted, generator), shifted)
    generator.set_state(after)
    direction = g1 - weight * (g2 - g1)
    flat_value = value.detach() - weight * radius * norms.sum()
    return with_gradient(flat_value, pixels, direction), {
        "objective": float(value.detach()),
        "grad_norm": float(norms.mean()),
    }


class TDAE(Method, spec="tdae"):
    """FlatGrad + Dynamic Prompt Defense on the edit discrepancy (see the module docstring).

    Args:
        t_range: noise level drawn uniformly from [lo, hi) at each image step.
        flat_weight: lambda / h of FlatGrad (0 = plain gradient of D).
        flat_radius: h, the finite-difference step along the normalised gradient, in 1/255 units.
        dpd_every: image steps per DPD cycle (K).
        dpd_steps: Adam steps on the prompt embeddings per cycle (0 = prompts drawn, never optimised).
        dpd_lr: Adam learning rate of those steps.
        prompts: edit prompts (list or pool file); one is drawn per cycle.
        release_text_encoders: let the editor free its text encoders once the pool is embedded.
    """

    def __init__(
        self,
        t_range: tuple[float, float] = DEFAULTS["t_range"],
        flat_weight: float = DEFAULTS["flat_weight"],
        flat_radius: float = DEFAULTS["flat_radius"],
        dpd_every: int = DEFAULTS["dpd_every"],
        dpd_steps: int = DEFAULTS["dpd_steps"],
        dpd_lr: float = DEFAULTS["dpd_lr"],
        prompts: Sequence[str] | str | Path | None = DEFAULTS["prompts"],
        release_text_encoders: bool = True,
    ):
        if flat_weight < 0 or flat_radius <= 0:
            raise ValueError(f"need flat_weight >= 0 and flat_radius > 0 (got {flat_weight}, {flat_radius})")
        if dpd_every < 1 or dpd_steps < 0 or dpd_lr <= 0:
            raise ValueError(
                f"need dpd_every >= 1, dpd_steps >= 0, dpd_lr > 0 (got {dpd_every}, {dpd_steps}, {dpd_lr})"
            )
        self.t_range = check_t_range(t_range)
        self.flat_weight, self.flat_radius = float(flat_weight), float(flat_radius)
        self.dpd_every, self.dpd_steps, self.dpd_lr = int(dpd_every), int(dpd_steps), float(dpd_lr)
        self.prompts = prompt_list(prompts)
        self.release_text_encoders = release_text_encoders
        self._clean: torch.Tensor | None = None
        self._clean_conditions: dict = {}  # prompt -> the original's condition (no gradient; read once per image)
        self._prompt: str | None = None
        self._embeddings: dict[str, torch.Tensor] | None = None
        self.dpd_history: list[
            dict
        ] = []  # one entry per cycle: step, prompt index, the embedding objective per Adam step

    def config(self) -> dict:
        return {
            "method": self.name,
            "t_range": list(self.t_range),
            "flat_weight": self.flat_weight,
            "flat_radius": self.flat_radius,
            "dpd_every": self.dpd_every,
            "dpd_steps": self.dpd_steps,
            "dpd_lr": self.dpd_lr,
            "num_prompts": len(self.prompts),
        }

    def prepare(self, editor: Editor) -> None:
        editor.prepare(self.prompts, release=self.release_text_encoders)

    def start(self, editor: Editor, pixels: torch.Tensor, size: tuple[int, int]) -> None:
        self._clean = pixels.detach().clone()
        self._clean_conditions: dict = {}
        self._prompt, self._embeddings = None, None
        self.dpd_history = []

    def is_dpd_step(self, step: int) -> bool:
        """Whether image step ``step`` begins a DPD cycle (0, K, 2K, ...)."""
        return step % self.dpd_every == 0

    # ------------------------------------------------------------------ the edit discrepancy
    def discrepancy(
        self,
        editor: Editor,
        pixels: torch.Tensor,
        size,
        generator: torch.Generator,
        embeddings: dict[str, torch.Tensor],
        step: int | None = None,
    ) -> torch.Tensor:
        """D(pixels; embeddings) for one draw of noise level and noise (differentiable in pixels and in
        the embeddings; the original's branch carries no pixel gradient)."""
        if self._clean is None:
            raise RuntimeError("TDAE needs the original image: call method.start(editor, clean_pixels, size) first")
        _, sigma = draw_prompts_and_sigmas(generator, 1, self.t_range)
        clean = with_text_embeddings(editor, self._clean_condition(editor, size), embeddings)
        protected = with_text_embeddings(editor, editor.condition(pixels, [self._prompt], size, step=step), embeddings)
        noise = editor.noise_like(clean, [generator])
        x_t, _ = editor.flow_pair(clean, noise, sigma)
        x_t = x_t.detach()
        reference = editor.velocity(x_t, sigma, clean)
        return (editor.velocity(x_t, sigma, protected).float() - reference.float()).pow(2).mean()

    def _clean_condition(self, editor: Editor, size):
        if self._prompt not in self._clean_conditions:
            with torch.no_grad():
                self._clean_conditions[self._prompt] = editor.condition(self._clean, [self._prompt], size)
        return self._clean_conditions[self._prompt]

    def dynamic_prompt(
        self, editor: Editor, pixels: torch.Tensor, size, generator: torch.Generator, step: int
    ) -> list[float]:
        """One DPD cycle: draw a prompt, then ``dpd_steps`` Adam steps on its embeddings that lower D at
        ``pixels`` (no pixel gradient). Returns D before each step and after the last."""
        (index,), _ = draw_prompts_and_sigmas(generator, len(self.prompts), self.t_range)
        self._prompt = self.prompts[index]
        base = text_embeddings(editor, self._clean_condition(editor, size))
        variables = {k: v.detach().clone().requires_grad_(self.dpd_steps > 0) for k, v in base.items()}
        losses: list[float] = []
        if self.dpd_steps:
            optimiser = torch.optim.Adam(list(variables.values()), lr=self.dpd_lr)
            fixed = pixels.detach()
            for _ in range(self.dpd_steps):
                # One fixed draw per cycle, so the steps are judged on the same objective.
                state = generator.get_state()
                value = self.discrepancy(editor, fixed, size, generator, variables)
                generator.set_state(state)
                optimiser.zero_grad()
                value.backward()
                optimiser.step()
                losses.append(float(value.detach()))
            with torch.no_grad():
                losses.append(float(self.discrepancy(editor, fixed, size, generator, variables)))
        self._embeddings = {k: v.detach() for k, v in variables.items()}
        self.dpd_history.append({"step": step, "prompt": index, "objective": losses})
        return losses

    # ------------------------------------------------------------------ the method
    def loss(self, editor: Editor, pixels: torch.Tensor, size: tuple[int, int], step: int, generators):
        generator = only(generators, self.name)
        if self._embeddings is None or self.is_dpd_step(step):
            self.dynamic_prompt(editor, pixels, size, generator, step)
        objective = lambda px, gen: self.discrepancy(editor, px, size, gen, self._embeddings, step)  # noqa: E731
        if self.flat_weight == 0:
            value = objective(pixels, generator)
            return value.reshape(1), {"discrepancy": float(value.detach())}
        value, info = flat_gradient(objective, pixels, generator, fraction(self.flat_radius), self.flat_weight)
        return value.reshape(1), {"discrepancy": info["objective"], "grad_norm": info["grad_norm"]}

    @torch.no_grad()
    def measure(self, editor: Editor, pixels, size, draws: int = 4, seed: int = 1234) -> dict[str, float]:
        """D under the plain embeddings of ``draws`` pool prompts (0 for the original image)."""
        if self._clean is None:
            return {}
        generator = torch.Generator().manual_seed(seed)
        saved = self._prompt
        values = []
        try:
            for _ in range(draws):
                (index,), _ = draw_prompts_and_sigmas(generator, len(self.prompts), self.t_range)
                self._prompt = self.prompts[index]
                plain = text_embeddings(editor, self._clean_condition(editor, size))
                values.append(float(self.discrepancy(editor, pixels, size, generator, plain)))
        finally:
            self._prompt = saved
        return {"discrepancy": sum(values) / len(values)}
