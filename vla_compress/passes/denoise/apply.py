"""denoise-steps: fewer Euler steps for a flow-matching head, optionally distilled (config.py)."""

from __future__ import annotations

import copy
from typing import Any

from ...errors import ConfigError, PassError
from ...models.registry import family_of
from ..base import PassContext
from .config import DenoiseStepsConfig


def _flow(vla: Any, name: str, config: DenoiseStepsConfig) -> Any:
    try:
        return family_of(vla).hook("flow", name, f"pass {config.name!r}")
    except ConfigError as e:
        raise PassError(str(e)) from None


def reduce_denoise_steps(vla: Any, config: DenoiseStepsConfig, context: PassContext) -> Any:
    before = int(_flow(vla, "denoise_steps", config)(vla))
    if config.steps > before:
        raise config.error("steps", f"{config.steps} is more than the {before} Euler steps the model runs; "
                                    "this pass only reduces them")
    teacher = copy.deepcopy(vla).eval() if config.distill_steps else None
    _flow(vla, "set_denoise_steps", config)(vla, config.steps)
    context.notes.update({"steps_before": before, "steps_after": config.steps})
    if teacher is not None:
        context.notes["distill"] = distill_few_steps(vla, teacher, config, context)
    return vla


def distill_few_steps(student: Any, teacher: Any, config: DenoiseStepsConfig, context: PassContext) -> dict:
    """Adam on the action expert: MSE between the student's and the teacher's chunks from the same
    noise, over batches of the calibration observations (drawn with `config.seed`)."""
    import numpy as np
    import torch

    batches = [b for b in context.calibration]
    if not batches:
        raise PassError(f"pass {config.name!r}: distill_steps needs calibration observations")
    head = student.components()["action_head"]
    for p in student.parameters():
        p.requires_grad_(False)
    params = [p for p in head.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=config.lr)
    rng = np.random.default_rng(config.seed)
    losses = []
    student.train()
    try:
        for step in range(config.distill_steps):
            inputs = batches[step % len(batches)]
            b = next(iter(inputs.values())).shape[0]
            noise = torch.from_numpy(rng.standard_normal(student.noise_shape(b)).astype(np.float32))
            with torch.no_grad():
                target = teacher.predict_chunk({**inputs, "noise": noise})
            out = student.predict_chunk({**inputs, "noise": noise})
            loss = torch.nn.functional.mse_loss(out.float(), target.float())
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        student.eval()
        for p in student.parameters():
            p.requires_grad_(False)
    return {"steps": config.distill_steps, "loss_first": losses[0], "loss_last": losses[-1],
            "loss_mean_last_10": float(np.mean(losses[-10:]))}
