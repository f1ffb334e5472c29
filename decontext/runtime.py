"""The process's environment for the library's workers (the commands and the cluster's actors alike):
quiet third-party libraries, and torch's cuDNN attention turned off for attacks."""

from __future__ import annotations

import logging
import os
import warnings


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


def avoid_cudnn_attention() -> bool:
    """Turn off torch's cuDNN backend of scaled_dot_product_attention for this process (flash and memory-
    efficient attention remain) unless ``DECONTEXT_CUDNN_SDPA=1``; returns whether it was turned off.

    Why: on an H100 (torch 2.11.0+cu130) a FLUX.1-Kontext forward+backward whose full-sequence attention
    went through cuDNN failed with an illegal memory access ("mha_graph.execute ... is_good()" under
    CUDA_LAUNCH_BLOCKING) when it was the first step of a process, with and without checkpointing; with
    the backend off the same step ran, and faster (docs/PERFORMANCE.md). The attacks take gradients
    through attention, so every attack turns it off; editing alone is left as it is."""
    import torch

    if os.environ.get("DECONTEXT_CUDNN_SDPA") == "1" or not hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
        return False
    torch.backends.cuda.enable_cudnn_sdp(False)
    return True
