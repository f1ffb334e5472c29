#!/usr/bin/env python
"""Edit clean or protected images with Step1X-Edit (the official sampler).

    python inference/step1x_inference.py --model tiny --images protected/ --output edits/protected

Same flags, outputs and run-folder layout as inference/kontext_inference.py; defaults are the official
Step1X-Edit settings: 28 steps, true CFG 6.0, size level 512, seed 42, the project's prompt pool.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without `pip install -e .`

from decontext.cli import inference_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(inference_main("step1x_edit"))
