"""Offline builders of small editors from config objects: real diffusers / transformers classes with
random (seeded) weights and tokenizers made in memory. Used by the tests, the benchmarks, the
``--model tiny`` smoke path and as the starting point of the trained toy editor.

Nothing here downloads anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from tokenizers.pre_tokenizers import ByteLevel

# Words that get a single token in the offline tokenizers; anything else falls back to characters.
BASE_WORDS = (
    "a an the this that person man woman face make give put add place turn change into with and of on in at "
    "to their them his her its it is are be look looks like hat cap glasses sunglasses smile smiling laugh "
    "frown sad angry surprised background blue green red yellow white black grey gray brown blonde pink "
    "purple orange hair beard old older young younger bald curly long short style photo picture scene "
    "beach city forest snow night street wear wearing hold holding remove keep same".split()
)
_WORD = re.compile(r"[a-z]+")


def clip_tokenizer(words: tuple[str, ...] | list[str] = BASE_WORDS):
    """A byte-level BPE ``CLIPTokenizer`` whose merges spell out each word of ``words``.

    Every byte is in the vocabulary, so any text tokenizes; listed words become one token each.
    """
    from transformers import CLIPTokenizer

    alphabet = sorted(ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for ch in alphabet:
            vocab.setdefault(ch + suffix, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in sorted(set(w.lower() for w in words)):
        if len(word) < 2:
            continue
        current = word[0]
        for i, ch in enumerate(word[1:]):
            nxt = ch + ("</w>" if i == len(word) - 2 else "")
            merged = current + nxt
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append((current, nxt))
            current = merged
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def t5_tokenizer(words: tuple[str, ...] | list[str] = BASE_WORDS):
    """A small Unigram ``T5Tokenizer``: whole words, then single characters as the fallback."""
    from transformers import T5Tokenizer

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    seen = {p for p, _ in pieces}
    for word in sorted(set(w.lower() for w in words)):
        for piece in ("\u2581" + word,):
            if piece not in seen:
                pieces.append((piece, -1.0))
                seen.add(piece)
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-()/&ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        if ch not in seen:
            pieces.append((ch, -6.0))
            seen.add(ch)
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


@dataclass(frozen=True)
class TinyKontextConfig:
    """Sizes of a tiny FLUX.1-Kontext. Defaults are small enough for CPU tests at 512 px."""

    num_layers: int = 2  # double-stream blocks
    num_single_layers: int = 4
    num_attention_heads: int = 2
    attention_head_dim: int = 16  # must equal sum(axes_dims_rope)
    axes_dims_rope: tuple[int, int, int] = (4, 6, 6)
    text_dim: int = 32  # T5 d_model = joint_attention_dim
    pooled_dim: int = 32  # CLIP hidden = pooled_projection_dim
    latent_channels: int = 16
    vae_channels: tuple[int, ...] = (8, 8, 16, 16)  # 4 blocks -> 8x downsampling, like the real VAE
    vae_layers_per_block: int = 1
    guidance_embeds: bool = True
    max_text_tokens: int = 32  # T5 tokens per prompt (the real model uses 512)


def tiny_kontext_components(config: TinyKontextConfig = TinyKontextConfig(), seed: int = 0, words=BASE_WORDS) -> dict:
    """Components of a ``FluxKontextPipeline`` with seeded random weights."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    if sum(config.axes_dims_rope) != config.attention_head_dim:
        raise ValueError(f"sum(axes_dims_rope)={sum(config.axes_dims_rope)} must equal attention_head_dim={config.attention_head_dim}")
    tokenizer, tokenizer_2 = clip_tokenizer(words), t5_tokenizer(words)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=4 * config.latent_channels,
            num_layers=config.num_layers,
            num_single_layers=config.num_single_layers,
            attention_head_dim=config.attention_head_dim,
            num_attention_heads=config.num_attention_heads,
            joint_attention_dim=config.text_dim,
            pooled_projection_dim=config.pooled_dim,
            guidance_embeds=config.guidance_embeds,
            axes_dims_rope=config.axes_dims_rope,
        )
        blocks = len(config.vae_channels)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * blocks,
            up_block_types=("UpDecoderBlock2D",) * blocks,
            block_out_channels=config.vae_channels,
            layers_per_block=config.vae_layers_per_block,
            latent_channels=config.latent_channels,
            norm_num_groups=min(8, min(config.vae_channels)),
            sample_size=32,
            use_quant_conv=False,
            use_post_quant_conv=False,
            shift_factor=0.1159,
            scaling_factor=0.3611,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=config.pooled_dim,
                intermediate_size=2 * config.pooled_dim,
                num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=77,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                projection_dim=config.pooled_dim,
            )
        )
        text_encoder_2 = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer_2),
                d_model=config.text_dim,
                d_kv=8,
                d_ff=2 * config.text_dim,
                num_layers=2,
                num_heads=2,
                relative_attention_num_buckets=8,
                pad_token_id=tokenizer_2.pad_token_id,
                eos_token_id=tokenizer_2.eos_token_id,
                decoder_start_token_id=tokenizer_2.pad_token_id,
            )
        )
    finally:
        torch.random.set_rng_state(generator_state)
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    for module in (transformer, vae, text_encoder, text_encoder_2):
        module.eval()
    return dict(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        scheduler=scheduler,
    )
