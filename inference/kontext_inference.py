#!/usr/bin/env python
"""Edit clean or protected images with FLUX.1-Kontext (the real diffusers pipeline).

    python inference/kontext_inference.py --model tiny --images protected/ --output edits/protected

Writes OUTPUT/<image stem>/<prompt index>/seed<k>.png and OUTPUT/index.json. Defaults follow the
DeContext paper's editing protocol: 20 steps, guidance 3.5, 512x512, seed 42, the project's prompt pool.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without `pip install -e .`

from decontext.cli import inference_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(inference_main("flux_kontext"))
