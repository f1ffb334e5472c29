"""UVR (decontext.safety.uvr) on tiny FLUX models built offline: localisation, restriction maths, its
window, bit-identity when nothing is flagged, anchor files, collection, and the erase-rate metric."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from decontext.cli import uvr as uvr_flags
from decontext.editors.base import Layout
from decontext.editors.flux_kontext import FluxKontextEditor
from decontext.metrics.concept import erase_rate
from decontext.safety import uvr
from decontext.safety.localize import _Geometry

SIZE = (64, 96)  # a 4 x 6 token grid on the tiny model (8x VAE, 2x2 packing)


@pytest.fixture(scope="module")
def pipe():
    return FluxKontextEditor.tiny(seed=5).pipe


@pytest.fixture(scope="module")
def t2i_pipe(pipe):
    from diffusers import FluxPipeline

    t2i = FluxPipeline.from_pipe(pipe)
    t2i.set_progress_bar_config(disable=True)
    return t2i


def _image(seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (SIZE[0], SIZE[1], 3), dtype=np.uint8))


def edit(pipe, prompts=("make it red", "add a hat"), steps=4, seed=0):
    images = [_image(i) for i in range(len(prompts))]
    return pipe(
        image=images,
        prompt=list(prompts),
        height=SIZE[0],
        width=SIZE[1],
        max_area=SIZE[0] * SIZE[1],
        _auto_resize=False,
        num_inference_steps=steps,
        guidance_scale=2.5,
        generator=torch.Generator().manual_seed(seed),
        max_sequence_length=32,
        output_type="np",
    ).images


def generate(t2i_pipe, prompts=("a cat", "a hat"), steps=4, seed=0):
    return t2i_pipe(
        prompt=list(prompts),
        height=SIZE[0],
        width=SIZE[1],
        num_inference_steps=steps,
        guidance_scale=2.5,
        generator=torch.Generator().manual_seed(seed),
        max_sequence_length=32,
        output_type="np",
    ).images


def random_anchors(pipe, block="single.1", count=3, seed=0):
    attn = pipe.transformer.single_transformer_blocks[0].attn
    gen = torch.Generator().manual_seed(seed)
    return uvr.make_anchors({"hat": torch.randn(count, attn.heads, attn.head_dim, generator=gen)}, block, "edit")


# ------------------------------------------------------------------------------------------ localisation
def test_localize_recovers_a_planted_pattern_and_drops_specks():
    scores = np.zeros((16, 16), dtype=np.float32)
    scores[3:9, 4:11] = 1.0  # the planted region ...
    scores[5, 7] = 0.0  # ... with a hole (filled back)
    scores[6, 5] = 0.1  # ... and a weak patch inside (closing + filling keep it)
    scores[13, 1] = 1.0  # a one-patch speck: below min_area
    config = uvr.UVRConfig.preset("edit", threshold=0.5, ring_radius=1, ring_iterations=1)
    core, ring = uvr.localize(scores, config)
    planted = np.zeros_like(core)
    planted[3:9, 4:11] = True
    assert np.array_equal(core, planted)
    # ring = one dilation by the 3x3 ellipse (a cross) minus the core
    grown = planted.copy()
    grown[1:, :] |= planted[:-1, :]
    grown[:-1, :] |= planted[1:, :]
    grown[:, 1:] |= planted[:, :-1]
    grown[:, :-1] |= planted[:, 1:]
    assert np.array_equal(ring, grown & ~planted)


def test_localize_keeps_components_by_mass_ratio_and_count():
    scores = np.zeros((14, 14), dtype=np.float32)
    scores[2:5, 2:5] = 2.0  # heavy component (softmax mass ~ all of it)
    scores[8:11, 8:11] = 0.7  # light component
    official_t2i = uvr.UVRConfig.preset("t2i", threshold=0.6)
    core, ring = uvr.localize(scores, official_t2i)
    assert core[2:5, 2:5].all() and core.sum() == 9 and not ring.any()
    both = uvr.UVRConfig.preset("t2i", threshold=0.6, keep="topk_area", top_k=2)
    assert uvr.localize(scores, both)[0].sum() == 18
    assert not uvr.localize(scores, uvr.UVRConfig.preset("t2i", threshold=2.5))[0].any()  # nothing above the gate


def test_localize_caps_the_flagged_share_by_score():
    scores = np.linspace(1, 2, 64, dtype=np.float32).reshape(8, 8)
    core, _ = uvr.localize(scores, uvr.UVRConfig.preset("t2i", threshold=0.5, mass_ratio=1.0, max_flagged=0.25))
    assert core.sum() == 16 and core.reshape(-1)[-16:].all()  # the 16 highest scores


def test_patch_scores_match_the_official_mean_over_heads_and_anchor_tokens():
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(2, 5, 3, 8, generator=gen)
    anchor_tokens = torch.randn(7, 3, 8, generator=gen)  # one anchor image's tokens
    brute = torch.einsum("bthd,khd->bthk", out, anchor_tokens) / math.sqrt(8)
    assert torch.allclose(uvr.patch_scores(out, anchor_tokens.mean(0)), brute.mean(dim=(2, 3)), atol=1e-6)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="keep must be"):
        uvr.UVRConfig(keep="largest")
    with pytest.raises(ValueError, match="unknown UVR settings"):
        uvr.UVRConfig.preset("edit", treshold=0.1)
    with pytest.raises(ValueError, match="no UVR preset"):
        uvr.UVRConfig.preset("video")


# ------------------------------------------------------------------------------------------ restriction maths
def _regulator(layout, grid, context_grid, core, ring, config):
    reg = uvr.Regulator(uvr.Anchors({"c": torch.zeros(1, 2, 4)}, "single.0"), config)
    reg.geometry = _Geometry(layout, grid, context_grid)
    reg.core, reg.ring = core, ring
    return reg


@pytest.mark.parametrize("context_grid", [(2, 3), (4, 6)])
def test_restricted_attention_equals_scaled_probabilities(context_grid):
    grid = (2, 3)
    layout = Layout(text=4, target=6, context=context_grid[0] * context_grid[1])
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, layout.total, 2, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    core = torch.tensor([[1, 0, 0, 0, 0, 0], [0] * 6], dtype=torch.bool)  # sample 1: nothing flagged
    ring = torch.tensor([[0, 1, 0, 1, 0, 0], [0] * 6], dtype=torch.bool)
    config = uvr.UVRConfig.preset("edit")
    reg = _regulator(layout, grid, context_grid, core, ring, config)

    def attend(q_, k_, v_):
        return torch.nn.functional.scaled_dot_product_attention(
            q_.transpose(1, 2), k_.transpose(1, 2), v_.transpose(1, 2)
        ).transpose(1, 2)

    got = reg.restricted_attention(q, k, v, attend)
    # brute force: softmax, scale entries, no renormalisation
    p = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / 2.0, dim=-1)
    factor_grid = torch.ones(2, *grid, dtype=torch.float64)
    factor_grid[ring.reshape(2, *grid)] = config.ring_factor
    factor_grid[core.reshape(2, *grid)] = config.core_factor
    context = torch.nn.functional.interpolate(factor_grid[:, None], size=context_grid, mode="nearest")[:, 0].reshape(
        2, -1
    )
    scale = torch.ones_like(p)
    queries = slice(0, layout.text + layout.target)
    scale[:, :, queries, layout.context_slice] = context[:, None, None, :]
    scale[0, :, layout.target_slice, : layout.text + layout.target] *= config.boost  # only the flagged sample
    want = torch.einsum("bhqk,bkhd->bqhd", p * scale, v)
    assert torch.allclose(got, want, atol=1e-10)
    assert torch.allclose(got[1], attend(q, k, v)[1], atol=1e-12)  # the unflagged sample: stock attention


def test_replace_touches_only_flagged_target_tokens():
    layout = Layout(text=3, target=4, context=0)
    out = torch.randn(1, 7, 2, 4)
    core = torch.tensor([[0, 1, 1, 0]], dtype=torch.bool)
    reg = _regulator(layout, (2, 2), None, core, torch.zeros_like(core), uvr.UVRConfig.preset("t2i"))
    reg._noise = torch.Generator().manual_seed(0)
    got = reg.replace(out, layout)
    assert torch.equal(got[:, [0, 1, 2, 3, 6]], out[:, [0, 1, 2, 3, 6]])
    assert not torch.allclose(got[:, 4:6], out[:, 4:6])
    # the flagged rows are keep_share * out + (1 - keep_share) * N(0, 1)
    big = torch.randn(1, 3 + 2000, 2, 4) * 5 + 3
    layout_big = Layout(text=3, target=2000, context=0)
    reg.core = torch.ones(1, 2000, dtype=torch.bool)
    noise = (reg.replace(big, layout_big)[:, 3:] - 0.001 * big[:, 3:]) / 0.999
    assert abs(float(noise.mean())) < 0.05 and abs(float(noise.std()) - 1) < 0.05
    reg.core = core
    # keep_share = 1 keeps the output
    reg.config = uvr.UVRConfig.preset("t2i", keep_share=1.0)
    assert torch.allclose(reg.replace(out, layout), out)


def test_geometry_from_kontext_ids():
    from decontext.editors.flux_kontext import latent_ids

    ids = torch.cat([latent_ids(8, 12, False), latent_ids(8, 12, True)])
    geometry = uvr.geometry(ids, text_tokens=32)
    assert geometry.layout == Layout(32, 24, 24) and geometry.grid == (4, 6) and geometry.context_grid == (4, 6)
    t2i = uvr.geometry(latent_ids(8, 12, False), 7)
    assert t2i.layout == Layout(7, 24, 0) and t2i.context_grid is None


# ------------------------------------------------------------------------------------------ in the pipelines
def test_nothing_flagged_is_bit_identical_and_processors_come_back(pipe):
    stock = edit(pipe)
    stock_processors = {k: type(v) for k, v in pipe.transformer.attn_processors.items()}
    config = uvr.UVRConfig.preset("edit", threshold=1e9)
    with uvr.regulate(pipe, random_anchors(pipe), config) as reg:
        regulated = edit(pipe)
    assert reg.localizations and not any(loc.core.any() for loc in reg.localizations)  # it did localise
    assert np.array_equal(stock, regulated)
    assert {k: type(v) for k, v in pipe.transformer.attn_processors.items()} == stock_processors
    assert not pipe.transformer._forward_pre_hooks
    assert np.array_equal(edit(pipe), stock)


def test_edit_restriction_only_inside_its_window(pipe):
    stock = edit(pipe, steps=6)
    config = uvr.UVRConfig.preset("edit", threshold=-1e9, window_start=700)  # flag everything
    with uvr.regulate(pipe, random_anchors(pipe), config) as reg:
        regulated = edit(pipe, steps=6)
    timesteps = _step_times(pipe, 6)
    assert [loc.step for loc in reg.localizations] == [0]  # Kontext: the first step only
    assert {step for _, step in reg.restricted} == {i for i, t in enumerate(timesteps) if t >= 700}
    assert 0 < len(reg.restricted) < 6
    assert not np.allclose(stock, regulated)


def test_t2i_localises_every_window_step_and_replaces_there(t2i_pipe, pipe):
    stock = generate(t2i_pipe, steps=6)
    config = uvr.UVRConfig.preset("t2i", threshold=-1e9, window_start=700, min_area=1)
    anchors = random_anchors(pipe)
    with uvr.regulate(t2i_pipe, anchors, config) as reg:
        regulated = generate(t2i_pipe, steps=6)
    timesteps = _step_times(t2i_pipe, 6)
    window = {i for i, t in enumerate(timesteps) if t >= 700}
    assert {loc.step for loc in reg.localizations} == {i for i, t in enumerate(timesteps) if t > 700}
    assert {step for _, step in reg.restricted} == window
    assert all(loc.core.float().mean() >= 0.45 for loc in reg.localizations)  # capped at 2000/4096 of the patches
    assert not np.allclose(stock, regulated)
    with uvr.regulate(t2i_pipe, anchors, config):  # seeded noise: the same run twice is the same
        again = generate(t2i_pipe, steps=6)
    assert np.array_equal(regulated, again)
    with (
        pytest.raises(RuntimeError, match="needs context tokens"),
        uvr.regulate(t2i_pipe, anchors, uvr.UVRConfig.preset("edit", threshold=-1e9, localize_at="window")),
    ):
        generate(t2i_pipe, steps=6)


def _step_times(pipe, steps):
    """t (0..1000) of each sampling step, as the transformer sees it."""
    seen = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: seen.append(float(kw["timestep"][0]) * 1000), with_kwargs=True
    )
    try:
        edit(pipe, steps=steps) if hasattr(pipe, "image_processor") and "Kontext" in type(pipe).__name__ else generate(
            pipe, steps=steps
        )
    finally:
        handle.remove()
    return seen


# ------------------------------------------------------------------------------------------ anchors
def test_collect_anchors_one_per_image(pipe):
    anchors = uvr.collect_anchors(
        pipe, lambda: (edit(pipe, steps=3), edit(pipe, prompts=("x",), steps=3)), block="single.2", timesteps=1000.0
    )
    attn = pipe.transformer.single_transformer_blocks[2].attn
    assert anchors.shape == (3, attn.heads, attn.head_dim)
    window = uvr.collect_anchors(pipe, lambda: edit(pipe, steps=3), block="single.2", timesteps=(0.0, 1000.0))
    assert window.shape == (2, attn.heads, attn.head_dim) and not torch.allclose(window, anchors[:2])
    with pytest.raises(ValueError, match="no sampling step"):
        uvr.collect_anchors(pipe, lambda: edit(pipe, steps=3), block="single.2", timesteps=(1001.0, 1002.0))
    with pytest.raises(ValueError, match="no block"):
        uvr.collect_anchors(pipe, lambda: None, block="single.9")
    assert uvr.default_block(pipe.transformer) == "single.1"  # 10/38 of 4 single blocks


def test_collected_anchor_is_the_recorded_block_output(pipe):
    """The anchor equals the block's attention output (target tokens, head mean over tokens) at the step."""
    captured = {}

    def hook(module, args, kwargs, output):
        captured.setdefault("out", output)

    anchors = uvr.collect_anchors(pipe, lambda: edit(pipe, prompts=("x",), steps=2), block="single.3", timesteps=1000.0)
    attn = pipe.transformer.single_transformer_blocks[3].attn
    handle = attn.register_forward_hook(hook, with_kwargs=True)
    try:
        edit(pipe, prompts=("x",), steps=2)
    finally:
        handle.remove()
    out = captured["out"].unflatten(-1, (attn.heads, attn.head_dim))  # single blocks return the attention output itself
    text = 32
    target = (SIZE[0] // 16) * (SIZE[1] // 16)
    assert torch.allclose(anchors[0], out[0, text : text + target].float().mean(0), atol=1e-5)


def test_anchor_file_round_trip(tmp_path, pipe):
    anchors = random_anchors(pipe)
    anchors.settings["prompts"] = ["a hat"]
    path = anchors.save(tmp_path / "a.safetensors")
    loaded = uvr.Anchors.load(path)
    assert (
        loaded.block == "single.1" and loaded.settings["prompts"] == ["a hat"] and loaded.settings["pipeline"] == "edit"
    )
    assert torch.equal(loaded.concepts["hat"], anchors.concepts["hat"])
    loaded.check(pipe.transformer)
    assert not list(tmp_path.glob(".*.part"))


def test_bad_anchor_files_get_clear_errors(tmp_path, pipe):
    from safetensors.torch import save_file

    with pytest.raises(uvr.AnchorFileError, match="no such anchor file"):
        uvr.Anchors.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01 not a safetensors file")
    with pytest.raises(uvr.AnchorFileError, match="junk.safetensors: not a readable safetensors file"):
        uvr.Anchors.load(junk)
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(uvr.AnchorFileError, match="not a UVR anchor file"):
        uvr.Anchors.load(plain)
    good = random_anchors(pipe).save(tmp_path / "good.safetensors")
    from safetensors import safe_open

    with safe_open(str(good), framework="pt") as f:
        meta = f.metadata()
    save_file({"anchors.hat": torch.zeros(3, 2, 5)}, str(tmp_path / "shape.safetensors"), metadata=meta)
    with pytest.raises(uvr.AnchorFileError, match=r"has shape \(3, 2, 5\)"):
        uvr.Anchors.load(tmp_path / "shape.safetensors")
    save_file({"anchors.hat": torch.full((3, 2, 16), float("nan"))}, str(tmp_path / "nan.safetensors"), metadata=meta)
    with pytest.raises(uvr.AnchorFileError, match="NaN"):
        uvr.Anchors.load(tmp_path / "nan.safetensors")
    other_model = uvr.make_anchors({"hat": torch.zeros(1, 4, 8)}, "single.1", "edit")
    with pytest.raises(uvr.AnchorFileError, match="collected on another model"):
        other_model.check(pipe.transformer)
    with pytest.raises(uvr.AnchorFileError, match="lacks"):
        uvr.make_anchors({"hat": torch.zeros(1, 2, 16)}, "single.10", "edit").check(pipe.transformer)


# ------------------------------------------------------------------------------------------ erase rate
def test_erase_rate_with_a_baseline():
    on = np.array([0, 0, 1, 0, 1, 0], dtype=bool)  # detected with the regulator
    off = np.array([1, 1, 1, 0, 1, 1], dtype=bool)  # detected without
    result = erase_rate(on, off)
    assert result["erase_rate"]["mean"] == pytest.approx(4 / 6)
    assert result["baseline_miss_rate"]["mean"] == pytest.approx(1 / 6)
    assert result["erase_rate_where_present"]["mean"] == pytest.approx(3 / 5)
    assert result["erase_rate"]["low"] <= 4 / 6 <= result["erase_rate"]["high"]
    with pytest.raises(ValueError, match="pair up"):
        erase_rate(on, off[:3])


# ------------------------------------------------------------------------------------------ command lines
def test_collect_then_edit_and_generate_under_uvr(tmp_path):
    """The whole loop on the tiny model: collect anchors (t2i and editing), refuse to overwrite, append,
    edit and generate with --uvr (recorded in index.json), and erase-rate scoring of the outputs."""
    import json

    from PIL import Image

    from decontext.cli import collect
    from decontext.cli import erase_rate as erase_rate_cli
    from decontext.cli.edit import main as inference_main
    from decontext.cli.t2i import main as t2i_main
    from decontext.metrics.concept import _outputs

    anchors = tmp_path / "anchors.safetensors"
    assert (
        collect.main(
            [
                "--pipeline",
                "t2i",
                "--model",
                "tiny",
                "--concept",
                "hat",
                "--prompt",
                "a hat",
                "--seeds",
                "0",
                "1",
                "--output",
                str(anchors),
            ]
        )
        == 0
    )
    loaded = uvr.Anchors.load(anchors)
    assert (
        loaded.concepts["hat"].shape == (2, 2, 16) and loaded.block == "single.1" and loaded.settings["seeds"] == [0, 1]
    )
    assert (
        collect.main(
            ["--pipeline", "t2i", "--model", "tiny", "--concept", "hat", "--prompt", "a hat", "--output", str(anchors)]
        )
        == 2
    )  # exists
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(images / "a.png")
    (images / "broken.png").write_bytes(b"not a png")
    status = collect.main(
        [
            "--pipeline",
            "edit",
            "--model",
            "tiny",
            "--concept",
            "cap",
            "--images",
            str(images),
            "--prompt",
            "add a cap",
            "--append",
            "--output",
            str(anchors),
        ]
    )
    assert status == 1  # the broken image is reported, the rest collected
    assert set(uvr.Anchors.load(anchors).concepts) == {"hat", "cap"}

    out = tmp_path / "edits"
    args = [
        "--model",
        "tiny",
        "--images",
        str(images / "a.png"),
        "--prompt",
        "add a hat",
        "--steps",
        "2",
        "--resolution",
        "64",
        "--no-progress",
    ]
    assert inference_main(family="flux_kontext", argv=args + ["--output", str(out / "off")]) == 0
    assert (
        inference_main(
            family="flux_kontext",
            argv=args + ["--output", str(out / "on"), "--uvr", str(anchors), "--uvr-threshold", "1e9"],
        )
        == 0
    )
    record = json.loads((out / "on" / "index.json").read_text())["settings"]["uvr"]
    assert (
        record["config"]["restrict"] == "attention"
        and record["config"]["threshold"] == 1e9
        and record["concepts"] == ["cap", "hat"]
    )
    # nothing flagged: the regulated edit is the stock edit, byte for byte
    assert (out / "on" / "a" / "0" / "seed42.png").read_bytes() == (out / "off" / "a" / "0" / "seed42.png").read_bytes()
    assert (
        inference_main(family="flux_kontext", argv=args + ["--output", str(out / "off"), "--uvr", str(anchors)]) == 2
    )  # would mix settings
    assert inference_main(family="flux_kontext", argv=args + ["--output", str(out / "on")]) == 2
    assert (
        inference_main(
            family="flux_kontext", argv=args + ["--output", str(out / "bad"), "--uvr", str(images / "broken.png")]
        )
        == 2
    )
    assert (
        inference_main(
            family="flux_kontext",
            argv=args + ["--output", str(out / "bad"), "--uvr", str(anchors), "--uvr-set", "keep=largest"],
        )
        == 2
    )

    gen = tmp_path / "t2i"
    assert (
        t2i_main(
            [
                "--model",
                "tiny",
                "--prompt",
                "a hat",
                "--seeds",
                "0",
                "--steps",
                "2",
                "--output",
                str(gen / "on"),
                "--uvr",
                str(anchors),
                "--uvr-concepts",
                "hat",
                "--uvr-set",
                "threshold=-1e9",
                "window_start=0",
                "min_area=1",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        t2i_main(
            [
                "--model",
                "tiny",
                "--prompt",
                "a hat",
                "--seeds",
                "0",
                "--steps",
                "2",
                "--output",
                str(gen / "off"),
                "--no-progress",
            ]
        )
        == 0
    )
    on_png, off_png = gen / "on" / "0" / "seed0.png", gen / "off" / "0" / "seed0.png"
    assert on_png.read_bytes() != off_png.read_bytes()  # everything flagged: the generation changed
    assert (
        t2i_main(
            [
                "--model",
                "tiny",
                "--prompt",
                "a hat",
                "--output",
                str(gen / "x"),
                "--uvr",
                str(anchors),
                "--uvr-concepts",
                "dog",
                "--no-progress",
            ]
        )
        == 2
    )
    assert (
        t2i_main(
            [
                "--model",
                "tiny",
                "--prompt",
                "a hat",
                "--seeds",
                "0",
                "--steps",
                "2",
                "--output",
                str(gen / "on"),
                "--no-progress",
            ]
        )
        == 2
    )  # would mix
    # exact resume: the same settings skip, other steps or prompt text are refused (the image kept), --overwrite redoes
    off = ["--model", "tiny", "--seeds", "0", "--output", str(gen / "off"), "--no-progress"]
    kept = off_png.read_bytes()
    assert t2i_main([*off, "--prompt", "a hat", "--steps", "2"]) == 0 and off_png.read_bytes() == kept
    assert t2i_main([*off, "--prompt", "a hat", "--steps", "3"]) == 1 and off_png.read_bytes() == kept
    assert t2i_main([*off, "--prompt", "a red hat", "--steps", "2"]) == 1 and off_png.read_bytes() == kept
    assert t2i_main([*off, "--prompt", "a hat", "--steps", "3", "--overwrite"]) == 0 and off_png.read_bytes() != kept
    record = json.loads((gen / "off" / "index.json").read_text())["images"][0]
    assert record["status"] == "done" and "steps: 2 -> 3" in record["redone"]

    on = _outputs(gen / "on", None)
    assert list(on) == ["0/seed0.png"]
    # editing folders (paths relative to the run folder) pair with their baseline by the path inside them
    edited = _outputs(out / "on", "custom")
    assert set(edited) == set(_outputs(out / "off", "custom")) == {"a/0/seed42.png"} and all(
        p.is_file() for p in edited.values()
    )
    result_file = tmp_path / "erase.json"
    assert (
        erase_rate_cli.main(
            [
                "--images",
                str(gen / "on"),
                "--baseline",
                str(gen / "off"),
                "--detector",
                "toy:hat",
                "--output",
                str(result_file),
            ]
        )
        == 0
    )
    result = json.loads(result_file.read_text())
    assert result["n"] == 1 and result["detector"] == "toy:hat" and result["erase_rate"]["mean"] in (0.0, 1.0)
    assert (
        erase_rate_cli.main(["--images", str(gen / "on"), "--baseline", str(tmp_path), "--detector", "toy:hat"]) == 2
    )  # nothing to pair with
    assert erase_rate_cli.main(["--images", str(gen / "on"), "--detector", "toy:tail"]) == 2
    with pytest.raises(ValueError, match="cannot be applied"):
        _outputs(images, "hat")


def test_parse_settings_types_and_errors():
    assert uvr_flags.parse_settings(["threshold=0.3", "min_area=2", "fill_holes=false", "restrict=replace"]) == {
        "threshold": 0.3,
        "min_area": 2,
        "fill_holes": False,
        "restrict": "replace",
    }
    with pytest.raises(ValueError, match="takes a int"):
        uvr_flags.parse_settings(["min_area=two"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        uvr_flags.parse_settings(["threshold"])
