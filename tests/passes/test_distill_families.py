"""distill on the OpenVLA, OpenVLA-OFT and SmolVLA tiny fixtures (tiny LeRobot datasets written
here with the dataset writer), and early stopping."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import yaml

from tests.passes.test_tokens_families import build, context, observations, predict
from vla_compress.errors import DatasetError, PassError
from vla_compress.passes import PassContext, apply_passes, config_from_dict
from vla_compress.passes.distill import DistillConfig
from vla_compress.passes.tokens import VisualTokenPruneConfig

FAMILIES = ("openvla", "openvla-oft", "smolvla")
# a step that moves these random tiny models within 12-15 steps without overshooting
LR = {"openvla": 3e-4, "openvla-oft": 3e-4, "smolvla": 3e-4}
FAST = dict(batch_size=4, warmup=2, val_episodes_per_task=1, eval_frames=8)


def write_dataset(root, vla, episodes_per_task: int = 3, frames: int = 6, seed: int = 1, cameras=None):
    """A LeRobot dataset of random 32x32 frames shaped for `vla`: its cameras, state and action sizes."""
    from vla_compress.data.lerobot import Episode, LeRobotWriter

    if vla.family == "smolvla":
        cams, state_dim = list(vla.processor.camera_names), vla.cfg.state_dim
    else:
        cams = ["primary", "wrist"][: vla.processor.num_images]
        state_dim = vla.proprio_projector.fc1.in_features if vla.uses_state else 3
    cams = cameras or cams
    w = LeRobotWriter(root, fps=10)
    rng = np.random.default_rng(seed)
    for task in ("reach to the target location", "open the door"):
        for _ in range(episodes_per_task):
            images = {c: rng.integers(0, 256, (frames, 32, 32, 3), dtype=np.uint8) for c in cams}
            w.add(Episode(task=task, images=images,
                          state=rng.uniform(-1, 1, (frames, state_dim)).astype(np.float32),
                          action=rng.uniform(-1, 1, (frames, vla.action_spec.dim)).astype(np.float32)))
    return w.close()


@pytest.fixture(scope="module")
def teachers() -> dict:
    return {f: build(f) for f in FAMILIES}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, teachers) -> dict:
    return {f: write_dataset(tmp_path_factory.mktemp("lerobot") / f, teachers[f]) for f in FAMILIES}


@pytest.fixture(autouse=True)
def one_thread():
    """These steps are tiny: one thread avoids contention on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def distill_context(student, teacher, dataset) -> PassContext:
    return PassContext.from_lerobot(student, dataset, num_samples=4, seed=0, teacher=teacher)


def pruned_student(teacher):
    vla = copy.deepcopy(teacher)
    apply_passes(vla, [VisualTokenPruneConfig(keep_ratio=0.5, layer=1)], context(vla))
    return vla


@pytest.mark.parametrize("family", FAMILIES)
def test_distillation_closes_the_gap_of_a_token_pruned_student(teachers, datasets, tmp_path, family):
    teacher = teachers[family]
    vla = pruned_student(teacher)
    cfg = DistillConfig(steps=15, lr=LR[family], **FAST)
    apply_passes(vla, [cfg], distill_context(vla, teacher, datasets[family]))
    notes = vla.compression_log[-1]["details"]
    before, after = notes["heldout"]["before"], notes["heldout"]["after"]
    assert notes["episodes"] == {"train": 4, "val": 2} and notes["frames"] == {"train": 24, "val": 12, "eval": 8}
    assert after["objective"] < before["objective"]
    assert after["action_l1_to_teacher"] < before["action_l1_to_teacher"]
    assert set(notes["last_step_parts"]) == {"action"}
    assert notes["steps_run"] == 15 and notes["stopped"] == "steps" and "best_step" not in notes
    assert vla.token_counts().visual == pruned_student(teacher).token_counts().visual  # still pruned
    loaded = type(vla).from_pretrained(vla.save_pretrained(tmp_path / "distilled"))
    obs = observations(vla, 2)
    assert torch.equal(predict(loaded, obs), predict(vla, obs))


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_states_of_the_backbone_are_matched(teachers, datasets, family):
    """A student with perturbed backbone weights: the backbone's hidden states (SmolVLA: the prefix
    keys/values the expert reads) move back towards the teacher's."""
    teacher = teachers[family]
    vla = copy.deepcopy(teacher)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in vla.backbone.layers.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2 * p.std().clamp(min=1e-3))
    cfg = DistillConfig(steps=12, lr=3e-4, hidden_weight=1.0, where="backbone", **FAST)
    apply_passes(vla, [cfg], distill_context(vla, teacher, datasets[family]))
    notes = vla.compression_log[-1]["details"]
    assert set(notes["last_step_parts"]) == {"action", "hidden"}
    assert notes["heldout"]["after"]["objective"] < notes["heldout"]["before"]["objective"]


