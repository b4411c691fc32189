"""Compressed checkpoints reload: every pass -> save_pretrained -> from_pretrained -> the same
actions; quantization.json / compression.json contents; clear errors for bad files."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from torch import nn

from tests.passes.conftest import context_for
from vla_compress.errors import CheckpointError
from vla_compress.models.reference import ReferenceVLA
from vla_compress.passes import PassContext, apply_passes, list_passes, synthetic_observations
from vla_compress.passes.distill import DistillConfig
from vla_compress.passes.prune import LayerDropConfig, WidthPruneConfig
from vla_compress.passes.quantize import (FqnToConfig, Int4WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig,
                                          Int8StaticActivationInt8WeightConfig, Int8WeightOnlyConfig,
                                          MixedPrecisionConfig)
from vla_compress.nn.quantized import Int4WeightOnlyLinear, Int8StaticLinear
from vla_compress.passes.tokens import TokenMergeConfig, VisualTokenPruneConfig

# passes (and chains) that fit the deep tiny model; every registered pass appears at least once
CASES = {
    "layer-drop": [LayerDropConfig(num_layers=1)],
    "layer-drop-vision": [LayerDropConfig(num_layers=1, where="vision_encoder")],
    "width-prune": [WidthPruneConfig(heads_ratio=0.5, mlp_ratio=0.5, where=["backbone", "vision_encoder"])],
    "width-prune-global": [WidthPruneConfig(mlp_ratio=0.5, allocation="global")],
    "int8-weight-only": [Int8WeightOnlyConfig()],
    "int8-dynamic": [Int8DynamicActivationInt8WeightConfig(where="backbone")],
    "int8-static": [Int8StaticActivationInt8WeightConfig()],
    "int4-weight-only": [Int4WeightOnlyConfig(group_size=32, awq=True)],
    "fqn-to-config": [FqnToConfig(rules=[("action_head", None), ("backbone.*", Int4WeightOnlyConfig(group_size=32)),
                                         ("*", Int8WeightOnlyConfig())])],
    "mixed-precision": [MixedPrecisionConfig(bits=(4, 8), avg_bits=6.0, group_size=32, where="backbone")],
    "visual-token-prune": [VisualTokenPruneConfig(budget=8, layer=1)],
    "token-merge": [TokenMergeConfig(r=3)],
    "token-merge-reduce": [TokenMergeConfig(ratio=0.5, mode="reduce")],
    "layer-drop-distill": [LayerDropConfig(num_layers=1),
                           DistillConfig(steps=3, batch_size=4, lr=1e-3, val_episodes_per_task=1, eval_frames=4)],
    "prune-distill-quantize": [WidthPruneConfig(mlp_ratio=0.5, round_to=32),
                               DistillConfig(steps=2, batch_size=4, val_episodes_per_task=1, eval_frames=0),
                               Int4WeightOnlyConfig(group_size=32), Int8StaticActivationInt8WeightConfig()],
}


def test_cases_cover_every_pass():
    # denoise-steps needs a flow-matching head, which the reference family has not: its save/reload
    # round trip is in tests/passes/test_denoise.py (SmolVLA, π0, π0.5)
    assert {c.name for chain in CASES.values() for c in chain} == set(list_passes()) - {"denoise-steps"}


def chunk(vla, inputs) -> torch.Tensor:
    with torch.no_grad():
        return vla.predict_chunk(inputs)


@pytest.mark.parametrize("head", ["regression", "tokens"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_pass_round_trips(fresh, tmp_path, lerobot_train_dir, case, head):
    vla = fresh(head, deep=True)
    ctx = context_for(vla)
    ctx.teacher, ctx.training = copy.deepcopy(vla), lerobot_train_dir
    apply_passes(vla, CASES[case], ctx)
    inputs = vla.preprocess(synthetic_observations(vla, 3, seed=7))
    before = chunk(vla, inputs)
    path = vla.save_pretrained(tmp_path / case)
    loaded = ReferenceVLA.from_pretrained(path)
    assert loaded.cfg == vla.cfg
    assert torch.equal(chunk(loaded, inputs), before)
    assert [type(m).__name__ for m in loaded.modules()] == [type(m).__name__ for m in vla.modules()]
    assert [e["pass"] for e in loaded.compression_log] == [c.name for c in CASES[case]]
    assert loaded.compression_log == json.loads(json.dumps(vla.compression_log))  # every pass logs plain JSON
    assert (path / "quantization.json").is_file() == any(getattr(m, "is_quantized", False) for m in vla.modules())


def test_quantization_json_records_each_module(fresh, tmp_path):
    vla = fresh("regression")
    apply_passes(vla, [FqnToConfig(rules=[("backbone.layers.0.mlp.*", Int4WeightOnlyConfig(group_size=32, awq=True)),
                                          ("projector", Int8StaticActivationInt8WeightConfig())])], context_for(vla))
    path = vla.save_pretrained(tmp_path / "q")
    mods = json.loads((path / "quantization.json").read_text())["modules"]
    up, fc1 = mods["backbone.layers.0.mlp.up_proj"], mods["projector.fc1"]
    assert up["class"] == "Int4WeightOnlyLinear" and up["group_size"] == 32 and up["smoothing"] is True
    assert (up["in_features"], up["out_features"], up["bias"], up["weight_bits"]) == (64, 128, False, 4)
    assert fc1["class"] == "Int8StaticLinear" and fc1["activation"] == "int8_static_per_tensor" and fc1["bias"]
    assert fc1["scheme"] == vla.projector.fc1.scheme
    assert set(mods) == {"backbone.layers.0.mlp.gate_proj", "backbone.layers.0.mlp.up_proj",
                         "backbone.layers.0.mlp.down_proj", "projector.fc1", "projector.fc2"}
    loaded = ReferenceVLA.from_pretrained(path)
    assert isinstance(loaded.backbone.layers[0].mlp.up_proj, Int4WeightOnlyLinear)
    assert isinstance(loaded.projector.fc1, Int8StaticLinear)
    assert float(loaded.projector.fc1.input_scale) == float(vla.projector.fc1.input_scale)
    assert type(loaded.backbone.layers[1].mlp.up_proj) is nn.Linear


def test_an_uncompressed_save_leaves_no_stale_files(fresh, tmp_path):
    vla = fresh("regression")
    apply_passes(vla, [Int8WeightOnlyConfig(where="backbone")])
    path = vla.save_pretrained(tmp_path / "ckpt")
    assert (path / "quantization.json").is_file() and (path / "compression.json").is_file()
    fresh("regression").save_pretrained(path)  # an uncompressed model into the same directory
    assert not (path / "quantization.json").exists() and not (path / "compression.json").exists()
    assert type(ReferenceVLA.from_pretrained(path).backbone.layers[0].mlp.up_proj) is nn.Linear


@pytest.fixture
def quantized_checkpoint(fresh, tmp_path):
    vla = fresh("regression")
    apply_passes(vla, [Int4WeightOnlyConfig(group_size=32, where="backbone")])
    return vla.save_pretrained(tmp_path / "int4")


def edit_quantization(path, fn):
    q = json.loads((path / "quantization.json").read_text())
    fn(q)
    (path / "quantization.json").write_text(json.dumps(q))


@pytest.mark.parametrize("edit, words", [
    (lambda q: q["modules"]["backbone.layers.0.mlp.up_proj"].update({"class": "Int3MagicLinear"}),
     ["up_proj", "unknown quantized module class", "Int3MagicLinear"]),
    (lambda q: q["modules"]["backbone.layers.0.mlp.up_proj"].update({"out_features": 96}),
     ["up_proj", "shape mismatch", "out_features=96", "out_features=128"]),
    (lambda q: q["modules"]["backbone.layers.0.mlp.up_proj"].update({"group_size": 48}),
     ["up_proj", "group_size 48"]),
    (lambda q: q["modules"].update({"backbone.layers.7.mlp.up_proj": q["modules"]["backbone.layers.0.mlp.up_proj"]}),
     ["backbone.layers.7", "no such module"]),
    (lambda q: q["modules"].update({"backbone.norm": q["modules"]["backbone.layers.0.mlp.up_proj"]}),
     ["backbone.norm", "LlamaRMSNorm", "not a Linear"]),
    (lambda q: q["modules"].update({"gripper.fc": q["modules"]["backbone.layers.0.mlp.up_proj"]}),
     ["gripper", "no component"]),
    (lambda q: q.update({"format_version": 7}), ["format_version 7"]),
    (lambda q: q.pop("modules"), ["expected"]),
])
def test_bad_quantization_json_names_the_file(quantized_checkpoint, edit, words):
    edit_quantization(quantized_checkpoint, edit)
    with pytest.raises(CheckpointError) as e:
        ReferenceVLA.from_pretrained(quantized_checkpoint)
    assert e.value.path == quantized_checkpoint / "quantization.json"
    for w in words:
        assert w in str(e.value)


def test_missing_or_corrupt_compression_files(quantized_checkpoint):
    (quantized_checkpoint / "quantization.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="quantization.json: invalid JSON"):
        ReferenceVLA.from_pretrained(quantized_checkpoint)
    (quantized_checkpoint / "quantization.json").unlink()  # the loader then builds float Linears
    with pytest.raises(CheckpointError, match="model.safetensors: does not match config.json.*qweight"):
        ReferenceVLA.from_pretrained(quantized_checkpoint)


def test_bad_compression_json_names_the_file(fresh, tmp_path):
    vla = fresh("regression")
    apply_passes(vla, [TokenMergeConfig(r=2)])
    path = vla.save_pretrained(tmp_path / "tome")
    # the schedule is in token_reduction.json, as for every family
    tokens = json.loads((path / "token_reduction.json").read_text())
    assert tokens["token_merge"] == {"r_per_layer": {"encoder": [2, 2]}, "mode": "unmerge"}
    # a checkpoint written before that kept the reference family's schedule in compression.json: still read
    (path / "token_reduction.json").unlink()
    info = {**json.loads((path / "compression.json").read_text()),
            "token_merge": {"r_per_layer": [2, 2], "mode": "unmerge"}}
    (path / "compression.json").write_text(json.dumps(info))
    x = vla.preprocess([{"images": {c: im for c, im in vla.dummy_observation()["images"].items()},
                         "state": vla.dummy_observation()["state"], "instruction": "open the door"}])
    with torch.inference_mode():
        assert torch.equal(ReferenceVLA.from_pretrained(path).predict_chunk(x), vla.predict_chunk(x))
    for bad, words in (({**info, "token_merge": {"r_per_layer": [2, 2, 2], "mode": "unmerge"}}, "3 entries"),
                       ({**info, "token_merge": {"r_per_layer": [2, 2], "mode": "sideways"}}, "token_merge must be"),
                       ({**info, "format_version": 2}, "format_version"),
                       ({**info, "log": {"pass": "x"}}, "log must be a list")):
        (path / "compression.json").write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match=words) as e:
            ReferenceVLA.from_pretrained(path)
        assert e.value.path == path / "compression.json"


def test_reloaded_quantized_checkpoint_runs_in_the_evaluator_policy(fresh, make_obs, tmp_path):
    from vla_compress.models import load_vla
    from vla_compress.runtime.policy import TorchPolicy

    vla = fresh("tokens")
    ctx = PassContext(calibration=context_for(vla).calibration)
    apply_passes(vla, [Int8DynamicActivationInt8WeightConfig(where="backbone"), Int4WeightOnlyConfig(group_size=32)],
                 ctx)
    path = vla.save_pretrained(tmp_path / "mixed")
    policy = TorchPolicy(load_vla(path))
    assert (policy.infer(make_obs(2)) == vla.act(make_obs(2))).all()
    shutil.rmtree(path)
