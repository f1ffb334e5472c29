"""Editors: one module per model family, declared here as data (no torch: the command lines build their
flags, help and defaults from it, pick the family of a ``--model``, and refuse what cannot work before
any model loads).

A ``Family`` says where its editor class lives, what it offers methods (``capabilities``), its official
attack settings (each stated here once; the classes and the command lines read them), its own flags
(``options``: which command line takes each and which ``load`` argument it becomes), its help texts, and
how to recognise its models (pipeline class names in a folder's model_index.json, hub ids, short names).

Adding an editor = its module + one entry here.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..options import Flag

# What an editor can offer methods; ``Method.requires`` names a subset, checked before any work.
CAPABILITIES = {
    "context_attention": "target-image queries attend to context-image keys in a joint attention (probe())",
    "text_cross_attention": "image queries attend to text keys in cross-attention layers (text_attention())",
    "diffusion_loss": "the denoiser's own training pair on the image (flow_pair() + velocity())",
    "vae": "differentiable image latents (image_latents())",
    "text_embeddings": "the prompt's embeddings inside a Condition can be read and replaced (text_embedding_keys)",
    "sampling": "a deterministic denoising step and a differentiable decoder (denoise(), decode())",
}
DIT = frozenset({"context_attention", "text_cross_attention", "diffusion_loss", "vae", "text_embeddings", "sampling"})
TINY_RESOLUTION = (
    64  # every family's tiny random-weight model works at a 64 x 64 area unless told otherwise: a smoke test in seconds
)

KONTEXT_GUIDANCE = 3.5  # the guidance-embedding value of the official DeContext attack and of the paper's edits
FLUX2_GUIDANCE = 4.0  # Flux2Pipeline's / Flux2KleinPipeline's own guidance_scale default
IP2P_IMAGE_GUIDANCE = 1.5  # the InstructPix2Pix pipeline's and official edit CLI's image guidance scale
# Step1X-Edit / Qwen-Image-Edit: re-read the perturbed image with Qwen2.5-VL every K PGD steps (the official attack: 1)
VLM_REFRESH = 1


@dataclass(frozen=True)
class FamilyOption:
    """A flag of one family: on which command lines (``roles``: "attack", "edit") and which argument of
    the editor's ``load`` it becomes (None: the command line uses it itself)."""

    flag: Flag
    roles: tuple[str, ...]
    load_as: str | None


@dataclass(frozen=True)
class Family:
    name: str  # registry key, recorded in manifests
    title: str
    target: str  # "module:Class"
    capabilities: frozenset
    min_resolution: (
        int  # smallest --resolution N of the family's stock checkpoints (a model's own multiple may be smaller)
    )
    eps: float  # the official attack's L-inf budget in 1/255 units
    eps_note: str
    alpha: float  # its PGD step in 1/255 units
    steps: int  # its PGD steps
    model_help: str
    attack_description: str
    edit_description: str
    auto_resolution_note: str
    method: str = "decontext"  # the default method
    method_defaults: dict = field(
        default_factory=dict
    )  # the official attack's method options (where they differ from the method's own)
    options: tuple[FamilyOption, ...] = ()
    aliases: tuple[str, ...] = ()  # short names the shell drivers accept (EDITOR=kontext)
    pipelines: tuple[str, ...] = ()  # model_index.json _class_name values of its checkpoints
    hub_ids: tuple[str, ...] = ()  # hub id prefixes of its checkpoints
    regulator: bool = False  # editing can run under UVR (--uvr)
    # The family's own settings of a preset where the shared ones fall short on its models (config.PRESETS),
    # e.g. {"fast": {"steps": 200}}: the evidence is in docs/EVIDENCE.md ("Fewer PGD steps").
    presets: dict = field(default_factory=dict)
    tiny_resolution: int = TINY_RESOLUTION

    @property
    def pgd_defaults(self) -> dict:
        """The official attack's budget, step and steps (config.PGDConfig fields)."""
        return {"eps": self.eps, "alpha": self.alpha, "steps": self.steps}

    def options_for(self, role: str) -> list[FamilyOption]:
        return [o for o in self.options if role in o.roles]


_VLM_REFRESH = Flag(
    "--vlm-refresh",
    "re-read the perturbed image with Qwen2.5-VL every K PGD steps, without gradient "
    f"(default {VLM_REFRESH} = every step, as the official attack; 0 = read the clean image once)",
    type=int,
)
_OFFLOAD = Flag(
    "--offload", "diffusers model CPU offload: lowest GPU memory, slower", action="store_true", default=False
)

