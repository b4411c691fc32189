"""Every pass's compression-log entry carries offline action fidelity against the original model
on held-out observations (passes/runner.py), and the pipeline records sizes on disk."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.passes.conftest import context_for
from tests.passes.test_contract import EXAMPLES
from vla_compress.passes import apply_passes
from vla_compress.passes.quantize import Int4WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig
from vla_compress.passes.runner import fidelity, policy_outputs
from vla_compress.pipeline.run import record_disk_sizes, weights_on_disk


def held_out(make_obs, n: int = 4) -> list[dict]:
    return [make_obs(100 + i) for i in range(n)]


def chunks(vla, observations) -> np.ndarray:
    with torch.no_grad():
        x = vla.preprocess(observations)
        return vla.forward_regression(x["pixel_values"], x["text_ids"], x["text_mask"], x["state"]).numpy()


def test_each_entry_measures_the_model_after_it_against_the_original(fresh, make_obs):
    vla = fresh("regression", deep=True)
    obs = held_out(make_obs)
    original = chunks(vla, obs)
    ctx = context_for(vla)
    ctx.held_out = obs
    apply_passes(vla, [{"pass": "layer-drop", "num_layers": 1, "where": "backbone"},
                       Int8DynamicActivationInt8WeightConfig()], ctx)
    final = chunks(vla, obs)
    first, second = vla.compression_log
    for e in (first, second):
        f = e["fidelity"]
        assert f["observations"] == 4 and f["token_agreement"] is None
        assert f["baseline"] == "the model before the first pass"
        assert 0 < f["action_l1"] <= f["action_max_abs"]
    # the second entry compares the final model with the original, not with the model after pass 1
    assert np.isclose(second["fidelity"]["action_l1"], np.abs(final - original).mean(), rtol=1e-5)
    assert np.isclose(second["fidelity"]["action_max_abs"], np.abs(final - original).max(), rtol=1e-5)
    assert first["after"]["size_on_disk_bytes"] is None  # nothing was written by the runner


def test_token_head_records_token_agreement(fresh, make_obs):
    vla = fresh("tokens")
    obs = held_out(make_obs, 3)
    with torch.no_grad():
        x = vla.preprocess(obs)
        bins = vla.generate_action_tokens(x["pixel_values"], x["text_ids"], x["text_mask"], x["state"]).numpy()
    ctx = context_for(vla, batch_size=2)
    ctx.held_out = obs
    apply_passes(vla, [Int4WeightOnlyConfig(group_size=32, awq=True)], ctx)
    with torch.no_grad():
        after = vla.generate_action_tokens(x["pixel_values"], x["text_ids"], x["text_mask"], x["state"]).numpy()
    f = vla.compression_log[-1]["fidelity"]
    assert f["token_agreement"] == float((bins == after).mean())
    assert 0.0 <= f["token_agreement"] <= 1.0 and f["action_l1"] >= 0


def test_no_held_out_observations_no_fidelity(fresh):
    vla = fresh("regression")
    apply_passes(vla, [Int8DynamicActivationInt8WeightConfig()])
    assert "fidelity" not in vla.compression_log[-1]


def test_fidelity_of_identical_outputs_is_perfect(tiny_models, make_obs):
    out = policy_outputs(tiny_models["tokens"], held_out(make_obs, 2))
    assert out["actions"].shape[0] == 2 and "bins" in out
    f = fidelity(out, out)
    assert f["action_l1"] == 0 and f["action_max_abs"] == 0 and f["token_agreement"] == 1.0


def test_pipeline_records_sizes_on_disk_in_the_saved_log(fresh, tiny_checkpoints, tmp_path):
    from vla_compress.models import load_vla

    vla = fresh("regression")
    apply_passes(vla, [Int8DynamicActivationInt8WeightConfig()])
    vla.save_pretrained(tmp_path / "ckpt")
    record_disk_sizes(vla, 1, tiny_checkpoints["regression"], tmp_path / "ckpt")
    e = vla.compression_log[-1]
    assert e["before"]["size_on_disk_bytes"] == (tiny_checkpoints["regression"] / "model.safetensors").stat().st_size
    assert e["after"]["size_on_disk_bytes"] == weights_on_disk(tmp_path / "ckpt")
    assert e["after"]["size_on_disk_bytes"] < 0.6 * e["before"]["size_on_disk_bytes"]
    reloaded = load_vla(tmp_path / "ckpt")  # compression.json was rewritten with the sizes
    assert reloaded.compression_log[-1]["after"]["size_on_disk_bytes"] == e["after"]["size_on_disk_bytes"]


# distill: its own tests train (slow here); denoise-steps: flow heads only (tests/passes/test_denoise.py)
@pytest.mark.parametrize("name", sorted(set(EXAMPLES) - {"distill", "denoise-steps"}))
def test_every_pass_records_fidelity_fields(fresh, make_obs, name):
    vla = fresh("tokens", deep=True)
    ctx = context_for(vla, batch_size=2)
    ctx.held_out = held_out(make_obs, 2)
    config = {"pass": "width-prune", "mlp_ratio": 0.5, "where": "backbone"} if name == "width-prune" else EXAMPLES[name]
    apply_passes(vla, [config], ctx)  # (the width-prune example's round_to does not fit this model)
    f = vla.compression_log[-1]["fidelity"]
    assert set(f) == {"observations", "baseline", "action_l1", "action_max_abs", "token_agreement"}
    assert f["observations"] == 2 and 0 <= f["token_agreement"] <= 1 and f["action_l1"] >= 0
    assert "size_on_disk_bytes" in vla.compression_log[-1]["after"]
