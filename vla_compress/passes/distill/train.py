"""distill: train the compressed student to reproduce the teacher (config.py says what and how).

Why teacher targets rather than the demonstrations: after pruning, the student's job is to recover
the teacher's behaviour, including where the teacher departs from the demonstrations; the teacher's
outputs are dense targets (a whole distribution per action token) and are defined on every
observation, augmented or not. The tokens head is trained under teacher forcing on the teacher's
own greedy tokens (sequence-level distillation, Kim & Rush 2016), the sequence the teacher would
produce at run time.

This module is family-independent: the student's family's distill hooks (objectives.py lists
them) choose the frames (data.py: the BC trainer's tensors, or data_families.py: observations
through the model's processor), give the loss terms and any per-batch draws; the loop, held-out
evaluation and early stopping are shared.
"""

from __future__ import annotations

import contextlib
import logging
import time
from types import SimpleNamespace
from typing import Any, Iterator

import numpy as np

from ...errors import PassError
from ..base import PassContext, scoped_modules
from .config import DistillConfig
from .data import load_distill_data
from .objectives import Objective, family_hook

log = logging.getLogger(__name__)


# --- what trains ----------------------------------------------------------------------------------

def trainable_parameters(vla: Any, config: DistillConfig) -> tuple[dict[str, Any], list[str]]:
    """Canonical name -> parameter of everything in `where`'s scope, and the names of the quantized
    modules that stay frozen outside it. A quantized module inside the scope is an error."""
    mods = scoped_modules(vla, config)
    quantized = sorted(n for n, m in mods.items() if getattr(m, "is_quantized", False))
    if quantized:
        raise PassError(f"pass {config.name!r}: cannot train quantized weights ({', '.join(quantized[:4])}"
                        f"{' ...' if len(quantized) > 4 else ''}): distill after pruning and before quantization, "
                        f"or leave the quantized modules out of `where`")
    params = {f"{n}.{pn}": p for n, m in mods.items() for pn, p in m.named_parameters(recurse=False)}
    if not params:
        raise PassError(f"pass {config.name!r}: no parameter in scope to train")
    frozen = sorted(n for c, mod in vla.components().items() for n in
                    (f"{c}.{r}" if r else c for r, m in mod.named_modules() if getattr(m, "is_quantized", False)))
    return params, frozen


