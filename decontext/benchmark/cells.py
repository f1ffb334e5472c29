"""The cells of a benchmark and how one is computed.

A cell is (editor, method, budget, attacker). Its values: the toy identity and edit success of the edits
of the protected photo after the attacker, of the noise control after the SAME attacker, and of the
clean photo after it (paired by identity and edit), the input PSNR, and what the attacker costs the
clean photo (PSNR / SSIM of attacked clean against clean). Under a learned remover the noise control also has
a cell of its own (``control_cells``), its remover trained on the control's outputs. Everything several
cells share (the protected photos of a method, an attacker's output, a remover trained on a method, the edits
and their scores) is made once and cached under ``DIR/cache`` (atomic writes: a killed run loses at most the item
it was making), so a resumed run recomputes only what no file holds.

It calls the library and restates none of it: ``protect()`` (with ``images.quantize`` for the saved
file's budget), the editor's own ``edit``, the toy reader (``score_reads``), ``metrics.pixel``.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..attackers import AttackContext, load_net, parse_attacker, save_net
from .spec import CONTROL, Spec


@dataclass(frozen=True)
class Cell:
    editor: str
    method: str
    budget: float
    attacker: str

    @property
    def key(self) -> str:
        return safe_name(f"{self.editor}__{self.method}@{self.budget:g}__{self.attacker}")

    def to_dict(self) -> dict:
        return {"editor": self.editor, "method": self.method, "budget": self.budget, "attacker": self.attacker}


def safe_name(text: str) -> str:
    """A file name for a key (letters, digits and ._@+=- kept; anything else '_')."""
    return re.sub(r"[^A-Za-z0-9._@+=-]", "_", text)


def protector_budget(method: str) -> float | None:
    """The budget a shipped or trained protector was trained for (None for a PGD method)."""
    if not method.startswith("protector:"):
        return None
    from ..methods.protector_files import read_config

    return float(read_config(method.partition(":")[2])["eps"])


def plan(spec: Spec) -> list[Cell]:
    """Every cell of a spec, in run order (a protector only at its own budget; ``worst`` is derived from
    the others by the report, and the noise control is inside every cell), then the control cells
    (``control_cells``)."""
    cells = []
    for editor in spec.editors:
        for budget in spec.budgets:
            for method in spec.methods:
                if method == CONTROL:
                    continue
                own = protector_budget(method)
                if own is not None and own != budget:
                    continue
                cells.extend(Cell(editor, method, budget, a) for a in spec.attackers if not parse_attacker(a).derived)
    return cells + control_cells(spec)


def control_cells(spec: Spec) -> list[Cell]:
    """The noise control as a cell of its own under every attacker that learns from the protection under test
    (the remover): the attacker trained on the control's own (noise, clean) pairs and applied to its held-out
    photos, as it is to each method's. Inside a method's cell the control goes through the remover trained on
    THAT method (the same function for both, as for any other attacker); this cell gives the report the
    symmetric comparison too, each condition through a remover trained on its own outputs. Planned after every
    method cell, so that adding them to a spec's plan moves no recorded cell's position."""
    learned = [a for a in spec.attackers if parse_attacker(a).needs == "protection"]
    return [Cell(editor, CONTROL, budget, a) for editor in spec.editors for budget in spec.budgets for a in learned]


class Cache:
    """Arrays (npz) and nets (safetensors + json) under one folder, each written atomically once."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.made: list[str] = []  # keys computed by this process (the tests read it)

    def path(self, kind: str, key: str, suffix: str) -> Path:
        return self.root / kind / (safe_name(key) + suffix)

    def arrays(self, kind: str, key: str, make) -> dict[str, np.ndarray]:
        path = self.path(kind, key, ".npz")
        if path.exists():
            with np.load(path) as data:
                return {k: data[k] for k in data.files}
        value = make()
        buffer = io.BytesIO()
        np.savez(buffer, **value)
        from ..images import atomic_write

        atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
        self.made.append(f"{kind}/{key}")
        return value

    def net(self, key: str, make):
        path = self.path("nets", key, ".safetensors")
        if path.exists() and path.with_suffix(".json").exists():  # both written (weights first): a whole net
            return load_net(path)
        state = make()
        save_net(state, path)
        self.made.append(f"nets/{key}")
        return load_net(path)  # the saved (float16) weights: a resumed run applies the very same net


