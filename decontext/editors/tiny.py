"""Offline builders of small editors from config objects: real diffusers / transformers classes with
random (seeded) weights and tokenizers made in memory. Used by the tests, the benchmarks, the
``--model tiny`` smoke path and as the starting point of the trained toy editor.

Nothing here downloads anything.
"""

from __future__ import annotations

import contextlib
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


def clip_text_model(tokenizer, hidden: int, layers: int = 2, heads: int = 2):
    """A small ``CLIPTextModel`` for ``tokenizer`` (hidden = projection width), drawn from the global RNG."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=hidden,
        )
    )


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


def _kl_vae(latent_channels: int, vae_channels: tuple[int, ...], layers_per_block: int, **family) -> object:
    """A small ``AutoencoderKL`` drawn from the global RNG; ``family``: the config entries that differ
    between FLUX-like and Stable-Diffusion-like VAEs (quant convs, shift, scale)."""
    from diffusers import AutoencoderKL

    blocks = len(vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=vae_channels,
        layers_per_block=layers_per_block,
        latent_channels=latent_channels,
        norm_num_groups=min(8, min(vae_channels)),
        sample_size=32,
        **family,
    )


def _flux_vae(latent_channels: int, vae_channels: tuple[int, ...], layers_per_block: int):
    """A FLUX.1-like ``AutoencoderKL`` (no quant convs, FLUX shift/scale) drawn from the global RNG.

    Shared by the Kontext and Step1X builders; it draws exactly what the inline construction did.
    """
    return _kl_vae(
        latent_channels,
        vae_channels,
        layers_per_block,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.1159,
        scaling_factor=0.3611,
    )


@contextlib.contextmanager
def _seeded(seed: int):
    """Draw weights from ``torch.manual_seed(seed)``; the caller's global CPU generator is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def tiny_kontext_components(config: TinyKontextConfig = TinyKontextConfig(), seed: int = 0, words=BASE_WORDS) -> dict:
    """Components of a ``FluxKontextPipeline`` with seeded random weights."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    if sum(config.axes_dims_rope) != config.attention_head_dim:
        raise ValueError(
            f"sum(axes_dims_rope)={sum(config.axes_dims_rope)} "
            f"must equal attention_head_dim={config.attention_head_dim}"
        )
    tokenizer, tokenizer_2 = clip_tokenizer(words), t5_tokenizer(words)
    with _seeded(seed):
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
        vae = _flux_vae(config.latent_channels, config.vae_channels, config.vae_layers_per_block)
        text_encoder = clip_text_model(tokenizer, config.pooled_dim, layers=2)
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


# --------------------------------------------------------------------------------------------------
# Step1X-Edit: tiny Qwen2.5-VL, tiny official-layout checkpoint, FLUX-like VAE
# --------------------------------------------------------------------------------------------------

# Qwen2.5-VL's special tokens that the chat template and the processor use, in Qwen's relative order.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Words of the chat template and of the tiny prefix that get whole tokens (with and without a leading space).
QWEN_TEMPLATE_WORDS = (
    "You are a helpful assistant system user Picture Video Rewrite the edit request below as one detailed "
    "description of picture User Prompt".split()
)

# Our own Jinja template rendering Qwen2.5-VL's chat format: a default system turn, "Picture n: " before
# each image when add_vision_id is set, and "<|im_start|>assistant\n" as the generation prompt.
QWEN_CHAT_TEMPLATE = (
    "{%- set seen = namespace(images=0, videos=0) -%}"
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' ~ message['role'] ~ '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{%- set seen.images = seen.images + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Picture ' ~ seen.images ~ ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{%- set seen.videos = seen.videos + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Video ' ~ seen.videos ~ ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in part -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class TinyStep1XConfig:
    """Sizes of a tiny Step1X-Edit (real values in comments).

    The DiT is FLUX-shaped without guidance; the connector maps Qwen features (qwen_hidden) to the
    DiT's text width (text_dim) and pooled width (pooled_dim).
    """

    # DiT (real: 19 double, 38 single, 24 x 128 heads, axes (16, 56, 56))
    num_layers: int = 1
    num_single_layers: int = 2
    num_attention_heads: int = 2
    attention_head_dim: int = 16  # must equal sum(axes_dims_rope)
    axes_dims_rope: tuple[int, int, int] = (4, 6, 6)
    text_dim: int = 48  # DiT joint_attention_dim = connector hidden (real 4096); differs from the DiT width on purpose
    pooled_dim: int = 32  # DiT pooled_projection_dim = connector pooled output (real 768)
    latent_channels: int = 16
    vae_channels: tuple[int, ...] = (8, 8, 16, 16)  # 4 blocks -> 8x, like the real FLUX VAE
    vae_layers_per_block: int = 1
    # connector (real: 32 heads x 128, depth 2, mlp ratio 4)
    connector_heads: int = 2
    connector_depth: int = 2
    connector_mlp_ratio: float = 4.0
    # Qwen2.5-VL text tower (real 7B: 3584 wide, 28 layers, 28 heads, 4 kv heads, mrope (16, 24, 24))
    qwen_hidden: int = 64
    qwen_layers: int = 2
    qwen_heads: int = 2
    qwen_kv_heads: int = 1
    qwen_intermediate: int = 128
    qwen_mrope_section: tuple[int, int, int] = (4, 6, 6)  # sums to qwen head_dim / 2
    # Qwen2.5-VL vision tower (real: 1280 wide, depth 32, window 112, full attention at 7/15/23/31)
    vision_hidden: int = 32
    vision_depth: int = 2
    vision_heads: int = 2
    vision_intermediate: int = 64
    vision_window_size: int = 56  # 2 x 2 merged patches per window
    vision_fullatt_blocks: tuple[int, ...] = (1,)
    # processor: 2x2 .. 3x3 merged patches (real 256*28*28 .. 324*28*28 = 16x16 .. 18x18)
    min_pixels: int = 4 * 28 * 28
    max_pixels: int = 9 * 28 * 28
    # conditioning (real: the official 1058-character prefix, drop 217, keep 640)
    prefix: str = "Rewrite the edit request below as one detailed description of the picture.\nUser Prompt:"
    drop_tokens: int = 30  # keeps ": Picture 1: <|vision_start|>" (7 tokens before <|image_pad|>), like the real 217
    max_length: int = 48


def _bpe(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Plain BPE: repeatedly merge the adjacent pair of lowest rank (what the tokenizers library does)."""
    while len(pieces) > 1:
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(pieces, pieces[1:], strict=False))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        pieces = pieces[:i] + [pieces[i] + pieces[i + 1]] + pieces[i + 2 :]
    return pieces


