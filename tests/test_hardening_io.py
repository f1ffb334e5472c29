"""Static guards over the repository's code (issue 17): nothing read from a file is executed.

The scan reads every Python file of the project's code folders and fails on:
- ``torch.load(...)`` (or ``load`` imported from torch) without ``weights_only=True``: a pickle can run code;
- ``trust_remote_code=True`` written as a constant (a keyword, a dict entry, or in a shell script) instead of
  being passed from an explicit user flag;
- ``pickle.load(s)``, ``numpy.load(..., allow_pickle=True)``, ``yaml.load`` without a safe loader, builtin
  ``eval``/``exec``, ``os.system`` and ``shell=True``;
- disabling Pillow's guards: ``Image.MAX_IMAGE_PIXELS = None`` or ``ImageFile.LOAD_TRUNCATED_IMAGES = True``.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CODE_DIRS = ("decontext", "attack", "inference", "eval", "bench", "scripts")


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""  # a method of a call's result (model.half().eval()), not a plain dotted name
    parts.append(node.id)
    return ".".join(reversed(parts))


def _keyword(call: ast.Call, name: str) -> ast.keyword | None:
    return next((k for k in call.keywords if k.arg == name), None)


def scan_source(source: str, filename: str = "<string>") -> list[str]:
    """Violations in one Python file, as ``file:line: what`` strings."""
    tree = ast.parse(source, filename)
    torch_load_names = {"torch.load"}
    numpy_names = {"np", "numpy"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "torch":
            torch_load_names |= {a.asname or a.name for a in node.names if a.name == "load"}
        if isinstance(node, ast.Import):
            numpy_names |= {a.asname for a in node.names if a.name == "numpy" and a.asname}
    found: list[str] = []

    def bad(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{getattr(node, 'lineno', 0)}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in torch_load_names and not _is_true(getattr(_keyword(node, "weights_only"), "value", None)):
                bad(node, f"{name}(...) without weights_only=True")
            if name in ("pickle.load", "pickle.loads", "cPickle.load", "dill.load", "joblib.load"):
                bad(node, f"{name}(...) unpickles (can run code)")
            if (
                name.split(".")[0] in numpy_names
                and name.endswith(".load")
                and _is_true(getattr(_keyword(node, "allow_pickle"), "value", None))
            ):
                bad(node, f"{name}(..., allow_pickle=True)")
            if name == "yaml.load" and "Safe" not in ast.unparse(node):
                bad(node, "yaml.load without a safe loader")
            if name in ("eval", "exec", "os.system", "os.popen"):
                bad(node, f"{name}(...)")
            if _is_true(getattr(_keyword(node, "shell"), "value", None)):
                bad(node, "shell=True")
            if _is_true(getattr(_keyword(node, "trust_remote_code"), "value", None)):
                bad(node, "trust_remote_code=True (not from a user flag)")
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=False):
                if isinstance(key, ast.Constant) and key.value == "trust_remote_code" and _is_true(value):
                    bad(node, '{"trust_remote_code": True} (not from a user flag)')
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if (
                    isinstance(target, ast.Subscript)
                    and isinstance(target.slice, ast.Constant)
                    and target.slice.value == "trust_remote_code"
                    and _is_true(node.value)
                ):
                    bad(node, 'kwargs["trust_remote_code"] = True (not from a user flag)')
                attr = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
                value = node.value
                if attr == "MAX_IMAGE_PIXELS" and (
                    value is None or (isinstance(value, ast.Constant) and not value.value)
                ):
                    bad(node, "disables PIL.Image.MAX_IMAGE_PIXELS (the decompression-bomb guard)")
                if attr == "LOAD_TRUNCATED_IMAGES" and _is_true(value):
                    bad(node, "sets ImageFile.LOAD_TRUNCATED_IMAGES = True")
    return found


def scan_shell(text: str, filename: str) -> list[str]:
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        code = line.split("#", 1)[0]
        squeezed = code.replace(" ", "")
        if "trust_remote_code=True" in squeezed or "--trust-remote-code" in code:
            found.append(f"{filename}:{number}: trust_remote_code turned on in a script")
        if "torch.load(" in code and "weights_only=True" not in squeezed:
            found.append(f"{filename}:{number}: torch.load without weights_only=True")
    return found


def _project_files() -> list[Path]:
    files = []
    for folder in CODE_DIRS:
        for root, dirs, names in os.walk(REPO / folder):
            dirs[:] = [d for d in dirs if d not in ("__pycache__", ".venv", "node_modules")]
            files += [Path(root) / n for n in names if n.endswith((".py", ".sh"))]
    return sorted(files)


def test_scanner_finds_what_it_is_meant_to_find():
    bad = """
