"""π0 / π0.5 distillation hooks (passes/distill/objectives.py describes the hooks).

Flow matching as LeRobot trains it: x_t = t * noise + (1 - t) * actions with t ~ Beta(1.5, 1) *
0.999 + 0.001 (the config's time_sampling_* defaults); the student's velocity v(x_t, t) is matched
(MSE over the real action dimensions) to the teacher's velocity at the same noise and time; the
label term is LeRobot's training loss, MSE to noise - actions. The noise and time are drawn with
every batch (draw_batch_noise, shared with SmolVLA: same shapes, same sampler), so a held-out batch
is the same at every evaluation. Frames are observations through the processor, targets unclipped
(MEAN_STD / QUANTILES action spaces are unbounded).
"""

from __future__ import annotations

from typing import Any

from ..lerobot_layout import dataset_cameras, draw_batch_noise, flow_objective_terms, load_data

__all__ = ["dataset_cameras", "draw_batch_noise", "load_data", "objective_terms", "velocity"]


def velocity(model: Any, inputs: dict, x_t: Any, t: Any) -> Any:
    """The action expert's velocity at (x_t, t), attending to the prefix of `inputs` (π0: and the state token)."""
    inputs = model._model_inputs({k: v for k, v in inputs.items() if k != "noise"})
    prefix_kv, pad = model.prefill(inputs)
    return model.velocity(inputs, prefix_kv, pad, x_t.to(model.action_head.action_in_proj.weight.dtype), t)


def objective_terms(objective: Any, batch: dict) -> tuple[Any, Any]:
    """(MSE to the teacher's velocity, MSE to the flow-matching target or None)."""
    return flow_objective_terms(objective, batch, velocity)
