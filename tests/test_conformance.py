"""Every registered method on every registered editor, through the same attack CLI code: same flags,
same manifest, the budget kept, the method's own measurement stored, the editor left as it was."""

import json

import numpy as np
import pytest
from PIL import Image
from skimage.data import astronaut

from decontext.cli.attack import main as attack_main
from decontext.editors import EDITORS, Editor, editor_class
from decontext.editors.base import CAPABILITIES
from decontext.methods import METHODS, method_class

EXPECTED_MEASURES = {
    "decontext": {"share"},
    "noise": set(),
    "encoder": {"latent_mse"},
    "flow_loss": {"flow_mse"},
    "danp": {"attention", "noise_mse"},
    "tdae": {"discrepancy"},
    "diffusion": {"edit_mse"},
    "edit_away": {"edit_distance"},
    "amortized": {"share"},
}  # the measure of the protector's objective (toy-decontext: DeContext's share)
PROTECTOR = [
    "--protector",
    "toy-decontext",
    "--allow-transfer",
]  # trained on the toy Kontext at 16/255: a transfer everywhere here


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    Image.fromarray(astronaut()).resize((80, 48)).save(folder / "astro.png")
    return folder


def test_every_registered_method_has_a_measure_expectation():
    assert set(METHODS) == set(EXPECTED_MEASURES)


@pytest.mark.parametrize("family", list(EDITORS))
def test_editors_answer_the_protocol(family, tiny_editor):
    editor = tiny_editor(family)
    assert isinstance(editor, Editor) and editor.family == family
    assert editor.capabilities and set(editor.capabilities) <= set(CAPABILITIES)
    stock = {k: type(v) for k, v in editor.transformer.attn_processors.items()}
    if "context_attention" in editor.capabilities:
        with editor.probe(editor.resolve_blocks("single:0-25/38")):
            assert {k: type(v) for k, v in editor.transformer.attn_processors.items()} != stock
    else:  # says why, and leaves the model alone
        with pytest.raises(ValueError, match="context"):
            with editor.probe(editor.block_names[:1]):
                pass
    if "text_cross_attention" in editor.capabilities:
        with editor.text_attention(editor.block_names[:1]):
            assert {k: type(v) for k, v in editor.transformer.attn_processors.items()} != stock
    assert {k: type(v) for k, v in editor.transformer.attn_processors.items()} == stock


def applies(method: str, family: str) -> bool:
    """Whether ``method`` runs on ``family``'s editor (the amortized method with the shipped toy-decontext
    protector: where its objective, DeContext, runs)."""
    return method_class("decontext" if method == "amortized" else method).applies_to(editor_class(family))


def test_every_method_applies_to_some_editor_and_the_kontext_editor_takes_all():
    assert all(any(applies(m, f) for f in EDITORS) for m in METHODS)
    assert all(applies(m, "flux_kontext") for m in METHODS)


@pytest.mark.parametrize("family", list(EDITORS))
def test_every_method_runs_through_the_same_cli_with_the_same_manifest(family, image_dir, tmp_path, capsys):
    source = np.asarray(Image.open(image_dir / "astro.png").convert("RGB")).astype(int)
    keys = None
    for method in METHODS:
        out = tmp_path / method
        argv = [
            "--model",
            "tiny",
            "--input",
            str(image_dir),
            "--output",
            str(out),
            "--method",
            method,
            "--eps",
            "8",
            "--alpha",
            "4",
            "--steps",
            "2",
            "--resolution",
            "native",
            "--measure-draws",
            "1",
            "--no-progress",
            "--prompts",
            "data/prompts/toy_prompts.txt",
        ]
        argv += PROTECTOR if method == "amortized" else []
        if not applies(method, family):  # refused up front, by name, before any model loads or file is written
            capsys.readouterr()
            assert attack_main(family=family, argv=argv) == 2, (family, method)
            named = "its objective 'decontext'" if method == "amortized" else f"method {method!r}"
            assert f"{named} does not apply to the {family} editor" in capsys.readouterr().err
            assert not out.exists()
            continue
        assert attack_main(family=family, argv=argv) == 0, (family, method)
        manifest = json.loads((out / "manifest.json").read_text())
        entry = manifest["images"]["astro.png"]
        assert manifest["editor"] == {"family": family, "model": "tiny"}
        assert manifest["method"]["method"] == method == method_class(method).name
        assert set(entry["before"]) == set(entry["after"]) == EXPECTED_MEASURES[method], (family, method, entry)
        keys = keys or set(entry)
        assert set(entry) == keys  # one manifest shape for every method
        saved = np.asarray(Image.open(out / "astro.png")).astype(int)
        assert saved.shape == source.shape and 0 < np.abs(saved - source).max() <= 8
