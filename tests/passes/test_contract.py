"""The pass contract: registry, config round trips, clear errors, scoping, context, compression log."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import numpy as np
import pytest
import yaml

from tests.passes.conftest import context_for
from vla_compress.errors import ConfigError, PassError
from vla_compress.passes import (Dataset, PassContext, Where, apply_passes, config_from_dict, get_pass, list_passes,
                                 quantize_)
from vla_compress.passes.denoise import DenoiseStepsConfig
from vla_compress.passes.distill import DistillConfig
from vla_compress.passes.prune import LayerDropConfig, WidthPruneConfig
from vla_compress.passes.quantize import (FqnToConfig, Int4WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig,
                                          Int8StaticActivationInt8WeightConfig, Int8WeightOnlyConfig,
                                          MixedPrecisionConfig)
from vla_compress.passes.tokens import TokenMergeConfig, VisualTokenPruneConfig

# one non-default example per registered pass: a new pass must add itself here
EXAMPLES = {
    "layer-drop": LayerDropConfig(ratio=0.25, metric="angular", where={"include": ["backbone.layers.*"]}),
    "width-prune": WidthPruneConfig(heads_ratio=0.5, mlp_ratio=0.25, gqa="query_heads", round_to=32,
                                    where=["backbone", "vision_encoder"]),
    "int8-weight-only": Int8WeightOnlyConfig(where=Where(exclude=("action_head",))),
    "int8-dynamic": Int8DynamicActivationInt8WeightConfig(where="backbone"),
    "int8-static": Int8StaticActivationInt8WeightConfig(act_percentile=99.9),
    "int4-weight-only": Int4WeightOnlyConfig(group_size=32, awq=True, where="backbone"),
    "fqn-to-config": FqnToConfig(rules=[("action_head", None), ("backbone.*", Int4WeightOnlyConfig(group_size=64)),
                                        ("*", {"pass": "int8-weight-only"})]),
    "mixed-precision": MixedPrecisionConfig(bits=(8, 4, 32), avg_bits=5.0, group_size=32),
    "visual-token-prune": VisualTokenPruneConfig(budget=8, layer=1),
    "token-merge": TokenMergeConfig(r=2, mode="reduce"),
    "distill": DistillConfig(steps=50, lr=3e-4, hidden_weight=0.5, hidden_components=("backbone", "projector"),
                             where={"components": ["backbone", "action_head"], "exclude": ["backbone.embed_tokens"]}),
    "denoise-steps": DenoiseStepsConfig(steps=2, distill_steps=20, lr=1e-3),
}


def test_every_registered_pass_has_an_example():
    assert set(EXAMPLES) == set(list_passes())


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_config_round_trips_through_json_and_yaml(name):
    cfg = EXAMPLES[name]
    d = cfg.to_dict()
    assert d["pass"] == name and d["version"] == type(cfg).version
    assert config_from_dict(json.loads(json.dumps(d))) == cfg
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(d))) == cfg
    assert get_pass(name).config_cls is type(cfg)


@pytest.mark.parametrize("d, words", [
    ({"pass": "layer-drop", "num_layers": 1, "layers": 2}, ["layer-drop", "unknown key", "layers"]),
    ({"pass": "layer-drop", "ratio": 1.5}, ["layer-drop", "ratio", "[0.0, 1.0)"]),
    ({"pass": "layer-drop", "num_layers": 1, "ratio": 0.5}, ["layer-drop", "exactly one"]),
    ({"pass": "width-prune", "heads_ratio": -0.1}, ["width-prune", "heads_ratio"]),
    ({"pass": "width-prune", "mlp_ratio": 0.5, "gqa": "random"}, ["width-prune", "gqa", "kv_groups"]),
    ({"pass": "int4-weight-only", "group_size": 48}, ["int4-weight-only", "group_size", "48"]),
    ({"pass": "int4-weight-only", "group_size": "big"}, ["int4-weight-only", "group_size", "integer"]),
    ({"pass": "int8-static", "act_percentile": 101}, ["int8-static", "act_percentile"]),
    ({"pass": "mixed-precision", "bits": [3, 8]}, ["mixed-precision", "bits"]),
    ({"pass": "visual-token-prune", "keep_ratio": 0.0}, ["visual-token-prune", "keep_ratio"]),
    ({"pass": "token-merge", "r": 2, "mode": "grid"}, ["token-merge", "mode"]),
    ({"pass": "fqn-to-config", "rules": [["backbone.*", {"pass": "layer-drop"}]]}, ["fqn-to-config", "rules[0]"]),
    ({"pass": "int8-weight-only", "where": {"component": ["backbone"]}}, ["int8-weight-only", "where", "component"]),
    ({"pass": "int8-weight-only", "version": 99}, ["int8-weight-only", "version 99"]),
    ({"pass": "layer-drop", "num_layers": 1, "where": "projector"}, ["layer-drop", "projector", "not supported"]),
    ({"pass": "no-such-pass"}, ["unknown pass", "no-such-pass"]),
])
def test_bad_configs_give_clear_errors(d, words):
    with pytest.raises(PassError) as e:
        config_from_dict(d)
    for w in words:
        assert w in str(e.value)
    assert isinstance(e.value, ConfigError)


def test_unknown_component_is_an_error(fresh):
    vla = fresh("regression")
    with pytest.raises(PassError, match="unknown component.*gripper.*vision_encoder"):
        quantize_(vla, Int8WeightOnlyConfig(where="gripper"))


def test_pattern_matching_nothing_is_an_error(fresh):
    vla = fresh("regression")
    with pytest.raises(PassError, match="backbone.layerz.*matches no module"):
        quantize_(vla, Int8WeightOnlyConfig(where={"include": ["backbone.layerz.*"]}))
    with pytest.raises(PassError, match="matches no module"):
        apply_passes(vla, [LayerDropConfig(num_layers=1, where={"exclude": ["backbone.layers.9"]})], context_for(vla))
    assert not vla.compression_log  # nothing was applied


def test_missing_calibration_and_unsupported_family(fresh, openvla_model):
    vla = fresh("regression")
    with pytest.raises(PassError, match="'layer-drop' needs calibration data"):
        apply_passes(vla, [LayerDropConfig(num_layers=1)])
    other = types.SimpleNamespace(family="no-such-family")  # a family no pass has a layout for
    with pytest.raises(PassError, match="'width-prune' supports the reference, openvla, openvla-oft, smolvla.* "
                                        "families, not 'no-such-family'"):
        apply_passes(other, [WidthPruneConfig(mlp_ratio=0.5)], context_for(openvla_model))


def test_apply_passes_records_the_log(fresh):
    vla = fresh("regression", deep=True)
    ctx = context_for(vla)
    apply_passes(vla, [LayerDropConfig(num_layers=1), {"pass": "int8-weight-only", "where": "backbone"}], ctx)
    log = vla.compression_log
    assert [e["pass"] for e in log] == ["layer-drop", "int8-weight-only"]
    drop, quant = log
    assert drop["config"] == LayerDropConfig(num_layers=1).to_dict()
    assert drop["after"]["params"] < drop["before"]["params"] and drop["after"]["flops"] < drop["before"]["flops"]
    assert drop["details"]["backbone"]["dropped"] and drop["wall_s"] >= 0
    assert quant["after"]["state_dict_bytes"] < quant["before"]["state_dict_bytes"]
    assert quant["after"]["params_logical"] == quant["before"]["params_logical"]  # same weights, fewer bits
    assert quant["after"]["flops"] == quant["before"]["flops"]
    assert set(quant["after"]["per_component"]) == set(vla.components())


def test_calibration_from_lerobot(fresh, lerobot_dir):
    vla = fresh("regression")
    ctx = PassContext.from_lerobot(vla, lerobot_dir, num_samples=4, seed=3)
    assert isinstance(ctx.calibration, Dataset) and len(ctx.calibration) == 4
    batch = next(iter(ctx.calibration))
    assert batch["pixel_values"].shape == (1, 3, 32, 32)
    assert len(PassContext.from_lerobot(vla, lerobot_dir, num_samples=4, seed=3).calibration) == 4
    quantize_(vla, Int8StaticActivationInt8WeightConfig(where="backbone"), ctx)
    assert np.isfinite(vla.act(ctx.calibration.source[0][0])).all()


def test_importing_passes_does_not_import_torch():
    code = "import sys, vla_compress.passes as p; p.list_passes(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
