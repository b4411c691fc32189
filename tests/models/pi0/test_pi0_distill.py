"""distill on π0 / π0.5 (a tiny LeRobot dataset written with the dataset writer): the student's
velocity is matched to the teacher's at the same noise and time; the label term is LeRobot's
flow-matching loss; the distilled model saves and reloads bit-identically."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from vla_compress.models.pi0 import Pi0
from vla_compress.passes import PassContext, apply_passes
from vla_compress.passes.distill import DistillConfig

FAST = dict(batch_size=4, warmup=2, val_episodes_per_task=1, eval_frames=8)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def teachers() -> dict:
    return {k: Pi0.tiny(seed=2, kind=k, num_inference_steps=2) for k in ("pi0", "pi05")}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, teachers):
    """Random 32 x 32 frames for both cameras, 5-d state and 4-d actions (both kinds read the same)."""
    from vla_compress.data.lerobot import Episode, LeRobotWriter

    w = LeRobotWriter(tmp_path_factory.mktemp("lerobot") / "pi0", fps=10)
    rng = np.random.default_rng(1)
    for task in ("reach to the target location", "open the door"):
        for _ in range(3):
            images = {c: rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8) for c in ("base_0_rgb", "wrist")}
            w.add(Episode(task=task, images=images, state=rng.uniform(-1, 1, (6, 5)).astype(np.float32),
                          action=rng.uniform(-1, 1, (6, 4)).astype(np.float32)))
    return w.close()


def perturbed(teacher, where: str = "action_head", scale: float = 0.3):
    vla = copy.deepcopy(teacher)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in getattr(vla, where).parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.std().clamp(min=1e-3))
    return vla


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_velocity_distillation_closes_the_gap(teachers, dataset, tmp_path, kind):
    teacher = teachers[kind]
    vla = perturbed(teacher)
    ctx = PassContext.from_lerobot(vla, dataset, num_samples=4, seed=0, teacher=teacher)
    apply_passes(vla, [DistillConfig(steps=12, lr=3e-4, **FAST)], ctx)
    notes = vla.compression_log[-1]["details"]
    before, after = notes["heldout"]["before"], notes["heldout"]["after"]
    assert notes["episodes"] == {"train": 4, "val": 2} and set(notes["last_step_parts"]) == {"action"}
    assert after["objective"] < before["objective"]
    loaded = Pi0.from_pretrained(vla.save_pretrained(tmp_path / "distilled"))
    x = vla.preprocess([vla.dummy_observation()])
    x["noise"] = torch.randn(vla.noise_shape(1), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.predict_chunk(dict(x)), vla.predict_chunk(dict(x)))


def test_label_loss_is_the_flow_matching_loss(teachers, dataset):
    teacher = teachers["pi0"]
    vla = copy.deepcopy(teacher)
    ctx = PassContext.from_lerobot(vla, dataset, num_samples=4, seed=0, teacher=teacher)
    apply_passes(vla, [DistillConfig(steps=12, lr=3e-4, action_weight=0.0, label_weight=1.0, shift_px=0, **FAST)], ctx)
    notes = vla.compression_log[-1]["details"]
    assert set(notes["last_step_parts"]) == {"label"}
    assert notes["heldout"]["after"]["objective"] < notes["heldout"]["before"]["objective"]


def test_same_noise_and_time_give_the_teacher_zero_loss(teachers):
    """The objective compares the two velocities at one (x_t, t): a copy of the teacher scores 0."""
    from types import SimpleNamespace
    import contextlib

    from vla_compress.models.pi0.distill_pi0 import draw_batch_noise, objective_terms

    teacher = teachers["pi05"]
    obs = [teacher.dummy_observation(), teacher.dummy_observation("open the door")]
    batch = draw_batch_noise(teacher, {"inputs": teacher.preprocess(obs), "actions": torch.rand(2, 5, 4)},
                             np.random.RandomState(0))
    objective = SimpleNamespace(t=teacher, s=copy.deepcopy(teacher), config=SimpleNamespace(label_weight=1.0),
                                teacher_pass=contextlib.nullcontext, student_pass=contextlib.nullcontext)
    with torch.no_grad():
        action, label = objective_terms(objective, batch)
    assert float(action) == 0.0 and float(label) > 0