def qwen_tokenizer(words: tuple[str, ...] | list[str] = tuple(BASE_WORDS) + tuple(QWEN_TEMPLATE_WORDS)):
    """A byte-level BPE ``Qwen2Tokenizer`` (Qwen's pre-tokenizer regex) built in memory.

    Every byte is in the vocabulary, so any text tokenizes; each listed word, alone or after a space
    ("Ġword"), gets one token. Qwen's special tokens follow the vocabulary in ``QWEN_SPECIAL_TOKENS``
    order and are matched whole.
    """
    from transformers import Qwen2Tokenizer

    vocab = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}
    ranks: dict[tuple[str, str], int] = {}
    for word in sorted(set(words)):
        for spelled in (word, "\u0120" + word):  # "Ġ" is the byte-level spelling of a leading space
            # Tokenize with the merges so far, then join what is left from the left with new merges.
            # New merges rank after all old ones, so words already whole stay whole.
            pieces = _bpe(list(spelled), ranks)
            current = pieces[0]
            for piece in pieces[1:]:
                ranks.setdefault((current, piece), len(ranks))
                current = current + piece
                vocab.setdefault(current, len(vocab))
    merges = sorted(ranks, key=ranks.get)
    for token in QWEN_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
    )


def tiny_qwen25vl(config: TinyStep1XConfig = TinyStep1XConfig(), seed: int = 0):
    """A random-weight ``Qwen2_5_VLForConditionalGeneration`` and a matching ``Qwen2_5_VLProcessor``.

    The processor (in-memory tokenizer, ``Qwen2VLImageProcessor`` with the config's pixel bounds, our
    chat template) expands ``<|image_pad|>`` to the image's merged patch count like the real one, and
    both save_pretrained / from_pretrained offline. The global RNG is left as it was.
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    if 2 * sum(config.qwen_mrope_section) != config.qwen_hidden // config.qwen_heads:
        raise ValueError(f"qwen_mrope_section {config.qwen_mrope_section} must sum to half the Qwen head dim")
    tokenizer = qwen_tokenizer()
    ids = dict(zip(QWEN_SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS)), strict=False))
    pixels = dict(min_pixels=config.min_pixels, max_pixels=config.max_pixels)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**pixels),  # required by the processor class; unused here
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    model_config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=config.qwen_hidden,
            intermediate_size=config.qwen_intermediate,
            num_hidden_layers=config.qwen_layers,
            num_attention_heads=config.qwen_heads,
            num_key_value_heads=config.qwen_kv_heads,
            max_position_embeddings=2048,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": list(config.qwen_mrope_section),
            },
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=config.vision_depth,
            hidden_size=config.vision_hidden,
            intermediate_size=config.vision_intermediate,
            num_heads=config.vision_heads,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=config.vision_window_size,
            out_hidden_size=config.qwen_hidden,
            fullatt_block_indexes=list(config.vision_fullatt_blocks),
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    with _seeded(seed):
        model = Qwen2_5_VLForConditionalGeneration(model_config)
    return model.eval(), processor


def tiny_step1x_connector(config: TinyStep1XConfig = TinyStep1XConfig(), version: str = "v1.1", seed: int = 0):
    """A seeded ``Step1XConnector`` of the tiny sizes (global RNG left as it was)."""
    from .step1x_connector import Step1XConnector

    if version not in ("v1.0", "v1.1"):
        raise ValueError(f"version must be 'v1.0' or 'v1.1', got {version!r}")
    with _seeded(seed):
        connector = Step1XConnector(
            in_dim=config.qwen_hidden,
            hidden=config.text_dim,
            heads=config.connector_heads,
            depth=config.connector_depth,
            mlp_ratio=config.connector_mlp_ratio,
            pooled_dim=config.pooled_dim,
            has_scale_factor=version == "v1.0",
        )
    return connector.eval()


def step1x_official_dit_shapes(config: TinyStep1XConfig = TinyStep1XConfig()) -> dict[str, tuple[int, ...]]:
    """Shapes of the official (BFL-named) DiT tensors of a Step1X-Edit with the config's sizes.

    This is the writer's table (the test input); reading goes through diffusers' converter.
    """
    d = config.num_attention_heads * config.attention_head_dim
    head, mlp, channels = config.attention_head_dim, 4 * d, 4 * config.latent_channels
    shapes: dict[str, tuple[int, ...]] = {}

    def linear(name: str, out_features: int, in_features: int) -> None:
        shapes[f"{name}.weight"] = (out_features, in_features)
        shapes[f"{name}.bias"] = (out_features,)

    linear("img_in", d, channels)
    linear("txt_in", d, config.text_dim)
    linear("time_in.in_layer", d, 256)
    linear("time_in.out_layer", d, d)
    linear("vector_in.in_layer", d, config.pooled_dim)
    linear("vector_in.out_layer", d, d)
    for i in range(config.num_layers):
        for stream in ("img", "txt"):
            prefix = f"double_blocks.{i}.{stream}"
            linear(f"{prefix}_mod.lin", 6 * d, d)
            linear(f"{prefix}_attn.qkv", 3 * d, d)
            shapes[f"{prefix}_attn.norm.query_norm.scale"] = (head,)
            shapes[f"{prefix}_attn.norm.key_norm.scale"] = (head,)
            linear(f"{prefix}_attn.proj", d, d)
            linear(f"{prefix}_mlp.0", mlp, d)
            linear(f"{prefix}_mlp.2", d, mlp)
    for i in range(config.num_single_layers):
        prefix = f"single_blocks.{i}"
        linear(f"{prefix}.linear1", 3 * d + mlp, d)
        linear(f"{prefix}.linear2", d, d + mlp)
        shapes[f"{prefix}.norm.query_norm.scale"] = (head,)
        shapes[f"{prefix}.norm.key_norm.scale"] = (head,)
        linear(f"{prefix}.modulation.lin", 3 * d, d)
    linear("final_layer.linear", channels, d)
    linear("final_layer.adaLN_modulation.1", 2 * d, d)
    return shapes


def write_tiny_step1x_checkpoint(
    path,
    config: TinyStep1XConfig = TinyStep1XConfig(),
    version: str = "v1.1",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
):
    """Write random Step1X-Edit weights in the official single-file layout (safetensors).

    DiT tensors use the BFL names (no guidance_in); the connector is a seeded ``tiny_step1x_connector``
    under ``connector.``, with ``connector.scale_factor`` for v1.0. Weights ~ N(0, 1/fan_in), biases
    and norm scales are perturbed so that no tensor is trivial. Returns the path.
    """
    from safetensors.torch import save_file

    connector = tiny_step1x_connector(config, version, seed)
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, shape in step1x_official_dit_shapes(config).items():
        noise = torch.randn(shape, generator=generator)
        if name.endswith(".scale"):
            tensors[name] = 1 + 0.1 * noise  # RMSNorm gains near 1
        elif name.endswith(".bias"):
            tensors[name] = 0.02 * noise
        else:
            tensors[name] = noise / shape[1] ** 0.5
    for name, value in connector.state_dict().items():
        tensors[f"connector.{name}"] = value
    save_file({k: v.to(dtype).contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})
    return path


def tiny_step1x_vae(config: TinyStep1XConfig = TinyStep1XConfig(), seed: int = 0):
    """The FLUX-like 8x ``AutoencoderKL`` (shift 0.1159, scale 0.3611) with seeded weights."""
    with _seeded(seed):
        vae = _flux_vae(config.latent_channels, config.vae_channels, config.vae_layers_per_block)
    return vae.eval()


def write_tiny_step1x_folder(folder, config: TinyStep1XConfig | None = None, version: str = "v1.1", seed: int = 0):
    """A tiny Step1X-Edit as a user would have it on disk: ``step1x-edit-tiny.safetensors`` in the
    official single-file layout, ``vae/`` (diffusers AutoencoderKL), ``qwen/`` (Qwen2.5-VL model and
    processor), ``prefix.txt`` (our own short prefix, not the official text) and ``step1x.json`` (the
    sizes the real model implies: head dim, RoPE axes, connector heads, Qwen tokens dropped and kept).
    Idempotent for the same arguments. Returns the folder."""
    import json
    from pathlib import Path

    config = config or TinyStep1XConfig()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = {"version": version, "seed": seed, "config": repr(config)}
    if (folder / "tiny.json").is_file() and json.loads((folder / "tiny.json").read_text()) == stamp:
        return folder
    write_tiny_step1x_checkpoint(folder / "step1x-edit-tiny.safetensors", config, version=version, seed=seed)
    tiny_step1x_vae(config, seed).save_pretrained(folder / "vae")
    model, processor = tiny_qwen25vl(config, seed)
    model.save_pretrained(folder / "qwen")
    processor.save_pretrained(folder / "qwen")
    (folder / "prefix.txt").write_text(config.prefix + "\n", encoding="utf-8")
    sizes = {
        "head_dim": config.attention_head_dim,
        "axes_dims_rope": list(config.axes_dims_rope),
        "connector_heads": config.connector_heads,
        "drop_tokens": config.drop_tokens,
        "max_length": config.max_length,
        "min_pixels": config.min_pixels,
        "max_pixels": config.max_pixels,
    }
    (folder / "step1x.json").write_text(json.dumps(sizes, indent=2) + "\n")
    (folder / "tiny.json").write_text(json.dumps(stamp) + "\n")
    return folder


# --------------------------------------------------------------------------------------------------
# InstructPix2Pix: tiny UNet2DConditionModel (source latent concatenated on channels), CLIP, SD-like VAE
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyIP2PConfig:
    """Sizes of a tiny InstructPix2Pix (Stable Diffusion 1.5 layout, scaled down)."""

    unet_channels: tuple[int, ...] = (16, 32)
    down_blocks: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    up_blocks: tuple[str, ...] = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    layers_per_block: int = 1
    heads: int = 2  # attention heads at every level (diffusers passes SD's head count as attention_head_dim)
    text_dim: int = 32  # CLIP hidden = cross_attention_dim
    text_layers: int = 2
    latent_channels: int = 4
    vae_channels: tuple[int, ...] = (8, 8, 16, 16)  # 4 blocks -> 8x downsampling, like SD's VAE
    vae_layers_per_block: int = 1
    scaling_factor: float = 0.18215  # SD 1.x


def sd_vae(latent_channels: int, vae_channels: tuple[int, ...], layers_per_block: int, scaling_factor: float = 0.18215):
    """A Stable-Diffusion-like ``AutoencoderKL`` (quant convs, scale only, no shift) drawn from the global RNG."""
    return _kl_vae(latent_channels, vae_channels, layers_per_block, scaling_factor=scaling_factor)


def ip2p_scheduler():
    """timbrooks/instruct-pix2pix's scheduler: Euler ancestral on SD's scaled-linear betas, epsilon."""
    from diffusers import EulerAncestralDiscreteScheduler

    return EulerAncestralDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        steps_offset=1,
        timestep_spacing="linspace",
    )


def tiny_ip2p_components(config: TinyIP2PConfig = TinyIP2PConfig(), seed: int = 0, words=BASE_WORDS) -> dict:
    """Components of a ``StableDiffusionInstructPix2PixPipeline`` with seeded random weights (no
    safety checker): the UNet takes 2 x latent_channels inputs (noisy latent + source latent)."""
    from diffusers import UNet2DConditionModel

    tokenizer = clip_tokenizer(words)
    with _seeded(seed):
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=2 * config.latent_channels,
            out_channels=config.latent_channels,
            down_block_types=config.down_blocks,
            up_block_types=config.up_blocks,
            block_out_channels=config.unet_channels,
            layers_per_block=config.layers_per_block,
            cross_attention_dim=config.text_dim,
            attention_head_dim=config.heads,
            norm_num_groups=min(8, min(config.unet_channels)),
        )
        vae = sd_vae(config.latent_channels, config.vae_channels, config.vae_layers_per_block, config.scaling_factor)
        text_encoder = clip_text_model(tokenizer, config.text_dim, layers=config.text_layers)
    for module in (unet, vae, text_encoder):
        module.eval()
    return dict(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=ip2p_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
