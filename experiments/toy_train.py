"""Train the toy editor (a tiny FLUX.1-Kontext) and the attribute reader from a seed, on CPU.

Stages (each one seeded; ``--resume`` reuses a stage already finished in ``--work``):
  1. VAE: reconstruction of toy-world renders (training identities only), L1 + L2 + image-gradient
     loss weighted on the face (x3) and the eyes (x8), a small KL term; then shift/scale are set so
     that the latents have zero mean and unit variance.
  2. Reader: a small CNN on renders and on VAE reconstructions of them (all 300 identities: it is
     the measuring instrument, not part of the editor).
  3. Transformer (VAE and text encoders frozen): flow matching on the target tokens with the source
     as Kontext context tokens, pairs (source, edit prompt, exact ground-truth edit) of the 200
     training identities.
Then the editor is saved with ``FluxKontextPipeline(...).save_pretrained`` and the reader beside it.

    python -m experiments.toy_train                 # full run (28 min on 2 CPU cores, measured; docs/TOY.md)
    python -m experiments.toy_train --smoke --out /tmp/e --reader-out /tmp/r --work /tmp/w
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from decontext.editors.flux_kontext import pack_latents, vae_latents
from decontext.editors.models import component_dir
from decontext.toy import world
from decontext.toy.evaluate import psnr
from decontext.toy.model import (
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    MAX_SEQUENCE_LENGTH,
    PROMPTS_FILE,
    READER_DIR,
    RESOLUTION,
    SETTINGS_FILE,
    TOY_CONFIG,
    build_components,
    decode,
    encode_prompts,
    inference_shift,
    to_model_space,
    toy_config,
    transformer_velocity,
)
from decontext.toy.names import repo_path, toy_editor_dir
from decontext.toy.reader import ReaderNet, ToyReader, score_reads
from decontext.toy.worlds import DEFAULT_WORLD, WORLDS, get_world, reader_heads

_T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - _T0:7.1f}s] {msg}", flush=True)


def make_scenes(identities: list, n: int, seed: int, extras: float, w=world) -> list:
    rng = np.random.default_rng(seed)
    picks = rng.integers(len(identities), size=n)
    return [w.sample_scene(identities[int(k)], seed=seed * 1_000_003 + i, extras=extras) for i, k in enumerate(picks)]


def render_all(scenes, w=world) -> np.ndarray:
    return np.stack([w.render(s) for s in scenes])


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, steps - warmup)
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))


class EMATrainer:
    """The denoiser training loop's bookkeeping, shared by the toy editors: AdamW (weight decay 0.01,
    betas 0.9 / 0.99), ``lr_at``'s warm-up + cosine schedule, gradient clipping at 1, an EMA of the
    weights (decay ramping up to ``ema_decay``) that replaces them at ``finish``, a running-loss log."""

    def __init__(self, model, steps: int, lr: float, ema_decay: float, label: str):
        self.model, self.steps, self.lr, self.ema_decay, self.label = model, steps, lr, ema_decay, label
        self.ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.train()
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
        self.running = None

    def begin(self, step: int) -> None:
        for g in self.opt.param_groups:
            g["lr"] = lr_at(step, self.steps, self.lr, warmup=min(100, self.steps // 10 + 1))

    def update(self, step: int, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        d = min(self.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in self.model.state_dict().items():
                self.ema[k].mul_(d).add_(v.detach(), alpha=1 - d)
        value = loss.item()
        self.running = value if self.running is None else 0.98 * self.running + 0.02 * value
        if step % 50 == 0 or step == self.steps - 1:
            log(
                f"{self.label} step {step}/{self.steps} loss {value:.4f} (avg {self.running:.4f}) "
                f"lr {self.opt.param_groups[0]['lr']:.2e}"
            )

    def finish(self) -> dict:
        self.model.load_state_dict(self.ema)
        self.model.eval()
        return {"final_loss_avg": self.running}


@torch.no_grad()
def reconstruct(vae, images: np.ndarray, batch: int = 200) -> np.ndarray:
    out = []
    for i in range(0, len(images), batch):
        out.append(decode_uint8(vae, vae_latents(vae, to_model_space(images[i : i + batch]))))
    return np.concatenate(out)


def decode_uint8(vae, z):
    from decontext.toy.model import to_uint8

    return to_uint8(decode(vae, z))


# ----------------------------------------------------------------------------------------------- VAE
def train_vae(
    vae,
    steps: int,
    batch: int,
    n_images: int,
    seed: int,
    lr: float = 2e-3,
    n_check: int = 300,
    center: bool = True,
    w=world,
) -> dict:
    """Reconstruction training; then the latent normalisation: ``center`` (FLUX) sets shift = mean and
    scale = 1 / std, otherwise (Stable Diffusion) scale = 1 / std and no shift."""
    torch.manual_seed(seed)
    scenes = make_scenes(w.train_identities(), n_images, seed=seed + 11, extras=0.35, w=w)
    images = render_all(scenes, w)
    weights = np.stack([w.importance(s) for s in scenes]).astype(np.uint8)
    log(f"vae: {n_images} training renders ready")
    rng = np.random.default_rng(seed + 12)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup=min(100, steps // 10 + 1))
        idx = rng.integers(n_images, size=batch)
        x = to_model_space(images[idx])
        weight = torch.from_numpy(weights[idx]).float()[:, None]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        err = rec - x
        wn = weight / weight.mean()
        l1 = (wn * err.abs()).mean()
        l2 = (wn * err.pow(2)).mean()
        gx = (err[..., :, 1:] - err[..., :, :-1]).abs() * wn[..., :, 1:]
        gy = (err[..., 1:, :] - err[..., :-1, :]).abs() * wn[..., 1:, :]
        grad = gx.mean() + gy.mean()
        kl = 0.5 * (post.mean.pow(2) + post.var - 1.0 - post.logvar).mean()
        loss = l1 + 2.0 * l2 + 0.5 * grad + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(
                f"vae step {step}/{steps} loss {loss.item():.4f} l1 {l1.item():.4f} "
                f"l2 {l2.item():.5f} kl {kl.item():.2f}"
            )
    vae.eval()
    # latent normalisation (Kontext applies (z - shift) * scale before the transformer; SD only scales)
    with torch.no_grad():
        z = torch.cat(
            [
                vae.encode(to_model_space(images[i : i + 256])).latent_dist.mode()
                for i in range(0, min(n_images, 1024), 256)
            ]
        )
    shift, scale = (float(z.mean()) if center else 0.0), float(1.0 / z.std())
    vae.register_to_config(shift_factor=round(shift, 5) if center else None, scaling_factor=round(scale, 5))
    held = render_all(make_scenes(w.eval_identities(), n_check, seed=seed + 13, extras=0.35, w=w), w)
    stats = {
        "psnr_heldout": psnr(reconstruct(vae, held), held),
        "shift_factor": vae.config.shift_factor,
        "scaling_factor": vae.config.scaling_factor,
    }
    log(f"vae done: held-out PSNR {stats['psnr_heldout']:.2f} dB, shift {shift:.4f}, scale {scale:.4f}")
    return stats


# -------------------------------------------------------------------------------------------- reader
def _label_array(scenes, w=world) -> dict[str, np.ndarray]:
    labs = [w.labels(s) for s in scenes]
    return {k: np.array([lab[k] for lab in labs]) for k in reader_heads(w)}


def train_reader(
    vae, steps: int, batch: int, n_images: int, n_recon: int, seed: int, lr: float = 1e-3, n_check: int = 600, w=world
) -> tuple[ToyReader, dict]:
    torch.manual_seed(seed + 20)
    all_ids = w.Identity.everyone()
    scenes = make_scenes(all_ids, n_images, seed=seed + 21, extras=0.5, w=w)
    images = render_all(scenes, w)
    recon = reconstruct(vae, images[:n_recon])
    data = np.concatenate([images, recon])
    labels = {k: torch.from_numpy(np.concatenate([v, v[:n_recon]])) for k, v in _label_array(scenes, w).items()}
    log(f"reader: {len(images)} renders + {len(recon)} VAE reconstructions ready")
    heads = reader_heads(w)
    net = ReaderNet(heads=heads)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    rng = np.random.default_rng(seed + 22)
    gen = torch.Generator().manual_seed(seed + 23)
    net.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup=50)
        idx = rng.integers(len(data), size=batch)
        x = to_model_space(data[idx])
        sigma = torch.rand(batch, 1, 1, 1, generator=gen) * 0.08 * (torch.rand(batch, 1, 1, 1, generator=gen) < 0.5)
        x = x + sigma * torch.randn(x.shape, generator=gen)
        logits = net(x)
        loss = sum(F.cross_entropy(logits[k], labels[k][idx]) for k in heads)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"reader step {step}/{steps} loss {loss.item():.4f}")
    reader = ToyReader(net, w.NAME)
    test_scenes = make_scenes(all_ids, n_check, seed=seed + 24, extras=0.5, w=w)
    test = render_all(test_scenes, w)
    truth = _label_array(test_scenes, w)
    acc = {}
    for name, imgs in (("render", test), ("vae", reconstruct(vae, test))):
        reads = reader.read(imgs)
        acc[name] = {k: float(np.mean(reads[k] == truth[k])) for k in heads}
    log(f"reader accuracy: {json.dumps(acc)}")
    return reader, acc


def reuse_vae_and_reader(editor_dir: Path, vae, work: Path, info: dict) -> None:
    """Start a new editor from a trained editor's VAE and its reader (the world is the same); the two
    stages are seeded, so this equals re-running them with that editor's seed."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    settings = json.loads((editor_dir / SETTINGS_FILE).read_text())
    trained = AutoencoderKL.from_pretrained(str(component_dir(editor_dir, "vae")))
    vae.load_state_dict(trained.state_dict())
    vae.register_to_config(shift_factor=trained.config.shift_factor, scaling_factor=trained.config.scaling_factor)
    reader_dir = repo_path(settings.get("reader"), READER_DIR)
    ToyReader.load(reader_dir).save(work / "reader", {"from": str(reader_dir)})
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(work / "vae.safetensors"))
    info["vae"] = {
        "shift_factor": trained.config.shift_factor,
        "scaling_factor": trained.config.scaling_factor,
        **settings.get("training", {}).get("vae", {}),
    }
    info["reader_from"] = str(reader_dir)
    log(f"vae and reader reused from {editor_dir} and {reader_dir}")


