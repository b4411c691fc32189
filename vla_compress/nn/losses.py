"""Loss functions shared by passes and model families (torch imported inside each)."""

from __future__ import annotations

from typing import Any


def kl_bins(student_logits: Any, teacher_logits: Any, temperature: float) -> Any:
    """temperature^2 * KL(teacher || student) over the last axis, averaged over the other ones
    (Hinton et al. 2015: the t^2 keeps the gradient scale independent of the temperature)."""
    import torch.nn.functional as F

    n = student_logits.shape[-1]
    t = temperature
    return F.kl_div(F.log_softmax(student_logits.float().reshape(-1, n) / t, -1),
                    F.log_softmax(teacher_logits.float().reshape(-1, n) / t, -1),
                    log_target=True, reduction="batchmean") * t * t
