"""OpenVLA-OFT's distillation hooks (passes/distill/objectives.py describes the hooks).

The parallel-decoded chunk through the L1 head: L1 to the teacher's chunk; label: L1 to the
demonstration's chunk. The data hooks are OpenVLA's (the same processor and normalisation).
"""

from __future__ import annotations

from typing import Any

from .distill_openvla import dataset_cameras, load_data

__all__ = ["objective_terms", "dataset_cameras", "load_data"]


def objective_terms(objective: Any, batch: dict) -> tuple[Any, Any]:
    """(L1 to the teacher's chunk, L1 to the demonstration's chunk or None)."""
    import torch.nn.functional as F

    with objective.teacher_pass():
        target = objective.t.predict_chunk(batch["inputs"])
    with objective.student_pass():
        out = objective.s.predict_chunk(batch["inputs"])
    label = F.l1_loss(out.float(), batch["actions"].float()) if objective.config.label_weight > 0 else None
    return F.l1_loss(out.float(), target.float()), label