# ----------------------------------------------------------------------------------------- editor
def kontext_tokens(vae, x: torch.Tensor) -> torch.Tensor:
    """What the toy Kontext trains on: VAE posterior mode, shift/scale, the pipeline's 2x2 packing."""
    return pack_latents(vae_latents(vae, x))


@torch.no_grad()
def editor_pairs(vae, n_sources: int, seed: int, extras: float = 0.2, encode=kontext_tokens, w=world):
    """``encode(vae, images in [-1, 1])`` of n_sources training scenes and of their 6 ground-truth
    edits: (N, ...) and (N, 6, ...); default the toy Kontext's packed tokens."""
    scenes = make_scenes(w.train_identities(), n_sources, seed=seed + 31, extras=extras, w=w)
    src, tgt = [], []
    chunk = 64
    for i in range(0, n_sources, chunk):
        part = scenes[i : i + chunk]
        imgs = [w.render(s) for s in part] + [w.render(w.apply_edit(s, e)) for e in w.EDITS for s in part]
        z = encode(vae, to_model_space(np.stack(imgs)))
        n = len(part)
        src.append(z[:n])
        tgt.append(z[n:].view(len(w.EDITS), n, *z.shape[1:]).transpose(0, 1))
    return torch.cat(src), torch.cat(tgt)


