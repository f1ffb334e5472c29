"""The toy editor's architecture: a tiny FLUX.1-Kontext built by ``decontext.editors.tiny`` and the
latent plumbing of ``decontext.editors.flux_kontext`` (the same functions the attack path uses: VAE
posterior mode, shift/scale, the pipeline's 2x2 packing, context ids with axis 0 = 1), for training.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from decontext.editors.flux_kontext import joint_velocity, latent_ids
from decontext.editors.tiny import BASE_WORDS, TinyKontextConfig, tiny_kontext_components
from decontext.toy.names import DATA, READER_DIR, toy_editor_dir  # noqa: F401 (READER_DIR re-exported)

EDITOR_DIR = toy_editor_dir("toy")  # the embedded default (``--model toy``)
PROMPTS_FILE = DATA / "prompts" / "toy_prompts.txt"
SETTINGS_FILE = "decontext_toy.json"

# 64 px images -> 16x16x4 latents (3 VAE blocks = 4x down) -> 8x8 = 64 packed tokens of 16 channels.
TOY_CONFIG = TinyKontextConfig(
    num_layers=2,
    num_single_layers=4,
    num_attention_heads=4,
    attention_head_dim=32,
    axes_dims_rope=(8, 12, 12),
    text_dim=64,
    pooled_dim=64,
    latent_channels=4,
    vae_channels=(16, 32, 64),
    vae_layers_per_block=1,
    guidance_embeds=True,
    max_text_tokens=16,
)
RESOLUTION = 64
MAX_SEQUENCE_LENGTH = 16
DEFAULT_STEPS = 12
DEFAULT_GUIDANCE = 2.5


VAE_CHANNELS = (16, 32, 64)  # per VAE block; each block after the first halves the size


def toy_config(
    double_layers: int = TOY_CONFIG.num_layers,
    single_layers: int = TOY_CONFIG.num_single_layers,
    vae_blocks: int = len(TOY_CONFIG.vae_channels),
) -> TinyKontextConfig:
    """The toy architecture with another depth or VAE: ``vae_blocks`` 3 = 4x down (64 packed tokens per
    64 px image, every shipped version), 2 = 2x down (256 tokens: a face spans 4x more tokens, as a
    higher resolution would give)."""
    if double_layers < 1 or single_layers < 1:
        raise ValueError(
            f"the toy needs at least one double and one single block (got {double_layers} + {single_layers})"
        )
    if not 1 <= vae_blocks <= len(VAE_CHANNELS):
        raise ValueError(f"vae_blocks must be 1..{len(VAE_CHANNELS)} (got {vae_blocks})")
    return replace(
        TOY_CONFIG, num_layers=double_layers, num_single_layers=single_layers, vae_channels=VAE_CHANNELS[:vae_blocks]
    )


def build_components(seed: int = 0, config: TinyKontextConfig = TOY_CONFIG) -> dict:
    """Fresh (untrained) components of the toy editor; text encoders stay random and frozen."""
    return tiny_kontext_components(config, seed=seed, words=BASE_WORDS)


def to_model_space(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1], as the pipeline's image processor does."""
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3), rounding like the pipeline's postprocess."""
    return (x.clamp(-1, 1).add(1).mul(127.5)).round().byte().permute(0, 2, 3, 1).numpy()


def decode(vae, z: torch.Tensor) -> torch.Tensor:
    return vae.decode(z / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)).sample


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Tokens of a latent of size (h, w) back to (B, C, h, w), via the pipeline's ``_unpack_latents``."""
    from diffusers import FluxKontextPipeline

    # _unpack_latents takes pixel sizes and the VAE scale factor; scale 1 maps latent h, w through unchanged
    return FluxKontextPipeline._unpack_latents(tokens, h, w, 1)


def inference_shift(scheduler, seq_len: int) -> float:
    """The time shift exp(mu) that ``FluxKontextPipeline`` applies for ``seq_len`` target tokens (diffusers'
    own ``calculate_shift`` with the scheduler's configuration)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    cfg = scheduler.config
    return math.exp(
        calculate_shift(seq_len, cfg.base_image_seq_len, cfg.max_image_seq_len, cfg.base_shift, cfg.max_shift)
    )


@torch.no_grad()
def encode_prompts(components: dict, prompts: list[str], max_sequence_length: int = MAX_SEQUENCE_LENGTH):
    """(T5 embeddings, pooled CLIP embeddings) from ``FluxKontextPipeline.encode_prompt`` itself."""
    from diffusers import FluxKontextPipeline

    pipe = FluxKontextPipeline(**components)
    embeds, pooled, _ = pipe.encode_prompt(prompt=list(prompts), prompt_2=None, max_sequence_length=max_sequence_length)
    return embeds.float(), pooled.float()


def transformer_velocity(transformer, target_tokens, context_tokens, sigma, guidance, embeds, pooled):
    """One Kontext transformer call on square latents (the editor's ``joint_velocity``), trainable;
    ``context_tokens`` may be empty (B, 0, C)."""
    n = target_tokens.shape[1]
    lat = 2 * int(round(math.sqrt(n)))
    # no context tokens = a text-to-image call (FluxKontextPipeline without an image)
    context_ids = latent_ids(lat, lat, True) if context_tokens.shape[1] else latent_ids(lat, lat, True)[:0]
    return joint_velocity(
        transformer,
        target_tokens,
        latent_ids(lat, lat, False),
        context_tokens,
        context_ids,
        embeds,
        pooled,
        sigma,
        guidance,
    )
