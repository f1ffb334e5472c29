#!/usr/bin/env python
"""Edit clean or protected images with FLUX.2 (the real diffusers Flux2Pipeline / Flux2KleinPipeline).

    python inference/flux2_inference.py --model tiny --images protected/ --output edits/protected

Writes OUTPUT/<image stem>/<prompt index>/seed<k>.png and OUTPUT/index.json.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without `pip install -e .`

from decontext.cli import inference_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(inference_main("flux2"))