class ToyEnvironment:
    """One toy editor with its world, reader, held-out photos and edit prompts, loaded once per run."""

    resolution = "native"  # the toys work at the photo's own 64 px

    def __init__(self, spec: Spec, editor_name: str, cache: Cache, log=print):
        from ..editors import load_editor
        from ..prompts import load_prompts
        from ..toy.names import toy_family, toy_prompts
        from ..toy.reader import ToyReader, edit_name
        from ..toy.worlds import heldout_scenes

        self.spec, self.cache, self.log = spec, cache, log
        self.name = editor_name
        self.editor = load_editor(editor_name, toy_family(editor_name), "cpu", "float32")
        pool = load_prompts(toy_prompts(editor_name))
        indices = spec.edits["prompt_indices"]
        self.prompts = [pool[i].text for i in indices]
        self.edit_names = [edit_name(pool[i].category) for i in indices]
        self.attack_prompts = [p.text for p in pool]
        self.editor.prepare(self.attack_prompts + self.prompts, release=False)
        self.settings = {
            "steps": int(spec.edits.get("steps", self.editor.recommended["num_inference_steps"])),
            "guidance": float(spec.edits.get("guidance", self.editor.recommended["guidance_scale"])),
        }
        self.reader = ToyReader.for_editor(editor_name, toy_family(editor_name))
        self.world = self.reader.world
        seed = int(spec.identities.get("seed", spec.seed))
        scenes = heldout_scenes(self.world, int(spec.identities.get("count", 20)), seed)
        self.identities = [int(s.identity.index) for s in scenes]
        self.sources = np.stack([self.world.render(s) for s in scenes])
        self.edit_seed = int(spec.edits.get("seed", spec.seed))
        self.methods: dict[str, object] = {}

    # -- protection ------------------------------------------------------------------------------------
    def method(self, name: str):
        if name not in self.methods:
            from ..methods import METHODS, build_method, compose, parse_method

            if name.startswith("protector:"):
                self.methods[name] = build_method("amortized", protector=name.partition(":")[2])
            else:
                parts = []
                for part in name.split("+"):
                    part, options = parse_method(part)  # the spec's own options (encoder:decoys=toy-train)
                    if "prompts" in METHODS[part].defaults:  # they draw edit prompts: keep the encoders for ours
                        options["release_text_encoders"] = False
                        if self.attack_prompts:
                            options["prompts"] = self.attack_prompts
                    parts.append(build_method(part, **options))
                self.methods[name] = compose(parts)
        return self.methods[name]

    def protect(self, name: str, budget: float, images: np.ndarray, seed: int) -> np.ndarray:
        """``images`` protected by method ``name`` at ``budget`` (image i with seed + i), as saved files:
        uint8 within floor(budget) levels (``images.quantize``)."""
        import torch
        from tqdm.auto import tqdm

        from ..config import PGDConfig, ProtectConfig
        from ..images import quantize, uint8_to_tensor
        from ..methods.base import protector_start
        from ..protect import protect

        method = self.method(name)
        pgd = self.spec.pgd
        preset = pgd.get("preset", "fast")
        options = {"eps": budget, "alpha": pgd.get("alpha")}
        if method.optimises:
            options["steps"] = pgd.get("steps")
        config = ProtectConfig(
            pgd=PGDConfig.for_method(method, preset=None if preset == "none" else preset, **options),
            resolution=self.resolution,
            measure_draws=0,
        )
        chunk = len(images) if method.batched else 1
        # a protector on an editor its training objective cannot measure (toy-robust, trained with DeContext's
        # share, on the toy InstructPix2Pix): its output alone, which is what ``protect`` saves with no steps
        transfer = name.startswith("protector:") and not method.objective.applies_to(type(self.editor))
        out = []
        # a bar on a terminal only (disable=None): a remover's pairs under per-image PGD can take an hour
        bar = tqdm(total=len(images), desc=f"{self.name}: {name}@{budget:g}", unit="photo", leave=False, disable=None)
        for start in range(0, len(images), chunk):
            part = images[start : start + chunk]
            x0 = torch.cat([uint8_to_tensor(im) for im in part])
            if transfer:
                with torch.no_grad():
                    pixels = protector_start(method.protector, self.editor, x0, config)
            else:
                seeds = [seed + start + i for i in range(len(part))]
                pixels = protect(self.editor, method, x0, config, seeds=seeds).pixels
            out.extend(quantize(pixels[i : i + 1], part[i], budget) for i in range(len(part)))
            bar.update(len(part))
        bar.close()
        return np.stack(out)

    def protected(self, name: str, budget: float) -> np.ndarray:
        seed = self.spec.seed
        return self.cache.arrays(
            "protected",
            f"{self.name}__{name}@{budget:g}",
            lambda: {"images": self.protect(name, budget, self.sources, seed)},
        )["images"]

    # -- attack ----------------------------------------------------------------------------------------
    def context(self, method: str | None = None, budget: float | None = None) -> AttackContext:
        protect = None
        if method is not None:
            protect = lambda images, seed: self.protect(method, budget, images, seed)  # noqa: E731
        return AttackContext(self.editor, self.world, protect, {"resolution": self.resolution, **self.settings})

    def attacker_state(self, attacker, method: str, budget: float):
        """The attacker's model: the remover is trained on THIS method at THIS budget (cached)."""
        if attacker.kind == "remover":
            key = f"{self.name}__remover__{attacker.label}__{method}@{budget:g}"
            return self.cache.net(key, lambda: attacker.fit(self.context(method, budget), seed=self.spec.seed))
        return attacker.fit(self.context(), seed=self.spec.seed)

    def attacked(self, condition: str, images: np.ndarray, attacker, state, scope: str) -> np.ndarray:
        key = f"{self.name}__{condition}__{scope}"
        seed = self.spec.seed + 5_000_000
        return self.cache.arrays(
            "attacked", key, lambda: {"images": attacker.apply(images, seed, state, self.context())}
        )["images"]

    # -- edit and read ---------------------------------------------------------------------------------
    def scores(self, key: str, images: np.ndarray) -> dict[str, np.ndarray]:
        """Toy identity and edit success (edits x identities) of the edits of ``images``, read against the
        held-out sources (cached by ``key``)."""
        return self.cache.arrays("scores", f"{self.name}__{key}", lambda: self._score(images))

    def _score(self, images: np.ndarray) -> dict[str, np.ndarray]:
        from PIL import Image

        from ..toy.reader import score_reads

        source_reads = self.reader.read(list(self.sources))
        identity = np.zeros((len(self.prompts), len(images)))
        success = np.zeros_like(identity)
        pils = [Image.fromarray(im) for im in images]
        seeds = [self.edit_seed + i for i in range(len(images))]
        for e, (prompt, name) in enumerate(zip(self.prompts, self.edit_names, strict=True)):
            edits = self.editor.edit(pils, [prompt] * len(pils), seeds, resolution=self.resolution, **self.settings)
            reads = self.reader.read([np.asarray(im.convert("RGB")) for im in edits])
            for i in range(len(images)):
                result = score_reads(
                    {k: v[i] for k, v in source_reads.items()},
                    {k: v[i] for k, v in reads.items()},
                    name,
                    self.reader.attributes,
                )
                identity[e, i], success[e, i] = result["toy_identity"], result["edit_success"]
        return {"identity": identity, "edit_success": success}

    def reference(self) -> dict[str, list]:
        """The denominator of "share of the way": clean edits and edits of another person's photo (the
        next identity's), read against each source, without any attacker."""
        clean = self.scores("clean__none", self.sources)
        another = self.scores("another_person__none", np.roll(self.sources, 1, axis=0))
        return {"clean": clean["identity"].tolist(), "another_person": another["identity"].tolist()}

    # -- one cell --------------------------------------------------------------------------------------
    def values(self, cell: Cell) -> dict:
        from ..metrics.pixel import psnr, ssim

        attacker = parse_attacker(cell.attacker)
        budget = cell.budget
        protected = self.protected(cell.method, budget)
        noise = self.protected(CONTROL, budget)
        state = self.attacker_state(attacker, cell.method, budget)
        # the remover is the method's own; every other attacker is the same for all methods
        scope = attacker.label + (f"~{cell.method}@{budget:g}" if attacker.needs == "protection" else "")
        after = {
            "method": self.attacked(f"{cell.method}@{budget:g}", protected, attacker, state, scope),
            "noise": self.attacked(f"noise@{budget:g}", noise, attacker, state, scope),
            "clean": self.attacked("clean", self.sources, attacker, state, scope),
        }
        keys = {
            "method": f"{cell.method}@{budget:g}__{scope}",
            "noise": f"noise@{budget:g}__{scope}",
            "clean": f"clean__{scope}",
        }
        values = {name: {k: v.tolist() for k, v in self.scores(keys[name], after[name]).items()} for name in after}
        values["psnr_input"] = [psnr(p, s) for p, s in zip(protected, self.sources, strict=True)]
        values["attack_cost_psnr"] = [psnr(a, s) for a, s in zip(after["clean"], self.sources, strict=True)]
        values["attack_cost_ssim"] = [ssim(a, s) for a, s in zip(after["clean"], self.sources, strict=True)]
        info = dict(getattr(state, "info", {}) or {})
        return {"values": values, "attacker_info": info}
