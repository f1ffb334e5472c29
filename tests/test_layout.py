"""The house's rules, checked on the code itself: no import cycle in the package (every import counted,
inside functions too), no sys.path edit anywhere, command lines that answer --help and flag errors
without importing torch, and an install that is not editable working from another folder."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from decontext.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "decontext"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (top-level and function-local; relative or absolute).
    An import of a package's own parent is not an edge (Python has imported it already)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle():
    edges = import_graph()
    assert len(edges) > 50 and "decontext.protect" in edges["decontext.cli.attack"] | {
        e for m in edges.values() for e in m
    }
    assert cycles(edges) == []


def test_the_cycle_finder_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_file_edits_sys_path():
    offenders = []
    for folder in ("decontext", "attack", "inference", "eval", "bench", "experiments", "scripts", "tests"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".sh") and path != Path(__file__):
                text = path.read_text(encoding="utf-8")
                if "sys.path.insert" in text or "sys.path.append" in text:
                    offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_the_brief_scripts_are_shims_of_three_statements():
    for path in [
        *sorted((ROOT / "attack").glob("*.py")),
        *sorted((ROOT / "inference").glob("*.py")),
        *sorted((ROOT / "eval").glob("*.py")),
    ]:
        body = [
            node
            for node in ast.parse(path.read_text()).body
            if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
        ]
        assert len(body) == 3, path  # import sys; from decontext.cli.X import main; sys.exit(main(...))


HEAVY = ("torch", "diffusers", "transformers")
PROBE = """
import sys
from decontext.cli import run
try:
    code = run(sys.argv[1], sys.argv[2:])
except SystemExit as exc:
    code = exc.code
print({"code": code, "heavy": sorted(m for m in %r if m in sys.modules)})
""" % (HEAVY,)


def _probe(*argv) -> dict:
    result = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, cwd=ROOT)
    return eval(result.stdout.strip().splitlines()[-1])  # the probe's own dict literal


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_answers_without_importing_torch(command):
    assert _probe(command, "--help") == {"code": 0, "heavy": []}


# modules that many processes import: Ray Data's read workers import decontext.cluster to run read_batch, and
# torch at its top cost each of them seconds of start-up (the Ray kill test took ~2x as long)
LIGHT_MODULES = ("decontext.cluster",)


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_modules_that_workers_import_load_nothing_heavy(module):
    code = f"import sys, {module}\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_flag_errors_answer_without_importing_torch(tmp_path):
    assert _probe("attack", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o")) == {
        "code": 2,
        "heavy": [],
    }
    assert _probe(
        "attack",
        "--family",
        "instruct_pix2pix",
        "--method",
        "decontext",
        "--input",
        str(tmp_path),
        "--output",
        str(tmp_path / "o"),
    ) == {"code": 2, "heavy": []}
    assert _probe(
        "attack", "--model", "toy", "--steps", "0", "--input", str(tmp_path), "--output", str(tmp_path / "o")
    ) == {"code": 2, "heavy": []}
    assert _probe("attack", "--eps", "nope", "--input", str(tmp_path), "--output", str(tmp_path / "o")) == {
        "code": 2,
        "heavy": [],
    }


def test_family_is_read_from_the_model_without_loading_it(tmp_path):
    from decontext.editors import family_of_model

    assert family_of_model("toy") == "flux_kontext" and family_of_model("toy-ip2p") == "instruct_pix2pix"
    assert (
        family_of_model("black-forest-labs/FLUX.1-Kontext-dev") == "flux_kontext"
        and family_of_model("Qwen/Qwen-Image-Edit-2509") == "qwen_image_edit"
    )
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "Flux2KleinPipeline"}))
    assert (
        family_of_model(str(tmp_path)) == "flux2"
        and family_of_model("tiny") is None
        and family_of_model("someone/unknown") is None
    )


@pytest.mark.slow
def test_a_non_editable_install_protects_a_toy_face_from_another_folder(tmp_path):
    """pip install of the built wheel (not editable) into a target folder, then the toy attack run from a
    folder that is not the repository: prompts and toy weights come from the installed package."""
    wheels, target, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    built = subprocess.run(
        [*pip, "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(wheels.glob("decontext-*.whl"))
    installed = subprocess.run(
        [*pip, "install", "--no-deps", "-q", "--target", str(target), str(wheel)], capture_output=True, text=True
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}  # the installed copy, ahead of the editable one
    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "import decontext, decontext.assets as a; print(decontext.__file__); print(a.data_dir())",
        ],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
    )
    package_file, data = where.stdout.split()
    assert Path(package_file).is_relative_to(target) and Path(data) == target / "decontext" / "data", where.stdout
    faces = subprocess.run(
        [sys.executable, "-m", "decontext", "toy-faces", "--count", "1", "--out", "faces"],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
    )
    assert faces.returncode == 0, faces.stderr[-2000:]
    attack = subprocess.run(
        [
            sys.executable,
            "-m",
            "decontext",
            "attack",
            "--model",
            "toy",
            "--input",
            "faces",
            "--output",
            "protected",
            "--steps",
            "2",
            "--measure-draws",
            "1",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
    )
    assert attack.returncode == 0, attack.stderr[-2000:]
    manifest = json.loads((work / "protected" / "manifest.json").read_text())
    entry = next(iter(manifest["images"].values()))
    assert entry["status"] == "done" and 0 < entry["max_abs_diff_levels"] <= 12 and entry["working_size"] == [64, 64]
    assert manifest["method"]["num_prompts"] > 0 and manifest["editor"] == {"family": "flux_kontext", "model": "toy"}


def _parsers():
    """Every command's parser (each editor family's flags for attack and edit)."""
    from decontext.cli import (
        amortize,
        app,
        attack,
        cluster,
        collect,
        demo,
        edit,
        erase_rate,
        evaluate,
        purify,
        runs,
        sweep,
        t2i,
        toy,
    )
    from decontext.editors import FAMILIES

    for spec in FAMILIES.values():
        yield f"attack/{spec.name}", attack.parser(spec)
        yield f"edit/{spec.name}", edit.parser(spec)
    yield "eval", evaluate.build_parser()
    yield "sweep", sweep.parser()
    yield "t2i", t2i.parser()
    yield "collect-anchors", collect.parser()
    yield "purify", purify.parser()
    yield "runs", runs.parser()
    yield "erase-rate", erase_rate.parser()
    yield "toy-faces", toy.faces_parser()
    yield "toy-eval", toy.evaluate_parser()
    yield "demo", demo.parser()
    yield "amortize", amortize.parser(FAMILIES["flux_kontext"])
    yield "cluster", cluster.parser(FAMILIES["flux_kontext"])
    yield "app", app.parser()


def test_every_flag_of_every_command_has_help():
    missing = [
        f"{name} {action.option_strings}"
        for name, parser in _parsers()
        for action in parser._actions
        if action.option_strings and not (action.help or "").strip()
    ]
    assert missing == []
