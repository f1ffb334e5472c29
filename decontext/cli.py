"""Pieces shared by the command-line scripts (attack/, inference/): common flags and quiet logging."""

from __future__ import annotations

import argparse
import logging
import os
import warnings


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny", help="'tiny' (random weights, smoke test), 'toy' (the trained embedded editor), or a FLUX.1-Kontext hub id / local diffusers folder")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    parser.add_argument("--quantize", choices=["8bit", "4bit"], default=None, help="bitsandbytes weight-quantised transformer for small GPUs (CUDA only)")


def resolution_arg(value: str):
    if value in ("auto", "native"):
        return value
    try:
        side = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution must be 'auto', 'native' or a number of pixels, got {value!r}") from None
    if side <= 0:
        raise argparse.ArgumentTypeError(f"resolution must be positive, got {side}")
    return side


def quiet_libraries() -> None:
    """Silence library chatter (weight-loading bars, dtype-cast notes) so our own progress stays readable."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("diffusers", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass
    warnings.filterwarnings("ignore", category=FutureWarning)
