"""What the whole suite shares.

- ``tiny_editor(family)``: one tiny editor per family per test process, built once by ``load_editor("tiny",
  family)``; every call hands out a deep copy (a few ms), so a test that swaps processors, releases text
  encoders or switches checkpointing on changes nothing for the next test.
- ``_torch_threads_restored``: every test leaves torch's thread count as it found it.
- Ordering for parallel runs (scripts/test.sh runs ``pytest -n 2 --dist loadfile --no-loadscope-reorder``; without
  the last flag xdist re-sorts the files by their number of tests): files are handed out longest first, by
  ``FILE_SECONDS`` (measured), then files with a test marked ``slow``, then the rest, so the long ones start at
  once and the short files fill in around them instead of one worker finishing a long file alone at the end
  (longest-processing-time-first scheduling). Within a file the order stays the file's own.
"""

from __future__ import annotations

import copy

import pytest


@pytest.fixture(scope="session")
def _tiny_editors():
    return {}


@pytest.fixture
def tiny_editor(_tiny_editors):
    """``tiny_editor(family)`` -> a fresh copy of this process's tiny editor of ``family`` (CPU, float32)."""

    def get(family: str):
        if family not in _tiny_editors:
            from decontext.editors import load_editor

            _tiny_editors[family] = load_editor("tiny", family, "cpu", "float32")
        return copy.deepcopy(_tiny_editors[family])

    return get


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """A test that sets torch's thread count (a training script's ``--threads`` run in this process) leaves it as
    it found it: the next test in the same process sums floats in the same order as when run alone (the golden
    values of tests/test_golden.py differ in their last bits on one thread)."""
    import torch

    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


# Seconds each long file took in a two-worker run of the whole suite on 2 cores (pytest --junitxml, summed per
# file; 2026-12-06). Only the order matters: a stale figure costs balance, never a result.
FILE_SECONDS = {
    "test_toy_editor.py": 157,
    "test_hardening_attack.py": 131,
    "test_cluster.py": 117,
    "test_amortized.py": 80,
    "test_cli_attack.py": 74,
    "test_sweep.py": 65,
    "test_compose.py": 56,
    "test_benchmark.py": 46,
    "test_instruct_pix2pix.py": 46,
    "test_step1x_edit.py": 42,
    "test_bench.py": 41,
    "test_toy_train.py": 37,
    "test_robust_objectives.py": 35,
    "test_distributed.py": 31,
    "test_serve_ray.py": 31,
    "test_app.py": 30,
    "test_inference.py": 28,
    "test_conformance.py": 22,
    "test_serve.py": 22,
    "test_metrics_dlib.py": 19,
    "test_layout.py": 16,
    "test_compute_metrics.py": 16,
    "test_golden.py": 15,
    "test_batch.py": 13,
}


def pytest_collection_modifyitems(config, items):
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}

    def cost(item):
        return FILE_SECONDS.get(item.path.name, 10 if item.path in slow_files else 0)

    items.sort(key=lambda item: -cost(item))  # stable: every file keeps its own order
