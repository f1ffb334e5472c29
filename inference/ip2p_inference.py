#!/usr/bin/env python
"""Edit clean or protected images with InstructPix2Pix (the real diffusers pipeline).

    python inference/ip2p_inference.py --model tiny --images protected/ --output edits/protected

Same flags, outputs and run-folder layout as inference/kontext_inference.py, plus --image-guidance;
defaults are the official edit CLI's: 100 steps, text guidance 7.5, image guidance 1.5, 512 px, seed 42.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without `pip install -e .`

from decontext.cli import inference_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(inference_main("instruct_pix2pix"))