FAMILIES = {
    f.name: f
    for f in (
        Family(
            name="flux_kontext",
            title="FLUX.1-Kontext",
            target="decontext.editors.flux_kontext:FluxKontextEditor",
            capabilities=DIT,
            min_resolution=16,
            eps=12.75,
            eps_note="the paper's 0.1 on [-1, 1]",
            alpha=0.6375,
            steps=800,
            model_help="'toy' (the trained embedded editor; versions by name, see docs/TOY.md), "
            "'tiny' (random weights, smoke test), "
            "or a FLUX.1-Kontext hub id / local diffusers folder",
            attack_description="Protect images against FLUX.1-Kontext with DeContext (or a baseline, --method).\n\n"
            "    decontext attack --model toy --input face.png --output protected/",
            edit_description="Edit clean or protected images with FLUX.1-Kontext "
            "(the real diffusers FluxKontextPipeline).\n"
            "Defaults follow the DeContext paper's editing protocol: 20 steps, guidance 3.5, 512x512, seed 42.",
            auto_resolution_note="what FluxKontextPipeline picks; 512 = the paper's",
            options=(
                FamilyOption(
                    Flag(
                        "--quantize",
                        "bitsandbytes weight-quantised transformer for small GPUs (CUDA only)",
                        type=str,
                        choices=("8bit", "4bit"),
                    ),
                    ("attack", "edit"),
                    "quantize",
                ),
                FamilyOption(
                    Flag(
                        "--guidance",
                        "guidance-embedding value in the attack's forward passes "
                        f"(default {KONTEXT_GUIDANCE}, the official attack's)",
                    ),
                    ("attack",),
                    "guidance",
                ),
                FamilyOption(_OFFLOAD, ("edit",), "offload"),
            ),
            aliases=("kontext",),
            pipelines=("FluxKontextPipeline",),
            hub_ids=("black-forest-labs/FLUX.1-Kontext",),
            regulator=True,
        ),
        Family(
            name="step1x_edit",
            title="Step1X-Edit",
            target="decontext.editors.step1x_edit:Step1XEditor",
            capabilities=DIT,
            min_resolution=16,
            eps=25.5,
            eps_note="the official script's 0.10 on [0, 1]",
            alpha=1.275,
            steps=800,
            model_help="'tiny' (random weights, smoke test: a tiny checkpoint in the official layout, "
            "written and read back), "
            "or an official Step1X-Edit .safetensors file / a folder holding one "
            "(e.g. stepfun-ai/Step1X-Edit downloaded)",
            attack_description="Protect images against Step1X-Edit with DeContext (or a baseline, --method).\n\n"
            "    decontext attack --family step1x_edit --model tiny --input photo.jpg --output protected/\n\n"
            "Defaults are the official Step1X attack's: it works on [0, 1] pixels with eps 0.10 and step 0.005,\n"
            "i.e. 25.5/255 and 1.275/255 (twice the Kontext attack's budget, which works on [-1, 1]).",
            edit_description="Edit clean or protected images with Step1X-Edit "
            "(the official sampler: 28 steps, true CFG 6.0, size level 512).",
            auto_resolution_note="the official resize to an area of ~512^2, any aspect ratio",
            method_defaults={"t_one_every": 10},
            # Fast on this family: 200 steps and no stopping rule. Its loss jumps every 10th step (sigma 1), and
            # the shared rule ended 3 of 8 tiny-model runs by step 84 well above the paper's share (EVIDENCE.md).
            presets={"fast": {"steps": 200, "stop_patience": 0}},
            options=(
                FamilyOption(
                    Flag(
                        "--vae",
                        "FLUX VAE: the official vae.safetensors or a diffusers AutoencoderKL folder "
                        "(default: beside the checkpoint)",
                        type=str,
                    ),
                    ("attack", "edit"),
                    "vae",
                ),
                FamilyOption(
                    Flag(
                        "--vlm",
                        "Qwen2.5-VL-7B-Instruct folder or hub id "
                        "(default: Qwen2.5-VL-7B-Instruct/ beside the checkpoint, "
                        "else Qwen/Qwen2.5-VL-7B-Instruct)",
                        type=str,
                    ),
                    ("attack", "edit"),
                    "vlm",
                ),
                FamilyOption(
                    Flag(
                        "--prefix-file",
                        "text file with the official conditioning prefix "
                        "(Qwen25VL_7b_PREFIX in the official repo's modules/conditioner.py); "
                        "required for a real checkpoint",
                        type=str,
                    ),
                    ("attack", "edit"),
                    "prefix_file",
                ),
                FamilyOption(
                    Flag(
                        "--vlm-offload",
                        "keep Qwen2.5-VL on the CPU, on the GPU only while it encodes (stage offload)",
                        action="store_true",
                        default=False,
                    ),
                    ("attack", "edit"),
                    "vlm_offload",
                ),
                FamilyOption(_VLM_REFRESH, ("attack",), "vlm_refresh"),
            ),
            aliases=("step1x",),
            hub_ids=("stepfun-ai/Step1X-Edit",),
        ),
        Family(
            name="instruct_pix2pix",
            title="InstructPix2Pix",
            target="decontext.editors.instruct_pix2pix:InstructPix2PixEditor",
            capabilities=frozenset({"text_cross_attention", "diffusion_loss", "vae", "text_embeddings", "sampling"}),
            # The SD-immunisation literature's usual budget (PhotoGuard, Mist: 16/255);
            # no official DANP/TDAE figures exist.
            min_resolution=64,
            eps=16.0,
            eps_note="the usual SD-immunisation budget",
            alpha=1.0,
            steps=200,
            method="encoder",
            model_help="'toy' or 'toy-ip2p' (the trained toy InstructPix2Pix of the faces world), "
            "'tiny' (random weights, smoke test), "
            "or an InstructPix2Pix hub id / local diffusers folder (e.g. timbrooks/instruct-pix2pix)",
            attack_description="Protect images against InstructPix2Pix "
            "(--method encoder, flow_loss: the noise-prediction loss, or noise).\n\n"
            "    decontext attack --family instruct_pix2pix --model tiny --input photo.jpg --output protected/\n\n"
            "DeContext does not apply: InstructPix2Pix reads the source through its input channels, not attention.",
            edit_description="Edit clean or protected images with InstructPix2Pix "
            "(the real diffusers StableDiffusionInstructPix2PixPipeline).\n"
            "Defaults are the official edit CLI's: 100 steps, text guidance 7.5, image guidance 1.5, 512 px, seed 42.",
            auto_resolution_note="the official edit CLI's: longer side 512, sides multiples of the UNet's",
            options=(
                FamilyOption(
                    Flag(
                        "--image-guidance",
                        f"image guidance scale (default {IP2P_IMAGE_GUIDANCE}, or the model folder's recommendation)",
                    ),
                    ("edit",),
                    "image_guidance",
                ),
            ),
            aliases=("ip2p",),
            pipelines=("StableDiffusionInstructPix2PixPipeline",),
            hub_ids=("timbrooks/instruct-pix2pix",),
        ),
        Family(
            name="flux2",
            title="FLUX.2",
            target="decontext.editors.flux2:Flux2Editor",
            capabilities=DIT,
            # the FLUX.2 pipelines refuse reference images with a side under 64 px
            # (the attack path takes any multiple of 16)
            min_resolution=64,
            eps=12.75,
            eps_note="the DeContext paper's 0.1 on [-1, 1]",
            alpha=0.6375,
            steps=800,
            model_help="'tiny' (random-weight FLUX.2 [klein], smoke test), "
            "or a FLUX.2 [dev] / [klein] hub id / local diffusers folder",
            attack_description="Protect images against FLUX.2 ([dev] or [klein]) "
            "with DeContext (or a baseline, --method).\n"
            "Default blocks: the paper's single:0-25/38 by relative depth, i.e. the front two thirds of the\n"
            "parallel single blocks (0-32 of the 48 in diffusers' default, [dev], configuration).\n\n"
            "    decontext attack --family flux2 --model tiny --input photo.jpg --output protected/",
            edit_description="Edit clean or protected images with FLUX.2 "
            "(the real diffusers Flux2Pipeline / Flux2KleinPipeline).",
            auto_resolution_note="what the FLUX.2 pipeline picks: "
            "the image's size, shrunk to 1024x1024 px area when larger",
            options=(
                FamilyOption(
                    Flag(
                        "--guidance",
                        "guidance-embedding value in the attack's forward passes "
                        f"([dev] only; default {FLUX2_GUIDANCE})",
                    ),
                    ("attack",),
                    "guidance",
                ),
                FamilyOption(_OFFLOAD, ("edit",), "offload"),
            ),
            aliases=("flux2",),
            pipelines=("Flux2Pipeline", "Flux2KleinPipeline"),
            hub_ids=("black-forest-labs/FLUX.2",),
        ),
        Family(
            name="qwen_image_edit",
            title="Qwen-Image-Edit",
            target="decontext.editors.qwen_image_edit:QwenImageEditEditor",
            capabilities=frozenset({"context_attention", "diffusion_loss", "vae", "text_embeddings", "sampling"}),
            min_resolution=16,
            eps=12.75,
            eps_note="the Kontext attack's 0.1 on [-1, 1]",
            alpha=0.6375,
            steps=800,
            model_help="'tiny' (random weights, smoke test) "
            "or a Qwen-Image-Edit hub id / local diffusers folder (e.g. Qwen/Qwen-Image-Edit)",
            attack_description="Protect images against Qwen-Image-Edit with DeContext (or a baseline, --method).\n"
            "Blocks: Qwen-Image has ONE stream of 60 dual-stream blocks, named double.0-59. A relative range of\n"
            "another stream is read as the same relative depth of it: the default single:0-25/38 (the paper's)\n"
            "means double.0-40, its front two thirds; double:... ranges name its blocks directly.\n\n"
            "    decontext attack --family qwen_image_edit --model tiny --input photo.jpg --output protected/",
            edit_description="Edit clean or protected images with Qwen-Image-Edit "
            "(the real diffusers QwenImageEditPipeline).\n"
            "Defaults follow the model's published usage: 50 steps, true CFG 4.0 (negative prompt ' '), ~1024^2 area.",
            auto_resolution_note="what QwenImageEditPipeline picks: ~1024^2 area at the image's aspect ratio",
            options=(FamilyOption(_VLM_REFRESH, ("attack",), "vlm_refresh"),),
            aliases=("qwen",),
            pipelines=("QwenImageEditPipeline", "QwenImageEditPlusPipeline"),
            hub_ids=("Qwen/Qwen-Image-Edit",),
        ),
    )
}
EDITORS = {name: family.target for name, family in FAMILIES.items()}  # family -> "module:Class"
DEFAULT_FAMILY = "flux_kontext"


