#!/usr/bin/env python
"""Text-to-image with FLUX.1-dev (the real diffusers FluxPipeline), optionally under UVR.

    python inference/flux_t2i.py --model toy-v2 --prompt "Put a hat on this person." --seeds 0 1 --output runs/t2i/off
    python inference/flux_t2i.py --model toy-v2 --prompt "Put a hat on this person." --seeds 0 1 --output runs/t2i/uvr --uvr ANCHORS
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without `pip install -e .`

from decontext.safety.t2i import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
