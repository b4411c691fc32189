"""The reference family's distillation hooks (passes/distill/objectives.py describes the hooks).

Regression head: L1 to the teacher's chunk; label: L1 to the demonstration's chunk. Tokens head:
KL over the action bins under teacher forcing with the teacher's greedy tokens (sequence-level
distillation); label: cross-entropy on the demonstration's bins. Frames are the BC trainer's
tensors (train/bc.py trains this family: the same batching, hence the same inputs), and the
teacher must share the student's normalisation statistics and image size, since the student's
processor prepares both models' inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...nn.losses import kl_bins


def objective_terms(objective: Any, batch: dict) -> tuple[Any, Any]:
    """(action term, label term or None) of one batch {"inputs": the processor's tensors, "actions"}."""
    import torch.nn.functional as F

    s, t, c = objective.s, objective.t, objective.config
    x, act, cfg = batch["inputs"], batch["actions"], s.cfg
    args = (x["pixel_values"], x["text_ids"], x["text_mask"], x["state"])
    if cfg.head == "regression":
        with objective.teacher_pass():
            target = t.forward_regression(*args)
        with objective.student_pass():
            out = s.forward_regression(*args)
        label = F.l1_loss(out.float(), act.float()) if c.label_weight > 0 else None
        return F.l1_loss(out.float(), target.float()), label
    start = cfg.backbone.vocab_size - cfg.n_bins  # the action bins are the vocabulary's last ids
    ids = t.generate_action_tokens(*args) + start
    with objective.teacher_pass():
        target = t.forward_tokens_teacher(*args, ids)[..., -cfg.n_bins:]
    with objective.student_pass():
        logits = s.forward_tokens_teacher(*args, ids)[..., -cfg.n_bins:]
    label = None
    if c.label_weight > 0:
        bins = s.actions_to_bins(act.float())
        gt = s.forward_tokens_teacher(*args, bins + start)[..., -cfg.n_bins:]
        label = F.cross_entropy(gt.float().reshape(-1, cfg.n_bins), bins.reshape(-1))
    return kl_bins(logits, target, c.temperature), label


def check_teacher(student: Any, teacher: Any) -> list[str]:
    """What differs between the student's and the teacher's normalisation and image size."""
    problems = []
    for what in ("action_norm", "state_norm"):
        a, b = getattr(teacher, what), getattr(student, what)
        if not (np.allclose(a.low, b.low) and np.allclose(a.high, b.high) and np.array_equal(a.mask, b.mask)):
            problems.append(f"different {what} statistics")
    if teacher.cfg.vision.image_size != student.cfg.vision.image_size:
        problems.append("a different image size")
    return problems


def load_data(vla: Any, dataset: Any, config: Any, loaders: Any) -> Any:
    """The BC trainer's tensors of the chosen episodes (loaders.frames)."""
    return loaders.frames(vla, dataset, config)