def family(name: str) -> Family:
    """A family by registry key or short name (``kontext``, ``step1x``, ``ip2p``, ``flux2``, ``qwen``)."""
    if name in FAMILIES:
        return FAMILIES[name]
    for entry in FAMILIES.values():
        if name in entry.aliases:
            return entry
    raise ValueError(
        f"unknown editor family {name!r} (choose from {', '.join(FAMILIES)}, "
        f"or {', '.join(a for f in FAMILIES.values() for a in f.aliases)})"
    )


def family_of_model(model: str | None) -> str | None:
    """The family a ``--model`` value belongs to, read without loading anything: a toy's name, a folder's
    model_index.json (or an official Step1X-Edit .safetensors), a known hub id; None when it does not say
    (``tiny`` belongs to every family)."""
    if not model or model == "tiny":
        return None
    from ..toy.names import is_toy_model, toy_family

    if is_toy_model(model):
        return toy_family(model) if model != "toy" else DEFAULT_FAMILY
    path = Path(model)
    if path.suffix == ".safetensors" or (path.is_dir() and any(path.glob("step1x*.safetensors"))):
        return "step1x_edit"
    index = path / "model_index.json"
    if index.is_file():
        try:
            name = json.loads(index.read_text()).get("_class_name")
        except (OSError, ValueError):
            return None
        return next((f.name for f in FAMILIES.values() if name in f.pipelines), None)
    return next((f.name for f in FAMILIES.values() if any(str(model).startswith(h) for h in f.hub_ids)), None)


