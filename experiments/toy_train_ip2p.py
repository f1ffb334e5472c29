"""Train the toy InstructPix2Pix (``--model toy-ip2p``) from a seed, on CPU: the second trained editor
of the toy world, of the UNet family DANP and TDAE were designed on, for measuring transfer.

Same world, same identity split, same edit prompts and ground-truth edits as the toy Kontext
(``experiments.toy_train``); its own parts, as a real InstructPix2Pix differs from FLUX.1-Kontext:
  1. VAE: a Stable-Diffusion-like ``AutoencoderKL`` (quant convs, scale only, no shift), trained
     with the toy Kontext's recipe (``train.train_vae``) from its own seed.
  2. UNet (VAE and the random CLIP text encoder frozen): ``UNet2DConditionModel`` with the source
     latent concatenated to the noisy latent on channels, epsilon prediction on SD's scaled-linear
     DDPM schedule (timesteps uniform in 0..999), and InstructPix2Pix's conditioning dropout (5% no
     text, 5% no image, 5% neither) so both guidance scales work.
The reader is the toy Kontext's (one instrument for every toy editor). The editor is saved with
``StableDiffusionInstructPix2PixPipeline(...).save_pretrained`` plus ``decontext_toy.json``.

    python -m experiments.toy_train_ip2p                    # full run (docs/TOY.md has the time)
    python -m experiments.toy_train_ip2p --smoke --out /tmp/e --work /tmp/w
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from decontext.editors.tiny import TinyIP2PConfig, tiny_ip2p_components
from decontext.toy import world
from decontext.toy.model import RESOLUTION
from decontext.toy.names import toy_editor_dir
from experiments.toy_train import EMATrainer, editor_pairs, log, prompt_pool, train_vae, write_editor_folder

# 64 px -> 16x16x4 latents (3 VAE blocks = 4x down); a two-level UNet (16 -> 8) with cross-attention
# at both levels and in the middle block.
TOY_IP2P_CONFIG = TinyIP2PConfig(
    unet_channels=(32, 64),
    down_blocks=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_blocks=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    heads=4,
    text_dim=64,
    text_layers=2,
    latent_channels=4,
    vae_channels=(16, 32, 64),
    vae_layers_per_block=1,
)
DEFAULT_STEPS = 20  # Euler-ancestral sampling steps of the edits
# Chosen after training on 30 held-out identities (docs/TOY.md): a higher image guidance than the real
# model's 1.5 keeps identity (0.863 -> 0.942) at a small cost in edit success (0.994 -> 0.967).
DEFAULT_GUIDANCE = 3.0  # text guidance
DEFAULT_IMAGE_GUIDANCE = 3.0  # image guidance
TEXT_TOKENS = 16  # CLIP tokens per prompt (SD: 77; the toy prompts are short, as the toy Kontext's 16 T5 tokens)
DROP = 0.05  # InstructPix2Pix's conditioning dropout: this share each of no text, no image, neither


def build_components(seed: int = 0) -> dict:
    """Fresh components of the toy InstructPix2Pix (the text encoder stays random and frozen)."""
    components = tiny_ip2p_components(TOY_IP2P_CONFIG, seed=seed + 500)
    components["text_encoder"].requires_grad_(False)
    components["tokenizer"].model_max_length = TEXT_TOKENS
    return components


def source_latents(vae, x: torch.Tensor) -> torch.Tensor:
    """What the pipeline feeds the UNet as the source image (and, scaled, the denoising target):
    the unscaled VAE posterior mode, (B, C, h, w)."""
    return vae.encode(x).latent_dist.mode()


@torch.no_grad()
def embed_prompts(components, texts: list[str]) -> torch.Tensor:
    """CLIP last hidden states, padded to the tokenizer's length, as the pipeline's ``_encode_prompt``."""
    tokenizer, encoder = components["tokenizer"], components["text_encoder"]
    ids = tokenizer(
        texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return encoder(ids)[0].float()


def drop_masks(batch: int, rng: np.random.Generator, share: float = DROP) -> tuple[torch.Tensor, torch.Tensor]:
    """(no_text, no_image) per sample: ``share`` text only, ``share`` image only, ``share`` both."""
    r = rng.random(batch)
    no_text = (r < share) | ((r >= 2 * share) & (r < 3 * share))
    no_image = (r >= share) & (r < 3 * share)
    return torch.from_numpy(no_text), torch.from_numpy(no_image)


def train_unet(
    components, src, tgt, steps: int, batch: int, seed: int, lr: float = 1e-3, ema_decay: float = 0.995
) -> dict:
    """Epsilon-prediction training of the UNet on (source, prompt, ground-truth edit) triples."""
    unet, scheduler, vae = components["unet"], components["scheduler"], components["vae"]
    torch.manual_seed(seed + 40)
    pool, by_edit = prompt_pool()
    embeds = embed_prompts(components, [p.text for p in pool])
    empty = embed_prompts(components, [""])[0]
    alphas = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32)
    scale = vae.config.scaling_factor
    rng = np.random.default_rng(seed + 41)
    gen = torch.Generator().manual_seed(seed + 42)
    trainer = EMATrainer(unet, steps, lr, ema_decay, "unet")
    for step in range(steps):
        trainer.begin(step)
        idx = rng.integers(len(src), size=batch)
        edits = rng.integers(len(world.EDITS), size=batch)
        prompts = [by_edit[world.EDITS[e]][rng.integers(len(by_edit[world.EDITS[e]]))] for e in edits]
        x0 = tgt[idx, edits] * scale
        source = src[idx]
        text = embeds[prompts]
        no_text, no_image = drop_masks(batch, rng)
        text = torch.where(no_text[:, None, None], empty.expand_as(text), text)
        source = torch.where(no_image[:, None, None, None], torch.zeros_like(source), source)
        t = torch.randint(len(alphas), (batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(torch.cat([x_t, source], dim=1), t, encoder_hidden_states=text, return_dict=False)[0]
        trainer.update(step, F.mse_loss(pred, noise))
    return trainer.finish()


def save_editor(components, out: Path, info: dict) -> None:
    from diffusers import StableDiffusionInstructPix2PixPipeline

    settings = {
        "resolution": RESOLUTION,
        "num_inference_steps": DEFAULT_STEPS,
        "guidance_scale": DEFAULT_GUIDANCE,
        "image_guidance_scale": DEFAULT_IMAGE_GUIDANCE,
        "prompts_file": "data/prompts/toy_prompts.txt",
        "reader": "data/toy_reader",
        "training": info,
    }
    write_editor_folder(StableDiffusionInstructPix2PixPipeline(**components), out, settings)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=toy_editor_dir("toy-ip2p"))
    ap.add_argument(
        "--work", type=Path, default=Path("runs") / "toy_train_ip2p", help="stage checkpoints, for --resume"
    )
    ap.add_argument("--resume", action="store_true", help="reuse the VAE stage if finished in --work")
    ap.add_argument("--vae-steps", type=int, default=500)
    ap.add_argument("--vae-batch", type=int, default=24)
    ap.add_argument("--vae-images", type=int, default=12000)
    ap.add_argument("--steps", type=int, default=2500, help="UNet steps")
    ap.add_argument("--batch", type=int, default=24, help="UNet batch")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--sources", type=int, default=2400, help="training source scenes (x6 edits)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="a few iterations of every stage (tests)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.vae_steps, args.vae_batch, args.vae_images = 3, 4, 16
        args.steps, args.batch, args.sources = 3, 4, 8
    torch.set_num_threads(args.threads)
    from safetensors.torch import load_file, save_file

    args.work.mkdir(parents=True, exist_ok=True)
    info_path = args.work / "info.json"
    info = json.loads(info_path.read_text()) if (args.resume and info_path.exists()) else {}
    info.update({"seed": args.seed, "threads": args.threads, "config": asdict(TOY_IP2P_CONFIG)})
    components = build_components(seed=args.seed)
    vae = components["vae"]
    info["params"] = {k: sum(p.numel() for p in components[k].parameters()) for k in ("vae", "unet", "text_encoder")}
    log(f"parameters: {info['params']}")
    seconds = info.setdefault("seconds", {})

    t0 = time.time()
    if args.resume and (args.work / "vae.safetensors").is_file() and "vae" in info:
        vae.load_state_dict(load_file(str(args.work / "vae.safetensors")))
        vae.register_to_config(shift_factor=None, scaling_factor=info["vae"]["scaling_factor"])
        log("vae: reused from --work")
    else:
        info["vae"] = train_vae(
            vae,
            args.vae_steps,
            args.vae_batch,
            args.vae_images,
            args.seed + 300,
            center=False,
            n_check=8 if args.smoke else 300,
        )
        save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(args.work / "vae.safetensors"))
        seconds["vae"] = round(time.time() - t0, 1)
        info_path.write_text(json.dumps(info, indent=2) + "\n")
    vae.eval().requires_grad_(False)

    t0 = time.time()
    src, tgt = editor_pairs(vae, args.sources, args.seed, encode=source_latents)  # the toy Kontext's scenes
    log(
        f"editor data: {tuple(src.shape)} sources, {tuple(tgt.shape)} targets; "
        f"scaled latent std {float(src.std() * vae.config.scaling_factor):.3f}"
    )
    info["unet"] = train_unet(components, src, tgt, args.steps, args.batch, args.seed, lr=args.lr)
    info.update(steps=args.steps, batch=args.batch, lr=args.lr, sources=args.sources)
    seconds["unet"] = round(time.time() - t0, 1)
    info["train_seconds_total"] = round(sum(seconds.values()), 1)
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    save_editor(
        components,
        args.out,
        {
            k: info[k]
            for k in ("seed", "params", "vae", "steps", "batch", "lr", "sources", "seconds", "train_seconds_total")
        },
    )
    log(f"saved editor to {args.out}; training stages took {info['train_seconds_total']} s")
    return info


if __name__ == "__main__":
    main()
