"""The distillation pass: the student moves towards the teacher, what trains is scoped, quantized
weights are refused, the run is recorded; tiny models on a tiny synthetic LeRobot dataset."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.passes.conftest import context_for
from vla_compress.errors import PassError
from vla_compress.passes import PassContext, apply_passes, config_from_dict
from vla_compress.passes.distill import DistillConfig
from vla_compress.passes.distill.data import load_distill_data
from vla_compress.passes.prune import LayerDropConfig
from vla_compress.passes.quantize import Int4WeightOnlyConfig, Int8StaticActivationInt8WeightConfig

FAST = dict(batch_size=8, lr=1e-3, warmup=2, val_episodes_per_task=1, eval_frames=12)


def distill_context(student, teacher, dataset) -> PassContext:
    return PassContext.from_lerobot(student, dataset, num_samples=4, seed=0, teacher=teacher)


@pytest.mark.parametrize("head, hidden", [("regression", 0.0), ("regression", 1.0), ("tokens", 0.0)])
def test_distillation_moves_the_pruned_student_towards_the_teacher(fresh, lerobot_train_dir, head, hidden):
    teacher = fresh(head, deep=True)
    vla = copy.deepcopy(teacher)
    ctx = distill_context(vla, teacher, lerobot_train_dir)
    apply_passes(vla, [LayerDropConfig(num_layers=2), DistillConfig(steps=30, hidden_weight=hidden, **FAST)], ctx)
    notes = vla.compression_log[-1]["details"]
    before, after = notes["heldout"]["before"], notes["heldout"]["after"]
    assert notes["frames"] == {"train": 24, "val": 12, "eval": 12} and notes["episodes"] == {"train": 4, "val": 2}
    assert after["objective"] < 0.7 * before["objective"]
    assert notes["loss_end"] < notes["loss_start"]
    if head == "regression":  # greedy tokens are too coarse a distance on 12 frames of a random model
        assert after["action_l1_to_teacher"] < before["action_l1_to_teacher"]
    assert ("hidden" in notes["last_step_parts"]) == (hidden > 0)
    assert len(notes["loss_curve"]) == 30 and notes["trainable_params"] == sum(p.numel() for p in vla.parameters())
    assert not vla.training and all(p.requires_grad for p in vla.parameters())
    # the recorded held-out distance is the one a fresh computation on the same frames gives
    data = load_distill_data(vla, lerobot_train_dir, DistillConfig(**FAST))
    imgs, ids, mask, state, _ = data.batch(vla, data.eval_indices(12))
    inputs = {"pixel_values": imgs, "text_ids": ids, "text_mask": mask, "state": state}
    with torch.no_grad():
        l1 = float((vla.predict_chunk(inputs) - teacher.predict_chunk(inputs)).abs().mean())
    assert l1 == pytest.approx(after["action_l1_to_teacher"], abs=1e-5)


def test_where_scopes_what_trains_and_a_seed_repeats_the_run(fresh, lerobot_train_dir):
    teacher = fresh("regression", deep=True)
    runs = []
    for _ in range(2):
        vla = copy.deepcopy(teacher)
        apply_passes(vla, [LayerDropConfig(num_layers=1)], context_for(vla))
        frozen = {k: v.clone() for k, v in vla.state_dict().items() if not k.startswith("action_head")}
        head = {k: v.clone() for k, v in vla.action_head.state_dict().items()}
        apply_passes(vla, [DistillConfig(steps=5, where="action_head", **FAST)],
                     distill_context(vla, teacher, lerobot_train_dir))
        state = vla.state_dict()
        assert all(torch.equal(state[k], v) for k, v in frozen.items())
        assert any(not torch.equal(vla.action_head.state_dict()[k], v) for k, v in head.items())
        assert vla.compression_log[-1]["details"]["trainable_params"] == sum(v.numel() for v in head.values())
        runs.append(vla.compression_log[-1]["details"]["loss_curve"])
    assert runs[0] == runs[1]


def test_an_identical_student_does_not_move(fresh, lerobot_train_dir):
    teacher = fresh("regression")
    vla = copy.deepcopy(teacher)
    apply_passes(vla, [DistillConfig(steps=3, **FAST)], distill_context(vla, teacher, lerobot_train_dir))
    notes = vla.compression_log[-1]["details"]
    assert notes["loss_start"] == notes["loss_end"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(vla.state_dict().values(), teacher.state_dict().values()))


def test_quantized_weights_are_not_trained(fresh, lerobot_train_dir):
    teacher = fresh("regression")
    vla = copy.deepcopy(teacher)
    apply_passes(vla, [Int4WeightOnlyConfig(group_size=32, where="backbone")])
    ctx = distill_context(vla, teacher, lerobot_train_dir)
    with pytest.raises(PassError, match="'distill': cannot train quantized weights.*backbone.layers.0.*before quant"):
        apply_passes(vla, [DistillConfig(steps=2, **FAST)], ctx)
    # quantized modules outside the scope stay frozen; gradients pass through weight-only ones
    apply_passes(vla, [DistillConfig(steps=2, where=["vision_encoder", "projector"], **FAST)], ctx)
    notes = vla.compression_log[-1]["details"]
    assert "backbone.layers.0.mlp.up_proj" in notes["frozen_quantized"]


def test_components_upstream_of_activation_quantization_get_no_gradient(fresh, lerobot_train_dir):
    teacher = fresh("regression")
    vla = copy.deepcopy(teacher)
    apply_passes(vla, [Int8StaticActivationInt8WeightConfig(where="projector")], context_for(vla))
    with pytest.raises(PassError, match="vision_encoder get no gradient.*activation-quantized"):
        apply_passes(vla, [DistillConfig(steps=2, where=["vision_encoder", "action_head"], **FAST)],
                     distill_context(vla, teacher, lerobot_train_dir))


def test_missing_inputs_and_bad_configs(fresh, tiny_models, lerobot_train_dir):
    vla = fresh("regression")
    with pytest.raises(PassError, match="'distill' needs a teacher"):
        apply_passes(vla, [DistillConfig()], context_for(vla))
    with pytest.raises(PassError, match="'distill' needs training data"):
        apply_passes(vla, [DistillConfig()], PassContext(teacher=tiny_models["regression"]))
    with pytest.raises(PassError, match="teacher does not match.*action spec"):
        apply_passes(vla, [DistillConfig(**FAST)], distill_context(vla, tiny_models["tokens"], lerobot_train_dir))
    with pytest.raises(PassError, match="all of them are held out"):
        apply_passes(vla, [DistillConfig(**{**FAST, "val_episodes_per_task": 3})],
                     distill_context(vla, tiny_models["regression"], lerobot_train_dir))
    with pytest.raises(PassError, match="hidden_components.*gripper"):
        apply_passes(vla, [DistillConfig(hidden_weight=1.0, hidden_components=["gripper"], **FAST)],
                     distill_context(vla, tiny_models["regression"], lerobot_train_dir))
    for d, words in (({"steps": 0}, "steps"), ({"lr": 0}, "lr"), ({"action_weight": 0.0}, "nothing to learn"),
                     ({"temperature": -1.0}, "temperature"), ({"batch": 4}, "unknown key")):
        with pytest.raises(PassError, match=words):
            config_from_dict({"pass": "distill", **d})


def test_hidden_matching_needs_equal_shapes(fresh, lerobot_train_dir):
    from vla_compress.passes.tokens import VisualTokenPruneConfig

    teacher = fresh("regression")
    vla = copy.deepcopy(teacher)
    apply_passes(vla, [VisualTokenPruneConfig(budget=8, layer=1)], context_for(vla))
    with pytest.raises(PassError, match="hidden states of 'backbone' differ in shape"):
        apply_passes(vla, [DistillConfig(steps=2, hidden_weight=1.0, **FAST)],
                     distill_context(vla, teacher, lerobot_train_dir))
    apply_passes(vla, [DistillConfig(steps=2, hidden_weight=1.0, hidden_components=["projector"], **FAST)],
                 distill_context(vla, teacher, lerobot_train_dir))
