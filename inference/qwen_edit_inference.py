#!/usr/bin/env python
"""Edit clean or protected images with Qwen-Image-Edit (the real diffusers QwenImageEditPipeline).

    python inference/qwen_edit_inference.py --model tiny --images protected/ --output edits/protected

Writes OUTPUT/<image stem>/<prompt index>/seed<k>.png and OUTPUT/index.json. Defaults follow the model's
published usage: 50 steps, true CFG 4.0 against a " " negative prompt, ~1024^2 area, seed 42.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without `pip install -e .`

from decontext.cli import inference_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(inference_main("qwen_image_edit"))