def prompt_pool(w=world):
    """The toy prompt pool and, per edit, the indices of its phrasings."""
    from decontext.prompts import load_prompts

    pool = load_prompts(PROMPTS_FILE)
    by_edit = {e: [p.index for p in pool if p.category == e] for e in w.EDITS}
    missing = [e for e, v in by_edit.items() if not v]
    if missing:
        raise ValueError(f"{PROMPTS_FILE}: no prompt for edits {missing}")
    return pool, by_edit


def prompt_table(components, w=world):
    """``prompt_pool()`` plus every prompt's embeddings, as the pipeline encodes them."""
    pool, by_edit = prompt_pool(w)
    embeds, pooled = encode_prompts(components, [p.text for p in pool], MAX_SEQUENCE_LENGTH)
    return pool, by_edit, embeds, pooled


TIMESTEP_SAMPLERS = ("shifted_uniform", "logit_normal")

# The shipped versions' recipes (decontext.toy.names.TOY_EDITORS; docs/TOY.md). The v1 versions share the
# VAE and reader stages (same world, same seed); toy-v3 trains both on its own world.
RECIPES = {
    "toy-v1": {},
    # closer to how FLUX.1-Kontext was made: FLUX's logit-normal timestep density with the resolution
    # shift, a text-to-image base model first (Kontext starts from FLUX.1 [dev]), and text-to-image
    # steps kept in the editing mixture (the Kontext pipeline also generates without an image)
    "toy-v2": {"timesteps": "logit_normal", "base_steps": 1000, "t2i_share": 0.2},
    # LABELLED EXPLICIT BIAS: toy-v2 plus, below sigma 0.8, another scene as context in training, so that
    # identity can only be read from the context in the high-noise steps (the paper's premise, built in)
    "toy-v2-early": {"timesteps": "logit_normal", "base_steps": 1000, "t2i_share": 0.2, "late_swap_sigma": 0.8},
    # toy-v2 with a 2x VAE: a 64 px face spans 256 tokens instead of 64, as a higher resolution would give
    # (issue 11's candidate c6); batch 12 keeps the training in the 60-minute budget (4x tokens per sample);
    # the shipped reader is kept as the measuring instrument (the world did not change)
    "toy-v2-fine": {
        "timesteps": "logit_normal",
        "base_steps": 1000,
        "t2i_share": 0.2,
        "vae_blocks": 2,
        "batch": 12,
        "reader_from": READER_DIR,
    },
    # world v3 (identity is shape, colour is nuisance; issue 34) with toy-v2-fine's recipe, the best unbiased
    # one so far: FLUX's timestep density, a text-to-image base, 256 tokens per image; no timestep bias;
    # its own reader (another world), trained 3x longer than v1's (shapes are read more slowly than colours:
    # after 500 steps the first v3 reader read noses with 0.80 accuracy)
    "toy-v3": {
        "world": "v3",
        "timesteps": "logit_normal",
        "base_steps": 1000,
        "t2i_share": 0.2,
        "vae_blocks": 2,
        "batch": 12,
        "reader_steps": 1500,
    },
}


