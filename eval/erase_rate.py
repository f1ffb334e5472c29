#!/usr/bin/env python
"""Erase rate of a concept in regulated generations (UVR), against the unregulated ones.

    python eval/erase_rate.py --images runs/t2i/uvr --baseline runs/t2i/off --detector toy:hat --category hat
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without `pip install -e .`

from decontext.metrics.concept import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
