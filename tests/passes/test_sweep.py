"""The sensitivity sweep scores every single cut against the original on held-out observations."""

from __future__ import annotations

import pytest

from vla_compress.errors import ConfigError
from vla_compress.passes.calibration import synthetic_observations
from vla_compress.passes.sweep import candidates, sweep


def test_sweep_scores_every_candidate(tiny_models):
    vla = tiny_models["regression"]
    obs = synthetic_observations(vla, 4, seed=0)
    rows = sweep(vla, obs[:2], obs[2:], kinds=("layer-drop", "int8"))
    labels = [r["candidate"] for r in rows]
    n_layers = len(vla.backbone.layers) + len(vla.vision_encoder.encoder.layers)
    assert sum(lab.startswith("layer-drop") for lab in labels) == n_layers
    assert any(lab == "int8-dynamic backbone" for lab in labels)
    scored = [r for r in rows if "error" not in r]
    assert all(r["action_l1"] > 0 for r in scored)  # every cut changes the actions
    assert [r["action_l1"] for r in scored] == sorted(r["action_l1"] for r in scored)
    drop = next(r for r in scored if r["candidate"].startswith("layer-drop backbone"))
    assert drop["params_fraction"] < 1 and drop["flops_fraction"] < 1
    int8 = next(r for r in scored if r["candidate"] == "int8-dynamic backbone")
    assert int8["state_dict_fraction"] < 1
    # the original is untouched
    assert len(vla.backbone.layers) + len(vla.vision_encoder.encoder.layers) == n_layers


def test_unknown_kind_is_an_error(tiny_models):
    with pytest.raises(ConfigError, match="unknown sweep kind"):
        candidates(tiny_models["regression"], ("layer-drop", "magic"))
