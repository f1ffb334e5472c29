"""Registry: built-in backends, adding one (e.g. a later 'toy' backend) chosen from run.json."""

import pytest

from decontext.metrics import base
from decontext.metrics.base import EvalOptions, MetricBackend, MetricSpec, backends_for, register, registered
from decontext.metrics.run import RunInfo


def test_builtin_backends_registered_with_documented_directions():
    names = [e.name for e in registered()]
    for n in ("pixel", "lpips", "fdfr", "ism_facenet", "ism_arcface", "fdfr_dlib", "ism_dlib", "clip", "brisque"):
        assert n in names
    specs = base.all_metric_specs()
    assert specs["ism_facenet"].direction == "lower" and specs["fdfr"].direction == "higher"
    assert specs["ism_dlib"].direction == "lower" and specs["fdfr_dlib"].direction == "higher"
    assert all(s.direction in ("higher", "lower", "none") and s.description for s in specs.values())
    # Only informational metrics may have no protection direction.
    assert {n for n, s in specs.items() if s.direction == "none"} == {"edit_success", "ism_dlib_input"}


def test_new_backend_is_one_class_plus_registration_and_follows_run_json():
    @register("toy_test", applies=lambda info: info.model == "toy", order=5)
    class ToyBackend(MetricBackend):
        metrics = (MetricSpec("toy_score", "lower", "edit", "test only"),)

    try:
        toy = backends_for(RunInfo(None, {"model": "toy"}), EvalOptions())
        tiny = backends_for(RunInfo(None, {"model": "tiny"}), EvalOptions())
        assert "toy_test" in [b.name for b in toy]
        assert "toy_test" not in [b.name for b in tiny]
        assert [b.name for b in backends_for(RunInfo(None, {"model": "toy"}), EvalOptions(), only=["toy_test"])] == [
            "toy_test"
        ]
        with pytest.raises(ValueError, match="unknown metric backend"):
            backends_for(RunInfo(None, {}), EvalOptions(), only=["nope"])
    finally:
        base._REGISTRY.pop("toy_test", None)