@contextlib.contextmanager
def only_training(vla: Any, params: dict[str, Any]) -> Iterator[None]:
    """requires_grad on exactly `params` (and train mode) for the block; flags restored after."""
    saved = [(p, p.requires_grad) for p in vla.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        for p in params.values():
            p.requires_grad_(True)
        vla.train()
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
        vla.eval()


def check_teacher(vla: Any, teacher: Any, config: DistillConfig) -> None:
    """The teacher must predict the same thing from the same inputs (its processor is not used)."""
    problems = []
    if getattr(teacher, "family", None) != vla.family:
        problems.append(f"family {getattr(teacher, 'family', None)!r} vs the student's {vla.family!r}")
    elif teacher.action_spec != vla.action_spec:
        problems.append(f"action spec {teacher.action_spec} vs the student's {vla.action_spec}")
    elif (own := family_hook(vla, "check_teacher", optional=True)) is not None:
        problems += own(vla, teacher)
    else:  # every family's unnormaliser is affine: equal at -1 and +1 means equal statistics
        probe = np.stack([-np.ones(vla.action_spec.dim, np.float32), np.ones(vla.action_spec.dim, np.float32)])[None]
        if not np.allclose(teacher.unnormalize_actions(probe), vla.unnormalize_actions(probe)):
            problems.append("different action statistics")
    if problems:
        raise PassError(f"pass {config.name!r}: the teacher does not match the student: {'; '.join(problems)}")


# --- held-out distance -----------------------------------------------------------------------------

def _batches(vla: Any, data: Any, idx: np.ndarray, batch_size: int, seed: int) -> list[dict]:
    """The held-out batches, unaugmented; the family's per-batch draws (draw_batch_noise) from
    `seed`, so every evaluation sees the same ones."""
    rng = np.random.RandomState(seed)
    draw = family_hook(vla, "draw_batch_noise", optional=True)
    out = []
    for i in range(0, len(idx), batch_size):
        batch = data.batch_dict(vla, idx[i:i + batch_size])
        out.append(draw(vla, batch, rng) if draw is not None else batch)
    return out


def heldout(student: Any, teacher: Any, data: Any, objective: Objective, idx: np.ndarray,
            batch_size: int, cache: dict) -> dict:
    """Distance of the student to the teacher (and to the demonstrations) on held-out frames:
    action L1 in the normalised action space (the chunk each model predicts at run time, greedy
    tokens decoded to bin centres for tokens heads, the same start noise for both models where the
    batch holds one) and the training objective without augmentation. The batches and the teacher's chunks
    are computed once and kept in `cache` (with the teacher's own L1 to the demonstrations under
    "teacher_l1_to_data")."""
    import torch

    if len(idx) == 0:
        return {}
    if "batches" not in cache:
        cache["batches"] = _batches(student, data, idx, batch_size, objective.config.seed)
    sums = {"action_l1_to_teacher": 0.0, "action_l1_to_data": 0.0, "objective": 0.0}
    chunks = cache.setdefault("teacher_chunks", {})
    teacher_to_data = 0.0
    student.eval()
    with torch.no_grad():
        for i, batch in enumerate(cache["batches"]):
            inputs, act = batch["inputs"], batch["actions"]
            if "noise" in batch:
                inputs = {**inputs, "noise": batch["noise"]}
            if i not in chunks:
                chunks[i] = teacher.predict_chunk(dict(inputs)).float()
            chunk = student.predict_chunk(dict(inputs)).float()
            n = len(act)
            sums["action_l1_to_teacher"] += float((chunk - chunks[i]).abs().mean()) * n
            sums["action_l1_to_data"] += float((chunk - act).abs().mean()) * n
            sums["objective"] += float(objective(batch)) * n
            teacher_to_data += float((chunks[i] - act).abs().mean()) * n
    cache["teacher_l1_to_data"] = round(teacher_to_data / len(idx), 6)
    return {k: round(v / len(idx), 6) for k, v in sums.items()}


# --- the pass ---------------------------------------------------------------------------------------

def _window_mean(values: list[float], n: int, last: bool) -> float:
    w = values[-n:] if last else values[:n]
    return round(float(np.mean(w)), 6)


def load_data(vla: Any, dataset: Any, config: DistillConfig) -> Any:
    """The frames to distil on, as the family's load_data hook chooses and parameterises a loader."""
    from .data_families import load_observation_data

    loaders = SimpleNamespace(frames=load_distill_data, observations=load_observation_data)
    return family_hook(vla, "load_data")(vla, dataset, config, loaders)


def distill(vla: Any, config: DistillConfig, context: PassContext) -> Any:
    teacher = context.teacher.eval()
    check_teacher(vla, teacher, config)
    params, frozen = trainable_parameters(vla, config)
    t0 = time.perf_counter()
    data = load_data(vla, context.training, config)
    load_s = time.perf_counter() - t0
    eval_idx, cache = data.eval_indices(config.eval_frames), {}
    if config.eval_every and len(eval_idx) == 0:
        raise PassError(f"pass {config.name!r}: eval_every needs held-out frames, and the dataset split has none")
    teacher.to(next(vla.parameters()).device)
    objective = Objective(vla, teacher, config)
    try:
        before = heldout(vla, teacher, data, objective, eval_idx, config.batch_size, cache)
        log.info("distill: %d train / %d held-out frames; held out before: %s", len(data.train_idx),
                 len(data.val_idx), before)
        evaluate = lambda: heldout(vla, teacher, data, objective, eval_idx, config.batch_size, cache)  # noqa: E731
        t1 = time.perf_counter()
        run = train_steps(vla, params, data, objective, config, evaluate if config.eval_every else None,
                          before.get("objective"))
        train_s = time.perf_counter() - t1
        parts = dict(objective.parts)  # the last training batch's loss terms
        after = heldout(vla, teacher, data, objective, eval_idx, config.batch_size, cache)
    finally:
        objective.remove()
    losses, steps = run["losses"], len(run["losses"])
    every = max(1, steps // 20)
    window = max(1, min(10, steps // 10))
    context.notes.update({
        "head": vla.action_spec.head, "steps": config.steps, "steps_run": steps, "stopped": run["stopped"],
        "trainable_params": int(sum(p.numel() for p in params.values())),
        "frozen_quantized": frozen, "episodes": data.episodes,
        "frames": {"train": int(len(data.train_idx)), "val": int(len(data.val_idx)), "eval": int(len(eval_idx))},
        "loss_start": _window_mean(losses, window, last=False), "loss_end": _window_mean(losses, window, last=True),
        "loss_curve": [[s, _window_mean(losses[:s], every, last=True)] for s in range(every, steps + 1, every)],
        "last_step_parts": parts,
        "heldout": {"before": before, "after": after, "teacher_l1_to_data": cache.get("teacher_l1_to_data")},
        "load_s": round(load_s, 2), "train_s": round(train_s, 2), "s_per_step": round(train_s / max(steps, 1), 4),
    })
    if config.eval_every:
        context.notes.update({"heldout_curve": run["curve"], "best_heldout_objective": run["best"],
                              "best_step": run["best_step"]})
    return vla


def train_steps(vla: Any, params: dict[str, Any], data: Any, objective: Objective, config: DistillConfig,
                evaluate: Any = None, start_objective: float | None = None) -> dict:
    """The optimisation loop (seeded batches, augmentation, AdamW + cosine) with early stopping on
    the held-out objective when `evaluate` is given (see DistillConfig). Returns {"losses": per
    step, "stopped": "steps" | "early_stop", "curve": [[step, held-out objective]], "best",
    "best_step"}; the best evaluated weights are in place on return."""
    import torch

    from ...train.bc import adamw_cosine

    device = next(vla.parameters()).device
    torch.manual_seed(config.seed)
    rng = np.random.RandomState(config.seed)
    opt, sched = adamw_cosine(list(params.values()), config.lr, config.weight_decay, config.warmup, config.steps)
    losses: list[float] = []
    snapshot = lambda: {n: p.detach().clone() for n, p in params.items()}  # noqa: E731
    best = {"value": start_objective, "step": 0, "weights": snapshot() if evaluate else None}
    curve = [[0, start_objective]] if evaluate else []
    stopped, bad = "steps", 0
    t0, checked, report = time.perf_counter(), False, max(1, config.steps // 10)
    draw = family_hook(vla, "draw_batch_noise", optional=True)
    with only_training(vla, params):
        for step in range(1, config.steps + 1):
            idx = rng.choice(data.train_idx, config.batch_size, replace=len(data.train_idx) < config.batch_size)
            batch = data.batch_dict(vla, idx, config.shift_px, rng, device)
            if draw is not None:  # from the same generator, after the batch's augmentation
                batch = draw(vla, batch, rng)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp):
                loss = objective(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            losses.append(float(loss.detach()))
            if not checked and losses[-1] > 0:  # a zero loss (student == teacher) has zero gradients
                check_gradients(vla, params, config)
                checked = True
            torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
            opt.step()
            sched.step()
            if step % report == 0 or step == config.steps:
                log.info("distill: step %d/%d loss %.5f (%.2f s/step)", step, config.steps,
                         np.mean(losses[-report:]), (time.perf_counter() - t0) / step)
            if evaluate is not None and step % config.eval_every == 0:
                value = evaluate()["objective"]
                vla.train()
                curve.append([step, value])
                if best["value"] is None or value < best["value"] - config.early_stop_min_delta:
                    best, bad = {"value": value, "step": step, "weights": snapshot()}, 0
                else:
                    bad += 1
                if config.early_stop_patience and bad >= config.early_stop_patience:
                    stopped = "early_stop"
                    log.info("distill: early stop at step %d (best held-out objective %.5f at step %d)", step,
                             best["value"], best["step"])
                    break
    if evaluate is not None and best["step"] != len(losses):
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(best["weights"][n])
    return {"losses": losses, "stopped": stopped, "curve": curve, "best": best["value"], "best_step": best["step"]}


def check_gradients(vla: Any, params: dict[str, Any], config: DistillConfig) -> None:
    """After the first backward pass with a non-zero loss: a component none of whose trainable
    tensors got a gradient cannot learn (typically it lies upstream of an activation-quantizing
    module, whose rounding has zero gradient)."""
    by_comp: dict[str, bool] = {}
    for name, p in params.items():
        comp = name.partition(".")[0]
        by_comp[comp] = by_comp.get(comp, False) or (p.grad is not None and bool(p.grad.abs().sum() > 0))
    dead = sorted(c for c, ok in by_comp.items() if not ok)
    if dead:
        quantized = [mm for m in vla.components().values() for mm in m.modules()
                     if getattr(mm, "is_quantized", False) and mm.scheme.get("activation", "float") != "float"]
        why = (" (activation-quantized modules round their inputs, which has no gradient: distill before "
               "quantizing)") if quantized else ""
        raise PassError(f"pass {config.name!r}: {', '.join(dead)} get no gradient from the distillation loss{why}; "
                        f"leave them out of `where`")
