#!/usr/bin/env python
"""Protect images against FLUX.2 ([dev] or [klein]) with DeContext (or a baseline, --method).

    python attack/attack_flux2.py --model tiny --input photo.jpg --output protected/
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without `pip install -e .`

from decontext.cli import attack_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(attack_main("flux2"))
