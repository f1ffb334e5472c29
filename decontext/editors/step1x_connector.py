"""Step1X-Edit parts that diffusers does not ship: the Qwen-to-DiT connector, the single-file checkpoint
reader and the Qwen2.5-VL conditioning.

Step1X-Edit's DiT is the BFL FLUX layout without a guidance embedding, so it runs as diffusers'
``FluxTransformer2DModel``; its checkpoint keys are translated by diffusers' own
``convert_flux_transformer_checkpoint_to_diffusers``. What remains model specific is:

* ``Step1XConnector``: the "Qwen2Connector", a HunyuanVideo-style token refiner that turns Qwen2.5-VL
  hidden states (3584-d) into the DiT's text tokens (4096-d) and its pooled vector (768-d).
* ``convert_step1x_checkpoint`` / ``step1x_dit_config`` / ``load_step1x_checkpoint``: the official
  single ``.safetensors`` file (``step1x-edit-i1258.safetensors`` = v1.0,
  ``step1x-edit-v1p1-official.safetensors`` = v1.1) into a strict-loaded transformer + connector.
* ``qwen_features``: the per-sample Qwen2.5-VL forward that produces the connector's input.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import PixArtAlphaTextProjection
from torch import nn

# The width diffusers' FLUX converter assumes when it cuts a single block's fused linear1 (FLUX.1's).
FLUX_CONVERTER_INNER_DIM = 3072
CONNECTOR_PREFIX = "connector."
TIMESTEP_FREQUENCIES = 256  # sinusoid width of the connector's timestep embedder (both versions)
_BFL_PREFIX = "model.diffusion_model."  # ComfyUI-style re-saves carry it; the official file does not


# --------------------------------------------------------------------------------------------------
# Connector
# --------------------------------------------------------------------------------------------------


def timestep_sinusoid(t: torch.Tensor, dim: int = TIMESTEP_FREQUENCIES, max_period: float = 10000.0) -> torch.Tensor:
    """GLIDE sinusoid in [cos, sin] order: (B,) -> (B, dim).

    Frequencies are exp(-ln(max_period) * i / (dim/2)), i < dim/2 (no frequency shift). Computed in at
    least float32 (the official code does float32), in float64 when ``t`` is float64 so that
    double-precision checks are not limited by the sinusoid.
    """
    work = torch.promote_types(t.dtype, torch.float32) if t.is_floating_point() else torch.float32
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=work, device=t.device) / half)
    args = t.to(work)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))  # odd widths get a zero column, as the reference embedder does
    return emb


class _TimestepEmbedder(nn.Module):
    """sinusoid(256) -> Linear -> SiLU -> Linear. Keys ``mlp.0`` / ``mlp.2`` (index 1 is the SiLU)."""

    def __init__(self, hidden: int, frequencies: int = TIMESTEP_FREQUENCIES):
        super().__init__()
        self.frequencies = frequencies
        self.mlp = nn.Sequential(nn.Linear(frequencies, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t (B,) already multiplied by 1000 -> (B, hidden)."""
        weight = self.mlp[0].weight
        return self.mlp(timestep_sinusoid(t, self.frequencies).to(weight.dtype))