def editor_class(name: str) -> type:
    module, _, cls = family(name).target.partition(":")
    return getattr(importlib.import_module(module), cls)


def declared_resolution(model: str, family_name: str) -> str | int:
    """The working resolution a model declares for itself: the tiny model's (``Family.tiny_resolution``),
    a trained folder's ``decontext_toy.json`` ``resolution`` (the toys: 64), else ``auto`` (what the
    family's pipeline picks for the real checkpoints)."""
    if model == "tiny":
        return family(family_name).tiny_resolution
    from ..toy.names import is_toy_model, toy_editor_dir

    folder = toy_editor_dir(model, family(family_name).name) if is_toy_model(model) else Path(model)
    settings = folder / "decontext_toy.json"
    if settings.is_file():
        try:
            return json.loads(settings.read_text()).get("resolution", "auto")
        except (OSError, ValueError):
            return "auto"
    return "auto"


def resolve_dtype(dtype, device):
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r} (choose from auto, {', '.join(table)})")
    return table[dtype]


def resolve_device(device):
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_editor(model: str, family_name: str | None = None, device="auto", dtype="auto", **options):
    """An editor for a ``--model`` value (``toy``, ``tiny``, a hub id, a folder, ...) of ``family_name``
    (default: the model's own, else FLUX.1-Kontext); ``options`` are the family's own (its ``load``).
    The editor's ``default_resolution`` is the model's declared one (``declared_resolution``)."""
    name = family(family_name or family_of_model(model) or DEFAULT_FAMILY).name
    device = resolve_device(device)
    editor = editor_class(name).load(model, device=device, dtype=resolve_dtype(dtype, device), **options)
    editor.default_resolution = declared_resolution(model, name)
    return editor


def __getattr__(attr):  # the seam's types, imported on first use (they need torch)
    if attr in ("Condition", "Editor", "Layout", "resolve_blocks"):
        from . import base

        return getattr(base, attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


__all__ = [
    "CAPABILITIES",
    "EDITORS",
    "FAMILIES",
    "Family",
    "FamilyOption",
    "declared_resolution",
    "editor_class",
    "family",
    "family_of_model",
    "load_editor",
    "resolve_device",
    "resolve_dtype",
]
