"""SmolVLA's distillation hooks (passes/distill/objectives.py describes the hooks).

Flow matching as LeRobot trains it: x_t = t * noise + (1 - t) * actions; the velocity v(x_t, t)
is matched (MSE, over the real action dimensions) to the teacher's velocity at the same x_t and t;
label: MSE to the target noise - actions. The noise and time are drawn with every batch
(draw_batch_noise), so a held-out batch is the same at every evaluation. Frames are observations
through the processor; the MEAN_STD action space is unbounded, so targets are not clipped.
"""

from __future__ import annotations

from typing import Any

from ..lerobot_layout import dataset_cameras, draw_batch_noise  # noqa: F401  (the spec's hooks)


def velocity(model: Any, inputs: dict, x_t: Any, t: Any) -> Any:
    """The action expert's velocity at (x_t, t), attending to the prefix of `inputs`."""
    inputs = model._model_inputs({k: v for k, v in inputs.items() if k != "noise"})
    prefix_kv, pad = model.prefill(inputs)
    return model.action_head(x_t, t, prefix_kv, pad)


def objective_terms(objective: Any, batch: dict) -> tuple[Any, Any]:
    """(MSE to the teacher's velocity, MSE to the flow-matching target or None)."""
    import torch.nn.functional as F

    act = batch["actions"].float()
    noise, t = batch["noise"].to(act.device), batch["time"].to(act.device)
    a = F.pad(act, (0, noise.shape[-1] - act.shape[-1]))
    x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * a
    dim = act.shape[-1]
    with objective.teacher_pass():
        target = velocity(objective.t, batch["inputs"], x_t, t)[..., :dim]
    with objective.student_pass():
        v = velocity(objective.s, batch["inputs"], x_t, t)[..., :dim].float()
    label = F.mse_loss(v, (noise - a)[..., :dim]) if objective.config.label_weight > 0 else None
    return F.mse_loss(v, target.float()), label


def load_data(vla: Any, dataset: Any, config: Any, loaders: Any) -> Any:
    """Observations of the chosen episodes through the processor, targets not clipped."""
    return loaders.observations(vla, dataset, config, cameras=dataset_cameras, clip=False)