def training_sigmas(kind: str, shift: float, batch: int, gen: torch.Generator) -> torch.Tensor:
    """Noise levels of a training batch: u in (0, 1), then the resolution shift the pipeline samples with.

    ``shifted_uniform`` (toy v1): u ~ U(0, 1). ``logit_normal``: u = sigmoid(n), n ~ N(0, 1), the
    timestep density FLUX / SD3 train with (more weight on the middle of the path), followed by the
    same resolution-dependent shift exp(mu) as at inference.
    """
    if kind == "shifted_uniform":
        u = torch.rand(batch, generator=gen)
    elif kind == "logit_normal":
        u = torch.sigmoid(torch.randn(batch, generator=gen))
    else:
        raise ValueError(f"unknown timestep sampler {kind!r}: {TIMESTEP_SAMPLERS}")
    return shift * u / (1 + (shift - 1) * u)


def swap_context(src: torch.Tensor, idx: np.ndarray, swap: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Context tokens of a batch where the samples flagged in ``swap`` (bool, per sample) get another
    source scene (a different index, so almost always another person) instead of their own."""
    others = (idx + rng.integers(1, len(src), size=len(idx))) % len(src)
    return torch.where(swap[:, None, None], src[others], src[idx])


def swap_late_context(
    src: torch.Tensor, idx: np.ndarray, sigma: torch.Tensor, below: float, rng: np.random.Generator
) -> torch.Tensor:
    """Every sample with noise level < ``below`` gets another source scene as context."""
    return swap_context(src, idx, sigma < below, rng)


def train_transformer(
    components,
    src,
    tgt,
    steps: int,
    batch: int,
    seed: int,
    lr: float = 8e-4,
    ema_decay: float = 0.995,
    timesteps: str = "shifted_uniform",
    t2i_share: float = 0.0,
    late_swap_sigma: float | None = None,
    mismatch_share: float = 0.0,
    label: str = "transformer",
    w=world,
):
    """Flow matching on the target tokens with the source as Kontext context.

    ``t2i_share``: the share of steps trained as text-to-image (no context tokens, the Kontext
    pipeline without an image); 1.0 = a base model with no context at all. ``late_swap_sigma``
    (an explicit inductive bias, only for labelled variants): samples whose noise level is below it get
    another training scene as context, so below that level the context carries no identity and the
    model must keep the identity already present in x_t. ``mismatch_share`` (a data bias with no noise
    level in its rule, labelled variants only): that share of the in-context samples, drawn per sample
    at every noise level, gets another scene as context, so the context is not always to be trusted and
    the model must weigh it against what x_t already shows.
    """
    torch.manual_seed(seed + 40)
    transformer, scheduler = components["transformer"], components["scheduler"]
    pool, by_edit, embeds, pooled = prompt_table(components, w)
    shift = inference_shift(scheduler, src.shape[1])
    rng = np.random.default_rng(seed + 41)
    gen = torch.Generator().manual_seed(seed + 42)
    trainer = EMATrainer(transformer, steps, lr, ema_decay, label)
    for step in range(steps):
        trainer.begin(step)
        idx = rng.integers(len(src), size=batch)
        edits = rng.integers(len(w.EDITS), size=batch)
        prompts = np.array([by_edit[w.EDITS[e]][rng.integers(len(by_edit[w.EDITS[e]]))] for e in edits])
        x0 = tgt[idx, edits]
        ctx = src[idx]
        noise = torch.randn(x0.shape, generator=gen)
        sigma = training_sigmas(timesteps, shift, batch, gen)
        if t2i_share > 0 and (t2i_share >= 1 or rng.random() < t2i_share):
            ctx = ctx[:, :0]
        elif late_swap_sigma is not None:
            ctx = swap_late_context(src, idx, sigma, late_swap_sigma, rng)
        elif mismatch_share > 0:
            ctx = swap_context(src, idx, torch.from_numpy(rng.random(batch) < mismatch_share), rng)
        xt = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
        guidance = 1.0 + 3.0 * torch.rand(batch, generator=gen)
        pred = transformer_velocity(transformer, xt, ctx, sigma, guidance, embeds[prompts], pooled[prompts])
        trainer.update(step, F.mse_loss(pred, noise - x0))
    return trainer.finish()


@torch.no_grad()
def quick_eval(components, reader: ToyReader, n_identities: int = 12, seed: int = 1234, w=world) -> dict:
    """Clean-edit identity and edit success on a few held-out identities (all six edits), through the
    stock pipeline call of ``decontext.toy.evaluate``."""
    from diffusers import FluxKontextPipeline

    from decontext.toy.evaluate import run_edits

    pipe = FluxKontextPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    pool, by_edit = prompt_pool(w)  # the pipeline encodes the prompts itself
    ids = w.eval_identities()[:: max(1, len(w.eval_identities()) // n_identities)][:n_identities]
    src_imgs = render_all([w.sample_scene(i, seed=seed + k) for k, i in enumerate(ids)], w)
    src_reads = reader.read(src_imgs)
    ident, success = [], []
    for e in w.EDITS:
        out = run_edits(
            pipe, list(src_imgs), [pool[by_edit[e][0]].text] * len(ids), DEFAULT_STEPS, DEFAULT_GUIDANCE, seed
        )
        reads = reader.read(out)
        for j in range(len(ids)):
            s = score_reads(
                {k: v[j] for k, v in src_reads.items()}, {k: v[j] for k, v in reads.items()}, e, reader.attributes
            )
            ident.append(s["toy_identity"])
            success.append(s["edit_success"])
    return {"toy_identity": float(np.mean(ident)), "edit_success": float(np.mean(success)), "n": len(ident)}


def write_editor_folder(pipe, out: Path, settings: dict, share_with: Path | None = None) -> None:
    """A toy editor folder: the pipeline in diffusers layout (safetensors) + its ``decontext_toy.json``.
    Components byte-identical to those of ``share_with`` (a sibling folder, e.g. toy-v1's) are not kept
    twice: the folder's settings name it under ``shared_components`` and the loader reads them there
    (``decontext.editors.models``)."""
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(out), safe_serialization=True)
    if (
        share_with is not None
        and share_with.resolve() != out.resolve()
        and share_with.parent.resolve() == out.parent.resolve()
    ):
        shared = store_once(out, share_with)
        if shared:
            settings = {**settings, "shared_components": {name: share_with.name for name in shared}}
    (out / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")


def store_once(out: Path, home: Path) -> list[str]:
    """Remove the components of ``out`` that are byte-identical to ``home``'s; their names."""
    import filecmp
    import shutil

    shared = []
    for component in sorted(p.name for p in out.iterdir() if p.is_dir()):
        mine, theirs = out / component, home / component
        if not theirs.is_dir():
            continue
        names = sorted(p.name for p in mine.iterdir())
        if names == sorted(p.name for p in theirs.iterdir()) and all(
            filecmp.cmp(mine / n, theirs / n, shallow=False) for n in names
        ):
            shutil.rmtree(mine)
            shared.append(component)
    return shared


def save_editor(components, out: Path, info: dict, world_name: str = "v1", reader_dir: Path = READER_DIR) -> None:
    from diffusers import FluxKontextPipeline

    from decontext.assets import data_dir

    try:  # a reader inside the package's data folder is named as data/..., like every shipped setting
        reader_setting = "data/" + Path(reader_dir).resolve().relative_to(data_dir().resolve()).as_posix()
    except ValueError:
        reader_setting = str(Path(reader_dir).resolve())

    settings = {
        "resolution": RESOLUTION,
        "height": RESOLUTION,
        "width": RESOLUTION,
        "max_area": RESOLUTION * RESOLUTION,
        "_auto_resize": False,
        "num_inference_steps": DEFAULT_STEPS,
        "guidance_scale": DEFAULT_GUIDANCE,
        "max_sequence_length": MAX_SEQUENCE_LENGTH,
        "prompts_file": "data/prompts/toy_prompts.txt",
        "reader": reader_setting,
        "training": info,
    }
    if world_name != "v1":
        settings["world"] = world_name
    write_editor_folder(FluxKontextPipeline(**components), out, settings, share_with=toy_editor_dir("toy-v1"))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--version",
        choices=sorted(RECIPES),
        default="toy-v1",
        help="which shipped version's recipe (sets the transformer options below and the default --out / --work)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--world",
        choices=sorted(WORLDS),
        default="v1",
        help="the toy world to train on (v1: identity is colour; v3: identity is shape)",
    )
    ap.add_argument("--out", type=Path, help="editor folder (default: the version's, decontext.toy.names)")
    ap.add_argument(
        "--reader-out",
        type=Path,
        help="reader folder (default: data/toy_reader, or data/toy_reader_<world> for another world)",
    )
    ap.add_argument(
        "--work",
        type=Path,
        help="stage checkpoints, for --resume (default: runs/toy_train, or runs/toy_train_<version>)",
    )
    ap.add_argument("--resume", action="store_true", help="reuse stages already finished in --work")
    ap.add_argument("--vae-steps", type=int, default=500)
    ap.add_argument("--vae-batch", type=int, default=24)
    ap.add_argument("--vae-images", type=int, default=12000)
    ap.add_argument("--reader-steps", type=int, default=500)
    ap.add_argument("--reader-batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=2000, help="transformer steps")
    ap.add_argument("--batch", type=int, default=24, help="transformer batch")
    ap.add_argument("--lr", type=float, default=8e-4)
    ap.add_argument("--sources", type=int, default=2400, help="training source scenes (x6 edits)")
    ap.add_argument(
        "--timesteps",
        choices=TIMESTEP_SAMPLERS,
        default="shifted_uniform",
        help="training noise-level density (v1: shifted_uniform)",
    )
    ap.add_argument(
        "--base-steps",
        type=int,
        default=0,
        help="first train a context-free text-to-image base for this many steps (as Kontext starts from FLUX.1 [dev])",
    )
    ap.add_argument(
        "--t2i-share",
        type=float,
        default=0.0,
        help="share of in-context training steps kept text-to-image (no context)",
    )
    ap.add_argument(
        "--late-swap-sigma",
        type=float,
        default=None,
        help="EXPLICIT BIAS (labelled variants only): below this noise level the context is another scene",
    )
    ap.add_argument(
        "--mismatch-share",
        type=float,
        default=0.0,
        help="DATA BIAS (labelled variants only): share of in-context samples, at every noise level, "
        "whose context is another scene",
    )
    ap.add_argument(
        "--vae-reader-from",
        type=Path,
        default=None,
        metavar="EDITOR_DIR",
        help="reuse the VAE of this trained toy editor folder and the reader named in its settings "
        "instead of training them",
    )
    ap.add_argument(
        "--reader-from",
        type=Path,
        default=None,
        metavar="READER_DIR",
        help="reuse this trained reader folder (e.g. data/toy_reader) instead of training one; "
        "the VAE is still trained",
    )
    ap.add_argument(
        "--transformer-from",
        type=Path,
        default=None,
        metavar="EDITOR_DIR",
        help="start the transformer from this trained toy editor's (same architecture) "
        "instead of from the seed: a fine-tune",
    )
    ap.add_argument(
        "--double-layers", type=int, default=TOY_CONFIG.num_layers, help="double-stream blocks (shipped versions: 2)"
    )
    ap.add_argument(
        "--single-layers",
        type=int,
        default=TOY_CONFIG.num_single_layers,
        help="single-stream blocks (shipped versions: 4)",
    )
    ap.add_argument(
        "--vae-blocks",
        type=int,
        default=len(TOY_CONFIG.vae_channels),
        help="VAE blocks: 3 = 4x down, 64 tokens per image (shipped versions); 2 = 2x down, 256 tokens per image",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="a few iterations of every stage (tests)")
    ap.add_argument(
        "--stages",
        default="vae,reader,transformer",
        help="stages to run (others must be finished in --work, or are skipped)",
    )
    ap.add_argument(
        "--stop-after", choices=("vae", "reader", "transformer"), help="stop after this stage (use --resume to go on)"
    )
    version = ap.parse_known_args(argv)[0].version
    recipe_work = Path("runs") / ("toy_train" if version == "toy-v1" else f"toy_train_{version}")
    ap.set_defaults(**RECIPES[version], out=toy_editor_dir(version), work=recipe_work)
    args = ap.parse_args(argv)
    w = get_world(args.world)
    if args.reader_out is None:
        args.reader_out = READER_DIR if args.world == "v1" else READER_DIR.with_name(f"toy_reader_{args.world}")
    if args.smoke:
        args.vae_steps, args.vae_batch, args.vae_images = 3, 4, 16
        args.reader_steps, args.reader_batch = 3, 8
        args.steps, args.batch, args.sources = 3, 4, 8
        args.base_steps = min(args.base_steps, 3)
    torch.set_num_threads(args.threads)
    from safetensors.torch import load_file, save_file

    args.work.mkdir(parents=True, exist_ok=True)
    info_path = args.work / "info.json"
    info = json.loads(info_path.read_text()) if (args.resume and info_path.exists()) else {}
    config = toy_config(args.double_layers, args.single_layers, args.vae_blocks)
    info.update(
        {
            "seed": args.seed,
            "world": args.world,
            "threads": args.threads,
            "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
        }
    )
    components = build_components(seed=args.seed, config=config)
    vae = components["vae"]
    for m in (components["text_encoder"], components["text_encoder_2"]):
        m.requires_grad_(False)
    info["params"] = {
        k: sum(p.numel() for p in components[k].parameters())
        for k in ("vae", "transformer", "text_encoder", "text_encoder_2")
    }
    log(f"parameters: {info['params']}")

    wanted = set(args.stages.split(","))

    def stage(name: str) -> bool:
        return args.resume and name in info.get("done", [])

    def skipped(name: str) -> bool:
        return name not in wanted and not stage(name)

    def finish(name: str, t0: float, **extra) -> None:
        # merge with the file on disk: stages may run in parallel processes sharing --work
        disk = json.loads(info_path.read_text()) if info_path.exists() else {}
        merged = {**disk, **{k: v for k, v in info.items() if k not in ("done", "seconds")}, **extra}
        merged["done"] = sorted(set(disk.get("done", [])) | set(info.get("done", [])) | {name})
        merged["seconds"] = {**disk.get("seconds", {}), **info.get("seconds", {}), name: round(time.time() - t0, 1)}
        info.clear()
        info.update(merged)
        info_path.write_text(json.dumps(info, indent=2) + "\n")

    # 1. VAE
    t0 = time.time()
    if args.vae_reader_from is not None:
        reuse_vae_and_reader(args.vae_reader_from, vae, args.work, info)
        finish("vae", t0, vae_from=str(args.vae_reader_from))
        finish("reader", t0, reader_from=info["reader_from"])
        args.resume = True
    if args.reader_from is not None:
        if args.vae_reader_from is not None:
            ap.error("--reader-from and --vae-reader-from both name a reader: give one")
        ToyReader.load(args.reader_from).save(args.work / "reader", {"from": str(args.reader_from)})
        info["reader_from"] = str(args.reader_from)
        finish("reader", time.time(), reader_from=str(args.reader_from))
        log(f"reader reused from {args.reader_from}")
    if stage("vae"):
        vae.load_state_dict(load_file(str(args.work / "vae.safetensors")))
        vae.register_to_config(shift_factor=info["vae"]["shift_factor"], scaling_factor=info["vae"]["scaling_factor"])
        log("vae: reused from --work")
    else:
        vstats = train_vae(
            vae, args.vae_steps, args.vae_batch, args.vae_images, args.seed, n_check=8 if args.smoke else 300, w=w
        )
        save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(args.work / "vae.safetensors"))
        finish("vae", t0, vae=vstats, vae_steps=args.vae_steps, vae_batch=args.vae_batch)
    if args.stop_after == "vae":
        return info
    vae.eval().requires_grad_(False)

    # 2. reader
    t0 = time.time()
    reader = None
    if skipped("reader"):
        log("reader: skipped")
    elif stage("reader") or args.reader_from is not None:
        reader = ToyReader.load(args.work / "reader")
        log("reader: reused from --work")
    else:
        n_img = 16 if args.smoke else 16000
        n_rec = 8 if args.smoke else 6000
        reader, acc = train_reader(
            vae, args.reader_steps, args.reader_batch, n_img, n_rec, args.seed, n_check=8 if args.smoke else 600, w=w
        )
        reader.save(args.work / "reader", {"accuracy": acc})
        finish("reader", t0, reader_accuracy=acc, reader_steps=args.reader_steps)
    if args.stop_after == "reader":
        return info

    # 3. transformer
    t0 = time.time()
    if skipped("transformer"):
        log("transformer: skipped")
        return info
    if stage("transformer"):
        components["transformer"].load_state_dict(load_file(str(args.work / "transformer.safetensors")))
        log("transformer: reused from --work")
    else:
        src, tgt = editor_pairs(vae, args.sources, args.seed, w=w)
        log(f"editor data: {tuple(src.shape)} sources, {tuple(tgt.shape)} targets; latent std {float(src.std()):.3f}")
        recipe = {
            "timesteps": args.timesteps,
            "base_steps": args.base_steps,
            "t2i_share": args.t2i_share,
            "late_swap_sigma": args.late_swap_sigma,
            "mismatch_share": args.mismatch_share,
        }
        if (
            args.world != DEFAULT_WORLD
        ):  # a folder naming no world is read as the default one, so v1 recipes stay as recorded
            recipe["world"] = args.world
        if (args.double_layers, args.single_layers, args.vae_blocks) != (
            TOY_CONFIG.num_layers,
            TOY_CONFIG.num_single_layers,
            len(TOY_CONFIG.vae_channels),
        ):
            recipe["architecture"] = {
                "double_layers": args.double_layers,
                "single_layers": args.single_layers,
                "vae_blocks": args.vae_blocks,
            }
        tstats = {}
        if args.transformer_from is not None:
            from diffusers import FluxTransformer2DModel

            start = FluxTransformer2DModel.from_pretrained(str(args.transformer_from / "transformer")).state_dict()
            components["transformer"].load_state_dict(start)  # raises on another architecture, naming the keys
            recipe["transformer_from"] = str(args.transformer_from)
            log(f"transformer: starts from {args.transformer_from}")
        if args.base_steps:
            tstats["base"] = train_transformer(
                components,
                src,
                tgt,
                args.base_steps,
                args.batch,
                args.seed + 1000,
                lr=args.lr,
                timesteps=args.timesteps,
                t2i_share=1.0,
                label="base (text-to-image)",
                w=w,
            )
        tstats.update(
            train_transformer(
                components,
                src,
                tgt,
                args.steps,
                args.batch,
                args.seed,
                lr=args.lr,
                timesteps=args.timesteps,
                t2i_share=args.t2i_share,
                late_swap_sigma=args.late_swap_sigma,
                mismatch_share=args.mismatch_share,
                w=w,
            )
        )
        info["recipe"] = recipe
        save_file(
            {k: v.contiguous() for k, v in components["transformer"].state_dict().items()},
            str(args.work / "transformer.safetensors"),
        )
        finish(
            "transformer", t0, transformer=tstats, steps=args.steps, batch=args.batch, lr=args.lr, sources=args.sources
        )
    if args.stop_after == "transformer":
        return info
    components["transformer"].eval().requires_grad_(False)
    if reader is None:
        return info

    if reader.world_name != args.world:
        raise SystemExit(f"the reader in {args.work / 'reader'} reads world {reader.world_name}, not {args.world}")
    q = quick_eval(components, reader, n_identities=2 if args.smoke else 12, w=w)
    log(f"quick held-out check: {q}")
    info["quick_eval"] = q
    info["train_seconds_total"] = round(sum(info.get("seconds", {}).values()), 1)
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    kept = (
        "seed",
        "params",
        "train_seconds_total",
        "quick_eval",
        "recipe",
        "vae_from",
        "reader_from",
        "batch",
        "lr",
        "sources",
    )
    save_editor(
        components,
        args.out,
        {k: info[k] for k in kept if k in info}
        | {
            "vae": info.get("vae"),
            "steps": info.get("steps"),
            "vae_steps": info.get("vae_steps"),
            "reader_steps": info.get("reader_steps"),
        },
        world_name=args.world,
        reader_dir=args.reader_out,
    )
    reused = info.get("reader_from")
    if reused is not None and Path(reused).resolve() == Path(args.reader_out).resolve():
        log(f"reader: {args.reader_out} is the reused reader itself; left as it is")
    else:
        reader.save(args.reader_out, {"accuracy": info.get("reader_accuracy")})
    log(
        f"saved editor to {args.out} and reader to {args.reader_out}; "
        f"training stages took {info['train_seconds_total']} s"
    )
    return info


if __name__ == "__main__":
    main()
