"""Text-to-image with FLUX.1-dev (diffusers' ``FluxPipeline``), optionally under UVR (``--uvr ANCHORS``).

    decontext t2i --model black-forest-labs/FLUX.1-dev --prompt "a red fox" --output runs/t2i
    python inference/flux_t2i.py --model toy-v2 --prompts data/prompts/toy_prompts.txt --seeds 0 1 --output runs/t2i/off
    python inference/flux_t2i.py --model toy-v2 ... --uvr runs/uvr/hat.safetensors --output runs/t2i/uvr

Outputs: ``OUTPUT/<prompt index>/seed<k>.png`` and ``OUTPUT/index.json``; each PNG is written under a
temporary name and renamed, and a re-run skips every image that exists.

``--model``: a FLUX.1-dev hub id or local folder, ``tiny`` (random weights, smoke test), or a toy
version trained for text-to-image as well as editing (``toy-v2``: its Kontext components, run by
``FluxPipeline``).
"""

from __future__ import annotations

T2I_DEFAULTS = {
    "num_inference_steps": 28,
    "guidance_scale": 3.5,
    "height": 1024,
    "width": 1024,
    "max_sequence_length": 512,
}  # FLUX.1-dev, as UVR ran it


def load_pipeline(model: str, device, dtype):
    """(FluxPipeline, its default settings) for a hub id / folder, ``tiny``, or a toy version."""
    from diffusers import FluxPipeline

    from ..editors.models import load_pipeline as load_folder
    from ..editors.models import model_folder, shipped_settings
    from ..toy.names import is_toy_model

    settings = dict(T2I_DEFAULTS)
    if model == "tiny":
        from ..editors.flux_kontext import FluxKontextEditor

        pipe = FluxPipeline.from_pipe(FluxKontextEditor.tiny(seed=0).pipe)
        settings.update(height=64, width=64, num_inference_steps=4, max_sequence_length=32)
    elif is_toy_model(model, "flux_kontext"):
        from diffusers import FluxKontextPipeline

        folder = model_folder(model, "flux_kontext")
        pipe = FluxPipeline.from_pipe(load_folder(FluxKontextPipeline, folder, dtype))
        shipped = shipped_settings(folder)
        settings.update(
            {
                k: shipped[k]
                for k in ("num_inference_steps", "guidance_scale", "height", "width", "max_sequence_length")
                if k in shipped
            }
        )
    else:
        model_folder(model, "flux_kontext")  # a folder must be a diffusers pipeline folder
        pipe = load_folder(FluxPipeline, model, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device=device, dtype=dtype), settings
