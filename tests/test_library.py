"""The public library surface: ``import decontext`` offers what a library user needs, lazily (no torch at
import), and the example that opens docs/USAGE.md runs as it stands and keeps its budget on the saved file."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def test_import_decontext_is_light_and_lists_its_names():
    code = (
        "import sys, decontext\n"
        "assert 'torch' not in sys.modules, 'import decontext imported torch'\n"
        "print(' '.join(decontext.__all__))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    names = set(out.split())
    for name in ("protect", "load_editor", "METHODS", "build_method", "PGDConfig", "ProtectConfig", "load_protector"):
        assert name in names


def test_every_public_name_resolves_and_unknown_names_fail():
    import pytest

    import decontext

    for name in decontext.__all__:
        assert getattr(decontext, name) is not None
    import decontext.protect  # the submodule of the same name: the package's name still calls the function

    assert callable(decontext.protect) and callable(decontext.load_editor)
    assert set(decontext.METHODS) >= {"decontext", "noise", "encoder"}
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        decontext.nothing_here  # noqa: B018


def test_the_usage_example_runs_as_written(tmp_path, monkeypatch):
    from decontext.toy.export import export_faces

    text = (ROOT / "docs" / "USAGE.md").read_text(encoding="utf-8")
    example = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert len(example.strip().splitlines()) <= 15  # a short example, as the docs promise
    export_faces(tmp_path / "faces", 1, 0)
    monkeypatch.chdir(tmp_path)
    printed = []
    exec(compile(example, "USAGE.md", "exec"), {"print": lambda *a: printed.append(" ".join(map(str, a)))})
    match = re.fullmatch(r"share (\d\.\d+) -> (\d\.\d+) in (\d+) steps", printed[-1])
    assert match, printed
    before, after, steps = float(match[1]), float(match[2]), int(match[3])
    assert after < before and 1 <= steps <= 20  # the fast rule lowered the share it optimises
    source = sorted((tmp_path / "faces").glob("id*.png"))[0]
    clean = np.asarray(Image.open(source).convert("RGB"), dtype=np.int16)
    saved = np.asarray(Image.open(tmp_path / "protected.png").convert("RGB"), dtype=np.int16)
    assert saved.shape == clean.shape and 0 < np.abs(saved - clean).max() <= 12  # floor(12.75) levels
