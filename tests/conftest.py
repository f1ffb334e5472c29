"""What the whole suite shares.

- ``tiny_editor(family)``: one tiny editor per family per test process, built once by ``load_editor("tiny",
  family)``; every call hands out a deep copy (a few ms), so a test that swaps processors, releases text
  encoders or switches checkpointing on changes nothing for the next test.
- Ordering for parallel runs (scripts/test.sh runs ``pytest -n 2 --dist loadfile``): the files that hold a
  test marked ``slow`` are handed out first, so the long ones start at once and the short files fill in
  around them instead of one worker finishing a long file alone at the end (longest-first scheduling).
  Within a file the order stays the file's own.
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


def pytest_collection_modifyitems(config, items):
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: every file keeps its own order
