"""SmolVLA's distillation hooks (passes/distill/objectives.py describes the hooks).

Flow matching as LeRobot trains it: x_t = t * noise + (1 - t) * actions; the velocity v(x_t, t)
is matched (MSE, over the real action dimensions) to the teacher's velocity at the same x_t and t;
label: MSE to the target noise - actions. The noise and time are drawn with every batch
(draw_batch_noise), so a held-out batch is the same at every evaluation. Frames are observations
through the processor; the MEAN_STD action space is unbounded, so targets are not clipped.
"""

from __future__ import annotations

from typing import Any

from ..lerobot_layout import dataset_cameras, draw_batch_noise, flow_objective_terms, load_data  # noqa: F401  (the spec's hooks)


def velocity(model: Any, inputs: dict, x_t: Any, t: Any) -> Any:
    """The action expert's velocity at (x_t, t), attending to the prefix of `inputs`."""
    inputs = model._model_inputs({k: v for k, v in inputs.items() if k != "noise"})
    prefix_kv, pad = model.prefill(inputs)
    return model.action_head(x_t, t, prefix_kv, pad)


def objective_terms(objective: Any, batch: dict) -> tuple[Any, Any]:
    """(MSE to the teacher's velocity, MSE to the flow-matching target or None)."""
    return flow_objective_terms(objective, batch, velocity)
