"""What the service runs for a batch of decoded uploads: ``decontext.protect`` on the loaded editor, with a
trained protector (one forward pass for the whole batch) or the fast PGD preset, and the 8-bit rounding of
``images.quantize`` (the library's one rule: every returned pixel within floor(eps) levels of the upload).

Nothing here knows HTTP; the batching queue (``batching.Batcher``) calls ``Engine.run`` from its worker
thread, and the Ray Serve deployment builds the same engine inside each replica."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field

import numpy as np

from .. import __version__
from ..images import LoadedImage, max_level_diff, quantize

PGD_MODE = "fast"  # the one PGD preset the service offers: the fewest steps that reach the paper's effect


@dataclass(frozen=True)
class Plan:
    """What a request asks for, resolved against the server's limits: equal plans batch together."""

    mode: str  # "protector" or PGD_MODE
    protector: str | None  # the protector's name (mode "protector")
    eps: float  # 1/255 units, already capped at the server's maximum

    def settings(self) -> dict:
        return {"mode": self.mode, "protector": self.protector, "eps": self.eps}


@dataclass
class Job:
    image: LoadedImage
    plan: Plan
    seed: int
    request_id: str = ""


@dataclass
class Protected:
    """One upload's answer before encoding: the 8-bit pixels and the record."""

    rgb8: np.ndarray  # (H, W, 3) uint8, within floor(eps) levels of the upload's
    alpha: np.ndarray | None  # the upload's alpha channel, untouched
    record: dict = field(default_factory=dict)


def content_seed(data: bytes, plan: Plan, base_seed: int = 0) -> int:
    """The seed of an upload: from its bytes and the settings, so the same photo sent twice with the same
    settings is protected the same way (and two different photos never share their random draws)."""
    digest = hashlib.sha256()
    digest.update(hashlib.sha256(data).digest())
    digest.update(json.dumps({**plan.settings(), "seed": base_seed}, sort_keys=True).encode("utf-8"))
    return int.from_bytes(digest.digest()[:4], "big") & 0x7FFFFFFF