class _RefinerMLP(nn.Module):
    """fc1 -> SiLU -> fc2 (keys ``fc1`` / ``fc2``)."""

    def __init__(self, hidden: int, mlp_hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden, mlp_hidden)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(mlp_hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, hidden) -> (B, L, hidden)."""
        return self.fc2(self.act(self.fc1(x)))


class _RefinerBlock(nn.Module):
    """Pre-LN self-attention + MLP block whose two residual branches are gated by the conditioning.

    There is no shift/scale modulation and no QK-norm: adaLN_modulation yields only two gates.
    """

    def __init__(self, hidden: int, heads: int, mlp_ratio: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"connector hidden size {hidden} is not divisible by {heads} heads")
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden, eps=1e-6)
        self.self_attn_qkv = nn.Linear(hidden, 3 * hidden)
        self.self_attn_proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, eps=1e-6)
        self.mlp = _RefinerMLP(hidden, int(hidden * mlp_ratio))
        # Index 0 is the SiLU so the checkpoint's "adaLN_modulation.1" names the linear layer.
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, h: torch.Tensor, c: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """h (B, L, hidden), c (B, hidden), attn_mask (B, 1, L, L) bool (True = attend) -> (B, L, hidden)."""
        gate_attn, gate_mlp = self.adaLN_modulation(c).chunk(2, dim=-1)
        batch, length, hidden = h.shape
        # The fused projection is laid out (3, heads, head_dim) along its output features.
        qkv = self.self_attn_qkv(self.norm1(h)).view(batch, length, 3, self.heads, hidden // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, L, head_dim)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        attn = attn.transpose(1, 2).reshape(batch, length, hidden)
        h = h + gate_attn.unsqueeze(1) * self.self_attn_proj(attn)
        return h + gate_mlp.unsqueeze(1) * self.mlp(self.norm2(h))


class _TokenRefiner(nn.Module):
    """The stack of refiner blocks (key ``blocks.{i}``)."""

    def __init__(self, hidden: int, heads: int, depth: int, mlp_ratio: float):
        super().__init__()
        self.blocks = nn.ModuleList(_RefinerBlock(hidden, heads, mlp_ratio) for _ in range(depth))

    def forward(self, h: torch.Tensor, c: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """h (B, L, hidden), c (B, hidden), mask (B, L) -> (B, L, hidden)."""
        valid = mask.bool()
        attn_mask = (valid[:, None, :, None] & valid[:, None, None, :]).clone()  # (B, 1, L, L)
        # A padded query would otherwise see no key at all and its softmax would be NaN; letting every
        # query see key 0 keeps padded rows finite (they still reach the DiT, which uses no text mask).
        attn_mask[..., 0] = True
        for block in self.blocks:
            h = block(h, c, attn_mask)
        return h


class _SingleTokenRefiner(nn.Module):
    """input_embedder + timestep/context conditioning + refiner blocks (the checkpoint's ``S.``)."""

    def __init__(self, in_dim: int, hidden: int, heads: int, depth: int, mlp_ratio: float):
        super().__init__()
        self.input_embedder = nn.Linear(in_dim, hidden)
        self.t_embedder = _TimestepEmbedder(hidden)
        # Linear -> SiLU -> Linear on the masked-mean Qwen feature, keys linear_1 / linear_2: diffusers' own module
        self.c_embedder = PixArtAlphaTextProjection(in_dim, hidden, act_fn="silu")
        self.individual_token_refiner = _TokenRefiner(hidden, heads, depth, mlp_ratio)

    def forward(self, x: torch.Tensor, t1000: torch.Tensor, mask: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """x (B, L, in_dim), t1000 (B,) = 1000 t, mask (B, L), mean (B, in_dim) masked mean -> (B, L, hidden)."""
        c = self.t_embedder(t1000) + self.c_embedder(mean)
        # Padding tokens are embedded too (they are zeros from qwen_features, so they become the bias).
        return self.individual_token_refiner(self.input_embedder(x), c, mask)


class Step1XConnector(nn.Module):
    """Step1X-Edit's Qwen2Connector: Qwen2.5-VL features -> DiT text tokens and pooled vector.

    ``state_dict()`` keys are the official checkpoint's ``connector.*`` keys without the prefix:
    ``global_proj_out.{weight,bias}``, ``S.input_embedder.*``, ``S.t_embedder.mlp.{0,2}.*``,
    ``S.c_embedder.linear_{1,2}.*``, ``S.individual_token_refiner.blocks.{i}.{norm1, self_attn_qkv,
    self_attn_proj, norm2, mlp.fc1, mlp.fc2, adaLN_modulation.1}.*`` (40 tensors at depth 2) and, for
    v1.0 only, the scalar ``scale_factor`` (41).

    Weights use PyTorch's default initialisation rather than the official zero-initialised gates:
    real weights always come from a checkpoint, and zero gates would make a random test model's
    refiner an identity map that hides bugs.
    """

    def __init__(
        self,
        in_dim: int = 3584,
        hidden: int = 4096,
        heads: int = 32,
        depth: int = 2,
        mlp_ratio: float = 4.0,
        pooled_dim: int = 768,
        has_scale_factor: bool = False,
    ):
        super().__init__()
        self.in_dim, self.hidden, self.heads, self.depth = in_dim, hidden, heads, depth
        self.mlp_ratio, self.pooled_dim, self.has_scale_factor = mlp_ratio, pooled_dim, has_scale_factor
        self.S = _SingleTokenRefiner(in_dim, hidden, heads, depth, mlp_ratio)
        self.global_proj_out = nn.Linear(in_dim, pooled_dim)
        if has_scale_factor:
            # v1.0 only; the official initial value is -0.91 (the trained value is in the checkpoint).
            self.scale_factor = nn.Parameter(torch.full((1,), -0.91))

    @property
    def version(self) -> str:
        return "v1.0" if self.has_scale_factor else "v1.1"

    def forward(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Refine Qwen features.

        Args:
            x: (B, L, in_dim) Qwen2.5-VL last hidden states, zero past each sample's length.
            t: (B,) flow time in [0, 1]. It is multiplied by 1000 in its own dtype, as the official code
                does after casting t to the image dtype (bf16), so pass it in that dtype to match.
            mask: (B, L) long/bool, 1 on real tokens. Each row needs at least one 1.

        Returns:
            tokens (B, L, hidden) for the DiT's ``encoder_hidden_states`` (all L positions; the DiT uses
            no text mask) and pooled (B, pooled_dim) for its ``pooled_projections``.
        """
        weights = mask.to(x.dtype).unsqueeze(-1)  # (B, L, 1)
        # clamp: an all-padding row would divide 0/0 and its NaN would poison the whole batch.
        mean = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)
        # v1.0 rescales only the pooled branch's input; the refiner's context embedder sees the plain mean.
        pooled_in = mean * (1 + self.scale_factor.to(x.dtype)) if self.has_scale_factor else mean
        pooled = self.global_proj_out(pooled_in)
        tokens = self.S(x, t * 1000, mask, mean)
        return tokens, pooled


def step1x_connector_config(connector_state_dict: Mapping[str, object], heads: int | None = None) -> dict:
    """``Step1XConnector`` kwargs inferred from a (prefix-free) connector state dict's shapes.

    ``heads`` is not recoverable from shapes: the default keeps the official 128-wide heads (32 for the
    real 4096 width); narrower test connectors must pass it.
    """
    shape = lambda key: _shape_of(connector_state_dict, key, "connector.")  # noqa: E731
    hidden, in_dim = shape("S.input_embedder.weight")
    depth = 1 + max(
        (int(k.split(".")[3]) for k in connector_state_dict if k.startswith("S.individual_token_refiner.blocks.")),
        default=-1,
    )
    if depth == 0:
        raise ValueError("connector has no S.individual_token_refiner.blocks.* tensors")
    mlp_hidden = shape("S.individual_token_refiner.blocks.0.mlp.fc1.weight")[0]
    pooled_dim = shape("global_proj_out.weight")[0]
    if heads is None:
        if hidden % 128:
            raise ValueError(f"connector width {hidden} is not a multiple of 128: pass connector_heads explicitly")
        heads = hidden // 128
    return dict(
        in_dim=in_dim,
        hidden=hidden,
        heads=heads,
        depth=depth,
        mlp_ratio=mlp_hidden / hidden,
        pooled_dim=pooled_dim,
        has_scale_factor="scale_factor" in connector_state_dict,
    )


# --------------------------------------------------------------------------------------------------
# Checkpoint reading
# --------------------------------------------------------------------------------------------------


def _shape_of(tensors: Mapping[str, object], key: str, what: str = "") -> tuple[int, ...]:
    """Shape of ``tensors[key]``, which may be a tensor or already a shape (torch.Size / tuple)."""
    if key not in tensors:
        raise ValueError(f"missing tensor {what + key!r}")
    value = tensors[key]
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def _embed_linear1(tensor: torch.Tensor, inner: int) -> torch.Tensor:
    """Place a single block's fused linear1 rows [q | k | v | mlp] of width ``inner`` into the
    3072-wide frame diffusers' converter cuts at fixed offsets 0 / 3072 / 6144 / 9216.

    (7*inner, inner) or (7*inner,) -> (7*3072, inner) or (7*3072,), zeros outside the four slices.
    """
    frame_dim = FLUX_CONVERTER_INNER_DIM
    frame = tensor.new_zeros((7 * frame_dim,) + tuple(tensor.shape[1:]))
    for slot, (start, rows) in enumerate(((0, inner), (inner, inner), (2 * inner, inner), (3 * inner, 4 * inner))):
        frame[slot * frame_dim : slot * frame_dim + rows] = tensor[start : start + rows]
    return frame


def convert_step1x_checkpoint(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict, dict, str]:
    """Split an official Step1X-Edit state dict into diffusers DiT weights and connector weights.

    The DiT keys are translated by ``diffusers.loaders.single_file_utils.
    convert_flux_transformer_checkpoint_to_diffusers``. That converter hard-codes FLUX.1's inner
    width 3072 when it splits each ``single_blocks.{i}.linear1`` into q, k, v and the MLP input. For
    any narrower DiT (the tiny test models) this function shims around it: each linear1 weight/bias
    is first embedded in a 3072-wide frame (q rows at 0, k at 3072, v at 6144, mlp at 9216, zeros
    elsewhere) and after conversion ``to_q/to_k/to_v`` are cut back to d rows and ``proj_mlp`` to 4d.
    At d == 3072 (the real model) the converter sees the tensors unchanged. Wider DiTs are refused.

    The input mapping is not modified (the converter pops from a shallow copy).

    Returns:
        (dit_state_dict with diffusers ``FluxTransformer2DModel`` names, connector_state_dict without
        the ``connector.`` prefix, version) where version is "v1.0" when ``connector.scale_factor`` is
        present, else "v1.1".

    Raises:
        ValueError naming the missing or unexpected keys.
    """
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    dit: dict[str, torch.Tensor] = {}
    connector: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        key = key[len(_BFL_PREFIX) :] if key.startswith(_BFL_PREFIX) else key
        if key.startswith(CONNECTOR_PREFIX):
            connector[key[len(CONNECTOR_PREFIX) :]] = value
        else:
            dit[key] = value
    if not connector:
        raise ValueError("no connector.* tensors: this is not a Step1X-Edit checkpoint (a plain FLUX DiT?)")
    guidance = sorted(k for k in dit if k.startswith("guidance_in."))
    if guidance:
        # diffusers would happily convert these, but Step1X-Edit has no guidance embedder.
        raise ValueError(
            f"unexpected keys {guidance[:4]}: Step1X-Edit has no guidance embedding (a FLUX.1-dev/Kontext DiT?)"
        )
    version = "v1.0" if "scale_factor" in connector else "v1.1"

    inner = _shape_of(dit, "img_in.weight")[0]
    single = sorted({int(k.split(".")[1]) for k in dit if k.startswith("single_blocks.")})
    if inner != FLUX_CONVERTER_INNER_DIM:
        if inner > FLUX_CONVERTER_INNER_DIM:
            raise ValueError(
                f"DiT width {inner} exceeds the {FLUX_CONVERTER_INNER_DIM} that diffusers' FLUX converter can split"
            )
        for i in single:
            for name in ("weight", "bias"):
                key = f"single_blocks.{i}.linear1.{name}"
                rows = _shape_of(dit, key)[0]
                if rows != 7 * inner:
                    raise ValueError(f"{key} has {rows} rows, expected 7 x {inner} (q, k, v and a 4x MLP)")
                dit[key] = _embed_linear1(dit[key], inner)

    try:
        converted = convert_flux_transformer_checkpoint_to_diffusers(dit)
    except KeyError as err:
        raise ValueError(f"missing DiT tensor {err.args[0]!r}") from None
    except IndexError:
        # the converter counts blocks with list(...)[-1], which fails on an empty list
        raise ValueError("no double_blocks.* or no single_blocks.* tensors: not a FLUX-layout DiT") from None
    if dit:
        raise ValueError(f"unexpected keys {sorted(dit)[:8]}{' ...' if len(dit) > 8 else ''} ({len(dit)} in all)")

    if inner != FLUX_CONVERTER_INNER_DIM:
        for i in single:
            prefix = f"single_transformer_blocks.{i}."
            for name in ("weight", "bias"):
                for part, rows in (
                    ("attn.to_q", inner),
                    ("attn.to_k", inner),
                    ("attn.to_v", inner),
                    ("proj_mlp", 4 * inner),
                ):
                    key = f"{prefix}{part}.{name}"
                    converted[key] = converted[key][:rows].clone()  # clone: drop the frame's storage
    return converted, connector, version


def step1x_dit_config(
    dit_state_dict: Mapping[str, object], head_dim: int = 128, axes_dims_rope: Sequence[int] | None = None
) -> dict:
    """``FluxTransformer2DModel`` kwargs inferred from converted (diffusers-named) tensors or their shapes.

    Values may be tensors or shapes. ``head_dim`` is not recoverable from shapes (128 for the real
    model, giving 24 heads); ``axes_dims_rope`` defaults to FLUX's (16, 56, 56) at head_dim 128 and
    must be given otherwise. Its sum must equal head_dim.
    """
    inner, in_channels = _shape_of(dit_state_dict, "x_embedder.weight")
    joint_attention_dim = _shape_of(dit_state_dict, "context_embedder.weight")[1]
    pooled_projection_dim = _shape_of(dit_state_dict, "time_text_embed.text_embedder.linear_1.weight")[1]
    out_channels = _shape_of(dit_state_dict, "proj_out.weight")[0]

    def count(prefix: str) -> int:
        return 1 + max(
            (int(k[len(prefix) :].split(".")[0]) for k in dit_state_dict if k.startswith(prefix)), default=-1
        )

    if inner % head_dim:
        raise ValueError(f"DiT width {inner} is not a multiple of head_dim={head_dim}")
    if axes_dims_rope is None:
        if head_dim != 128:
            raise ValueError(
                f"axes_dims_rope is required when head_dim={head_dim} (the (16, 56, 56) default is for 128)"
            )
        axes_dims_rope = (16, 56, 56)
    axes_dims_rope = tuple(int(a) for a in axes_dims_rope)
    if sum(axes_dims_rope) != head_dim:
        raise ValueError(f"sum(axes_dims_rope)={sum(axes_dims_rope)} must equal head_dim={head_dim}")
    return dict(
        patch_size=1,
        in_channels=in_channels,
        out_channels=out_channels,
        num_layers=count("transformer_blocks."),
        num_single_layers=count("single_transformer_blocks."),
        attention_head_dim=head_dim,
        num_attention_heads=inner // head_dim,
        joint_attention_dim=joint_attention_dim,
        pooled_projection_dim=pooled_projection_dim,
        guidance_embeds=False,
        axes_dims_rope=axes_dims_rope,
    )


def _load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str, path: Path) -> None:
    """Strict load with key-set errors that name the file; ``assign`` so meta-built modules get the tensors."""
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing:
        raise ValueError(
            f"{path}: {what} tensors missing from the checkpoint: "
            f"{missing[:8]}{' ...' if len(missing) > 8 else ''} ({len(missing)} in all)"
        )
    if unexpected:
        raise ValueError(
            f"{path}: unexpected {what} tensors: "
            f"{unexpected[:8]}{' ...' if len(unexpected) > 8 else ''} ({len(unexpected)} in all)"
        )
    try:
        module.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: {what} tensor shapes do not fit the inferred sizes: {err}") from None


def load_step1x_checkpoint(
    path: str | Path,
    dtype: torch.dtype = torch.bfloat16,
    head_dim: int = 128,
    axes_dims_rope: Sequence[int] | None = None,
    connector_heads: int | None = None,
):
    """Read an official single-file Step1X-Edit checkpoint (safetensors only; pickles are refused).

    Sizes are inferred from the tensor shapes. Both modules are built on the meta device and take the
    file's tensors directly (no 12B-parameter random initialisation), then are cast to ``dtype``,
    put in eval mode and frozen.

    Returns:
        (FluxTransformer2DModel, Step1XConnector, version) with version "v1.0" or "v1.1".
    """
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Step1X-Edit checkpoint not found: {path}")
    if path.is_dir():
        raise ValueError(
            f"{path} is a folder; pass the single .safetensors file (e.g. step1x-edit-v1p1-official.safetensors)"
        )
    try:
        state_dict = load_file(str(path))
    except Exception as err:  # safetensors raises its own SafetensorError, or OSError on I/O
        raise ValueError(
            f"{path} is not a readable safetensors file ({type(err).__name__}: {err}); "
            "Step1X-Edit is read from the official .safetensors only"
        ) from None
    try:
        dit_sd, connector_sd, version = convert_step1x_checkpoint(state_dict)
        del state_dict
        config = step1x_dit_config(dit_sd, head_dim=head_dim, axes_dims_rope=axes_dims_rope)
        connector_config = step1x_connector_config(connector_sd, heads=connector_heads)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None

    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**config)
        connector = Step1XConnector(**connector_config)
    _load_strict(transformer, dit_sd, "DiT", path)
    _load_strict(connector, connector_sd, "connector", path)
    for module in (transformer, connector):
        module.to(dtype).eval().requires_grad_(False)
    return transformer, connector, version


# --------------------------------------------------------------------------------------------------
# Qwen2.5-VL conditioning
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def qwen_features(
    vlm,
    processor,
    images: Sequence,
    instructions: Sequence[str],
    prefix: str,
    drop_tokens: int,
    max_length: int,
    device: torch.device | str,
    dtype: torch.dtype,
    prefix_flag: str = "prefix",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step1X-Edit's (v1.0/v1.1) connector input: Qwen2.5-VL last hidden states of a chat prompt.

    One forward per sample, as the official code does, so no padding enters the VLM. Each message
    is ``user: [text=prefix, image, text=instruction]`` rendered with ``add_vision_id=True`` and the
    generation prompt, so the user turn reads ``prefix + "Picture 1: <|vision_start|><|image_pad|>...
    <|vision_end|>" + instruction``. The first ``drop_tokens`` positions (system turn and most of the
    prefix; 217 for the real model) are dropped and at most ``max_length`` (640) are kept.

    Not reproduced from the official code: (1) its re-tokenisation of quoted spans character by
    character (and its rewriting of ``'`` to ``"`` that turns everything after an apostrophe into
    single-character tokens), together with its ``attention_mask = ids > 0``; the processor's own
    ids and mask are used. (2) ``qwen_vl_utils.process_vision_info``'s PIL pre-resize to a multiple
    of 28: the processor's own smart-resize gives the same grid, with slightly different resampling.

    Args:
        vlm: ``Qwen2_5_VLForConditionalGeneration``.
        processor: its ``Qwen2_5_VLProcessor`` (real model: min_pixels=256*28*28, max_pixels=324*28*28).
        images: B PIL images (the resized reference the VAE also sees).
        instructions: B edit instructions (the negative is "").
        prefix: the prompt-enhancer text the model was trained with.
        prefix_flag: how the caller lets users set ``prefix`` (e.g. a CLI flag), named in the error
            raised when the prompt is not longer than ``drop_tokens``.

    Returns:
        features (B, max_length, hidden) in ``dtype``, zero past each sample's length, and
        mask (B, max_length) long, 1 exactly on the kept positions.
    """
    if len(images) != len(instructions):
        raise ValueError(f"{len(images)} images but {len(instructions)} instructions")
    hidden = vlm.config.text_config.hidden_size
    vlm_dtype = next(vlm.parameters()).dtype
    features = torch.zeros(len(images), max_length, hidden, dtype=dtype, device=device)
    mask = torch.zeros(len(images), max_length, dtype=torch.long, device=device)
    for b, (image, instruction) in enumerate(zip(images, instructions, strict=False)):
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": prefix},
                    {"type": "image", "image": image},
                    {"type": "text", "text": instruction},
                ],
            }
        ]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, add_vision_id=True)
        inputs = processor(text=[text], images=[image], return_tensors="pt").to(device)
        inputs["pixel_values"] = inputs["pixel_values"].to(vlm_dtype)
        # The base model's last_hidden_state (after the final norm) = the official hidden_states[-1];
        # skipping the LM head saves a (L x 152k) logits tensor per call on the real model.
        hidden_states = vlm.model(**inputs).last_hidden_state[0]  # (L, hidden)
        length = hidden_states.shape[0]
        if length <= drop_tokens:
            raise ValueError(
                f"the Qwen prompt has {length} tokens but the first {drop_tokens} are dropped: "
                f"the prompt prefix given by {prefix_flag} ({len(prefix)} characters) is too short. "
                "The real model needs the official Step1X-Edit prompt-enhancer prefix; "
                "tiny models need their own config's prefix"
            )
        n = min(max_length, length - drop_tokens)
        features[b, :n] = hidden_states[drop_tokens : drop_tokens + n].to(dtype)
        mask[b, :n] = 1
    return features, mask