import torch, pickle, yaml, subprocess, os
import numpy as npy
from torch import load as tload
torch.load("x.pt")
torch.load("x.pt", weights_only=False)
tload("x.pt")
pickle.load(open("x", "rb"))
npy.load("x.npy", allow_pickle=True)
yaml.load(text)
eval(text)
exec(text)
os.system("ls")
subprocess.run("ls", shell=True)
AutoModel.from_pretrained(name, trust_remote_code=True)
kwargs = {"trust_remote_code": True}
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = True
kwargs["trust_remote_code"] = True
"""
    found = scan_source(bad, "bad.py")
    assert sorted(int(f.split(":")[1]) for f in found) == list(range(5, 20)), "\n".join(found)  # one per line
    good = """
import torch, yaml
torch.load("x.pt", map_location="cpu", weights_only=True)
yaml.load(text, Loader=yaml.SafeLoader)
module.eval()
model.half().eval().load(x)
AutoModel.from_pretrained(name, trust_remote_code=args.trust_remote_code)
kwargs = {"trust_remote_code": flag}
Image.MAX_IMAGE_PIXELS = 50_000_000
"""
    assert scan_source(good, "good.py") == []
    assert len(scan_shell("python x.py --trust-remote-code\necho ok  # trust_remote_code=True\n", "s.sh")) == 1


def test_project_code_loads_no_pickles_and_runs_no_remote_code():
    files = _project_files()
    assert any(f.name == "images.py" for f in files) and any(f.suffix == ".sh" for f in files)
    violations = []
    for f in files:
        text = f.read_text(encoding="utf-8")
        rel = str(f.relative_to(REPO))
        violations += scan_source(text, rel) if f.suffix == ".py" else scan_shell(text, rel)
    assert not violations, "unsafe loading or execution:\n" + "\n".join(violations)


@pytest.mark.skipif(os.name == "nt", reason="symlinks")
def test_run_folder_reached_through_a_symlink_reads_normally(tmp_path):
    from decontext.metrics.run import load_run
    from tests.demo_run import make_demo_run

    run = make_demo_run(tmp_path / "real" / "run")
    link = tmp_path / "link"
    link.symlink_to(run, target_is_directory=True)
    data = load_run(link)
    assert data.errors == []
    edit = data.edits[0]
    assert data.image(edit.output).shape == (128, 128, 3)
    assert data.image(data.source_path(edit.stem)).shape == (128, 128, 3)


def test_csv_cells_cannot_start_a_spreadsheet_formula(tmp_path):
    """A file name or prompt such as ``=HYPERLINK(...)`` is written with a leading quote in the metrics CSV,
    so a spreadsheet shows it as text; numbers (also negative ones) and plain names are untouched."""
    import csv

    from decontext.metrics.evaluate import write_csv
    from decontext.names import csv_cell

    assert csv_cell('=HYPERLINK("http://x","y")') == '\'=HYPERLINK("http://x","y")'
    assert [csv_cell(v) for v in ("+cmd", "@SUM(A1)", "-2+3", "\tx")] == ["'+cmd", "'@SUM(A1)", "'-2+3", "'\tx"]
    assert [csv_cell(v) for v in ("-0.5", "+3", "face.png", "a=b", "caf\udce9.png")] == [
        "-0.5",
        "+3",
        "face.png",
        "a=b",
        "caf\\xe9.png",
    ]
    rows = [
        {"image": "=cmd|' /C calc'!A0.png", "prompt": "@SUM(1)", "identity_ism": -0.25},
        {"image": "ok.png", "prompt": "Add a hat.", "identity_ism": 0.5},
    ]
    write_csv(tmp_path / "m.csv", rows, ("image", "prompt"), ["identity_ism"])
    read = list(csv.DictReader((tmp_path / "m.csv").read_text().splitlines()))
    assert read[0] == {"image": "'=cmd|' /C calc'!A0.png", "prompt": "'@SUM(1)", "identity_ism": "-0.25"}
    assert read[1] == {"image": "ok.png", "prompt": "Add a hat.", "identity_ism": "0.5"}