class Engine:
    """The editor and the protection methods, loaded once; ``run(jobs)`` protects a batch."""

    def __init__(
        self,
        protectors: tuple[str, ...] = ("toy-decontext",),
        model: str | None = None,
        family: str | None = None,
        device: str = "cpu",
        dtype: str = "auto",
        max_eps: float | None = None,
        measure_draws: int = 1,
        allow_pgd: bool = True,
        pgd_steps: int | None = None,
        batch_compute: bool = False,
    ):
        from ..methods.protector_files import read_config, transfer_problems, weights_digest

        if not protectors:
            raise ValueError("the service needs at least one protector (--protector)")
        configs = {name: read_config(name) for name in protectors}
        first = configs[protectors[0]]["editor"]
        self.model = model or first.get("model") or "toy"
        self.family_name = family or first.get("family")
        self.device, self.dtype = device, dtype
        self.max_eps = float(max_eps if max_eps is not None else max(float(c["eps"]) for c in configs.values()))
        for name, config in configs.items():
            problems = transfer_problems(config, self.family_name, None, self.max_eps)
            problems = [p for p in problems if "larger than" not in p]  # a larger budget is clamped per request
            if problems:
                raise ValueError(f"protector {name!r} does not fit this service: {'; '.join(problems)}")
        self.protector_eps = {name: float(c["eps"]) for name, c in configs.items()}
        self.digests = {name: weights_digest(name) for name in protectors}
        self.protectors = tuple(protectors)
        self.measure_draws = int(measure_draws)
        self.allow_pgd = allow_pgd
        self.pgd_steps = pgd_steps
        # Float kernels pick their blocking by batch size, so a photo protected beside others can land one
        # level off in a few pixels against the same photo alone (seen on the toy protector at 1 thread).
        # By default each photo is computed alone, so equal uploads always get equal bytes; batch_compute
        # trades that for one call per batch.
        self.batch_compute = batch_compute
        self.editor = None
        self.methods: dict = {}

    # ------------------------------------------------------------------ loading
    def load(self) -> "Engine":
        """Load the editor, the protectors' networks and the PGD method (seconds; call once, before serving)."""
        import decontext

        from ..editors import family as family_of
        from ..methods.protector import load_protector
        from ..toy.names import is_toy_model, toy_prompts

        self.editor = decontext.load_editor(self.model, self.family_name, self.device, self.dtype)
        self.family_name = self.editor.family
        for name in self.protectors:
            self.methods[name] = decontext.build_method("amortized", protector=name)
            load_protector(name, self.editor.device)  # cached per process: the first request does not pay for it
        if self.allow_pgd:
            toy = is_toy_model(self.model, self.family_name)
            self.methods[PGD_MODE] = decontext.build_method(
                "decontext", **({"prompts": str(toy_prompts(self.model, self.family_name))} if toy else {})
            )
            self._family = family_of(self.family_name)
        return self

    @property
    def ready(self) -> bool:
        return self.editor is not None

    # ------------------------------------------------------------------ requests
    def plan(self, protector: str | None, method: str | None, eps: float | None) -> Plan:
        """A request's settings checked and resolved (ValueError naming the problem)."""
        mode = (method or "protector").lower()
        if mode in ("protector", "amortized"):
            name = protector or self.protectors[0]
            if name not in self.protector_eps:
                raise ValueError(f"unknown protector {name!r} (this server has: {', '.join(self.protectors)})")
            top = min(self.max_eps, self.protector_eps[name])
        elif mode == PGD_MODE:
            if not self.allow_pgd:
                raise ValueError("this server does not run PGD (started with --no-pgd); use method=protector")
            name, top = None, self.max_eps
        else:
            raise ValueError(f"unknown method {method!r} (choose protector or {PGD_MODE})")
        if eps is not None and not eps > 0:
            raise ValueError(f"eps must be > 0 (1/255 units), got {eps}")
        return Plan("protector" if name else PGD_MODE, name, float(min(eps, top) if eps is not None else top))

    def config(self, plan: Plan):
        from ..config import PGDConfig, ProtectConfig

        method = self.methods[plan.protector or PGD_MODE]
        if plan.mode == PGD_MODE:
            pgd = PGDConfig.for_method(
                method,
                defaults=self._family.pgd_defaults,
                family_presets=self._family.presets,
                preset="fast",
                eps=plan.eps,
                steps=self.pgd_steps,
            )
        else:
            pgd = PGDConfig.for_method(method, eps=plan.eps)
        return method, ProtectConfig(
            pgd=pgd, resolution=self.editor.default_resolution, measure_draws=self.measure_draws
        )

    def run(self, jobs: list[Job]) -> list:
        """Protect ``jobs``, each image with its own content seed: one ``decontext.protect`` call per image, or,
        with ``batch_compute``, one per group of one plan and one size. One result per job, in order:
        ``Protected``, or the exception that failed its group."""
        import torch

        import decontext

        results: list = [None] * len(jobs)
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            key = (job.plan, tuple(job.image.pixels.shape)) if self.batch_compute else (job.plan, i)
            groups.setdefault(key, []).append(i)
        for (plan, _), members in groups.items():
            began = time.perf_counter()
            try:
                method, config = self.config(plan)
                outcome = decontext.protect(
                    self.editor,
                    method,
                    torch.cat([jobs[i].image.pixels for i in members]),
                    config,
                    jobs[members[0]].seed,
                    seeds=[jobs[i].seed for i in members],
                )
            except Exception as exc:  # e.g. a non-finite loss, out of memory: this group fails, the rest goes on
                for i in members:
                    results[i] = exc
                continue
            milliseconds = (time.perf_counter() - began) * 1000 / len(members)
            for k, i in enumerate(members):
                image = jobs[i].image
                rgb8 = quantize(outcome.pixels[k : k + 1], image.rgb8, config.pgd.eps)
                record = outcome.images[k]
                results[i] = Protected(
                    rgb8,
                    image.alpha,
                    {
                        "method": "amortized" if plan.mode == "protector" else f"decontext ({PGD_MODE} PGD)",
                        "protector": plan.protector,
                        "protector_sha256": self.digests.get(plan.protector),
                        "eps": config.pgd.eps,
                        "steps": record.steps_run,
                        "measure_before": record.before,
                        "measure_after": record.after,
                        "max_diff_levels": max_level_diff(rgb8, image.rgb8),
                        "size": [image.size[0], image.size[1]],
                        "working_size": [outcome.working_size[1], outcome.working_size[0]],
                        "batch": len(jobs),  # taken from the queue together
                        "computed_together": len(members),
                        "milliseconds": round(milliseconds, 1),
                        "seed": jobs[i].seed,
                        "editor": {"family": self.family_name, "model": self.model},
                        "version": __version__,
                    },
                )
        return results