@pytest.mark.parametrize("family", FAMILIES)
def test_label_loss_is_the_family_training_loss(teachers, datasets, family):
    """label_weight alone (the teacher's output unused) trains on the demonstrations: the distance
    to the data on held-out frames goes down."""
    teacher = teachers[family]
    vla = copy.deepcopy(teacher)
    cfg = DistillConfig(steps=12, lr=LR[family], action_weight=0.0, label_weight=1.0, shift_px=0, **FAST)
    apply_passes(vla, [cfg], distill_context(vla, teacher, datasets[family]))
    notes = vla.compression_log[-1]["details"]
    assert set(notes["last_step_parts"]) == {"label"}
    assert notes["heldout"]["after"]["objective"] < notes["heldout"]["before"]["objective"]


def test_quantized_student_trains_what_is_not_quantized(teachers, datasets):
    from vla_compress.passes.quantize import Int4WeightOnlyConfig

    teacher = teachers["openvla-oft"]
    vla = copy.deepcopy(teacher)
    apply_passes(vla, [Int4WeightOnlyConfig(group_size=32, where="backbone")])
    ctx = distill_context(vla, teacher, datasets["openvla-oft"])
    with pytest.raises(PassError, match="cannot train quantized weights"):
        apply_passes(vla, [DistillConfig(steps=2, **FAST)], ctx)
    apply_passes(vla, [DistillConfig(steps=15, lr=3e-4, where=["action_head", "projector"], **FAST)], ctx)
    notes = vla.compression_log[-1]["details"]
    assert notes["frozen_quantized"] and notes["frozen_quantized"][0].startswith("backbone.")
    assert notes["heldout"]["after"]["action_l1_to_teacher"] < notes["heldout"]["before"]["action_l1_to_teacher"]


def test_early_stop_triggers_and_keeps_the_best_weights(teachers, datasets):
    teacher = teachers["openvla-oft"]
    vla = pruned_student(teacher)
    start = {k: v.clone() for k, v in vla.state_dict().items()}
    # no evaluation can beat the start by 1e6: patience runs out after 2 evaluations (step 4)
    cfg = DistillConfig(steps=20, lr=1e-3, eval_every=2, early_stop_patience=2, early_stop_min_delta=1e6, **FAST)
    apply_passes(vla, [cfg], distill_context(vla, teacher, datasets["openvla-oft"]))
    notes = vla.compression_log[-1]["details"]
    assert notes["stopped"] == "early_stop" and notes["steps_run"] == 4
    assert [s for s, _ in notes["heldout_curve"]] == [0, 2, 4] and notes["best_step"] == 0
    assert notes["best_heldout_objective"] == notes["heldout"]["before"]["objective"] == \
        notes["heldout"]["after"]["objective"]
    assert all(torch.equal(v, start[k]) for k, v in vla.state_dict().items())  # the step-0 weights are back


def test_without_a_stop_the_best_evaluation_is_kept(teachers, datasets):
    teacher = teachers["openvla-oft"]
    vla = pruned_student(teacher)
    cfg = DistillConfig(steps=12, lr=1e-3, eval_every=4, early_stop_patience=10, **FAST)
    apply_passes(vla, [cfg], distill_context(vla, teacher, datasets["openvla-oft"]))
    notes = vla.compression_log[-1]["details"]
    curve = notes["heldout_curve"]
    assert notes["stopped"] == "steps" and notes["steps_run"] == 12 and [s for s, _ in curve] == [0, 4, 8, 12]
    best_step, best = min(curve, key=lambda sv: sv[1])
    assert notes["best_step"] == best_step and notes["best_heldout_objective"] == best
    assert notes["heldout"]["after"]["objective"] == pytest.approx(best, abs=1e-6)


def test_early_stop_config_round_trips_and_is_validated():
    cfg = DistillConfig(steps=50, eval_every=5, early_stop_patience=3, early_stop_min_delta=0.01, label_weight=0.5)
    d = cfg.to_dict()
    assert d["early_stop_patience"] == 3 and d["eval_every"] == 5
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(d))) == cfg
    assert config_from_dict(json.loads(json.dumps(d))) == cfg
    for bad, words in (({"early_stop_patience": 2}, "set eval_every > 0"),
                       ({"eval_every": 5, "val_episodes_per_task": 0}, "need held-out frames"),
                       ({"early_stop_min_delta": -1.0}, "early_stop_min_delta"),
                       ({"label_weight": -1.0}, "label_weight"),
                       ({"action_weight": 0.0}, "nothing to learn"), ({"eval_every": 1.5}, "integer")):
        with pytest.raises(PassError, match=words):
            config_from_dict({"pass": "distill", **bad})


