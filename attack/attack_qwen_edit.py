#!/usr/bin/env python
"""Protect images against Qwen-Image-Edit with DeContext (or a baseline, --method).

    python attack/attack_qwen_edit.py --model tiny --input photo.jpg --output protected/
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without `pip install -e .`

from decontext.cli import attack_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(attack_main("qwen_image_edit"))