def test_bad_inputs_give_clear_errors(teachers, datasets, tmp_path):
    oft, smol = teachers["openvla-oft"], teachers["smolvla"]
    with pytest.raises(PassError, match="teacher does not match.*family"):
        apply_passes(copy.deepcopy(oft), [DistillConfig(**FAST)], distill_context(oft, smol, datasets["openvla-oft"]))
    one_camera = write_dataset(tmp_path / "one", oft, cameras=["primary"])
    with pytest.raises(DatasetError, match="takes 2 image.*cameras=") as info:
        apply_passes(copy.deepcopy(oft), [DistillConfig(**FAST)], distill_context(oft, oft, one_camera))
    assert str(one_camera) in str(info.value)
    with pytest.raises(DatasetError, match="actions have 7 dimensions; the model predicts 4"):
        apply_passes(copy.deepcopy(smol), [DistillConfig(**FAST)],
                     PassContext(teacher=smol, training=datasets["openvla-oft"], seed=0))
    with pytest.raises(PassError, match="hidden states of 'backbone' differ in shape"):
        vla = pruned_student(smol)
        apply_passes(vla, [DistillConfig(steps=2, hidden_weight=1.0, **FAST)],
                     distill_context(vla, smol, datasets["smolvla"]))


def test_openvla_teacher_forcing_reproduces_greedy_decoding(teachers):
    """The forced forward distillation trains through sees what decoding saw: forcing the greedy
    tokens gives logits whose argmax is those tokens, at every one of the 7 positions."""
    from vla_compress.models.openvla.distill_openvla import openvla_forced_logits

    vla = teachers["openvla"]
    inputs = vla._model_inputs(vla.preprocess(observations(vla, 2)))  # two prompt lengths: left padding
    dim = vla.action_spec.dim
    with torch.no_grad():
        ids = vla.generate_action_tokens(inputs, dim)
        logits = openvla_forced_logits(vla, inputs, ids)
    assert logits.shape[:2] == (2, dim) and torch.equal(logits.argmax(-1), ids)


def test_openvla_action_tokens_decode_to_their_bin():
    from vla_compress.models.openvla.distill_openvla import openvla_action_token_ids

    vla = build("openvla")
    n = vla.cfg.n_action_bins
    actions = torch.linspace(-1, 1, 101)[None]
    ids = openvla_action_token_ids(vla, actions)
    assert int(ids.min()) >= vla.cfg.action_vocab_end - n and int(ids.max()) < vla.cfg.action_vocab_end
    assert float((vla.tokens_to_actions(ids) - actions).abs().max()) <= 2.0 / (n - 1) + 1e-6


@pytest.mark.parametrize("head", ["regression", "tokens"])
def test_reference_family_label_loss_and_early_stop(fresh, lerobot_train_dir, head):
    """The shared loop: the reference family's label loss (L1 / cross-entropy on the demonstration's
    bins) trains, and early stopping works there too."""
    teacher = fresh(head)
    vla = copy.deepcopy(teacher)
    fast = dict(batch_size=8, warmup=2, val_episodes_per_task=1, eval_frames=12, lr=1e-3, shift_px=0)
    ctx = PassContext.from_lerobot(vla, lerobot_train_dir, num_samples=4, seed=0, teacher=teacher)
    apply_passes(vla, [DistillConfig(steps=10, action_weight=0.0, label_weight=1.0, **fast)], ctx)
    notes = vla.compression_log[-1]["details"]
    assert set(notes["last_step_parts"]) == {"label"}
    assert notes["loss_end"] < notes["loss_start"]  # random demonstrations: fitted, not generalised
    apply_passes(vla, [DistillConfig(steps=30, eval_every=3, early_stop_patience=1, early_stop_min_delta=1e6,
                                     label_weight=1.0, **fast)], ctx)
    notes = vla.compression_log[-1]["details"]
    assert notes["stopped"] == "early_stop" and notes["steps_run"] == 3 and notes["best_step"] == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_distillation_after_layer_drop(teachers, datasets, family):
    from vla_compress.passes.prune import LayerDropConfig

    teacher = teachers[family]
    vla = copy.deepcopy(teacher)
    drop = 2 if family == "smolvla" else 1  # SmolVLA drops aligned self + cross blocks
    apply_passes(vla, [LayerDropConfig(num_layers=drop)], context(vla))
    apply_passes(vla, [DistillConfig(steps=15, lr=LR[family], **FAST)], distill_context(vla, teacher, datasets[family]))
    notes = vla.compression_log[-1]["details"]
    assert notes["heldout"]["after"]["action_l1_to_teacher"] < notes["heldout"]["before"]["action_l1_to_teacher"]
