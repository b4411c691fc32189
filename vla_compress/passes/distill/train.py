"""distill: train the compressed student to reproduce the teacher (config.py says what and how).

Why teacher targets rather than the demonstrations: after pruning, the student's job is to recover
the teacher's behaviour, including where the teacher departs from the demonstrations; the teacher's
outputs are dense targets (a whole distribution per action token) and are defined on every
observation, augmented or not. The tokens head is trained under teacher forcing on the teacher's
own greedy tokens (sequence-level distillation, Kim & Rush 2016), the sequence the teacher would
produce at run time.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Iterator

import numpy as np

from ...errors import PassError
from ..base import PassContext, scoped_modules
from .config import DistillConfig
from .data import DistillData, load_distill_data

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
    else:
        for what in ("action_norm", "state_norm"):
            a, b = getattr(teacher, what), getattr(vla, what)
            if not (np.allclose(a.low, b.low) and np.allclose(a.high, b.high) and np.array_equal(a.mask, b.mask)):
                problems.append(f"different {what} statistics")
        if teacher.cfg.vision.image_size != vla.cfg.vision.image_size:
            problems.append("a different image size")
    if problems:
        raise PassError(f"pass {config.name!r}: the teacher does not match the student: {'; '.join(problems)}")


# --- losses ---------------------------------------------------------------------------------------

class HiddenCapture:
    """Forward hooks keeping the output hidden states (and the backbone's attention mask) of named
    components while `active`."""

    def __init__(self, vla: Any, names: tuple[str, ...]):
        comps = vla.components()
        unknown = [n for n in names if n not in comps]
        if unknown:
            raise PassError(f"pass 'distill': hidden_components {unknown} are not components of the model "
                            f"({', '.join(comps)})")
        self.out: dict[str, tuple[Any, Any]] = {}
        self.active = False
        self.handles = [comps[n].register_forward_hook(self._hook(n), with_kwargs=True) for n in names]

    def _hook(self, name: str):
        def fn(module, args, kwargs, output):
            if not self.active:
                return
            h = output if not hasattr(output, "last_hidden_state") else output.last_hidden_state
            h = h[0] if isinstance(h, tuple) else h
            mask = kwargs.get("attention_mask")
            self.out[name] = (h, mask if mask is not None and mask.dim() == 2 else None)
        return fn

    @contextlib.contextmanager
    def capturing(self) -> Iterator[dict]:
        self.out, self.active = {}, True
        try:
            yield self.out
        finally:
            self.active = False

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def hidden_loss(student: dict, teacher: dict) -> Any:
    """Mean over components of MSE(student, teacher) / mean(teacher^2), over unpadded positions."""
    total = 0.0
    for name, (t, mask) in teacher.items():
        s, _ = student[name]
        if s.shape != t.shape:
            raise PassError(f"pass 'distill': hidden states of {name!r} differ in shape (student {tuple(s.shape)}, "
                            f"teacher {tuple(t.shape)}): a pass changed that component's sequence or width; "
                            f"match another component (hidden_components) or set hidden_weight to 0")
        t = t.detach().float()
        w = (mask.float() if mask is not None else t.new_ones(t.shape[:2]))[..., None]
        mse = ((s.float() - t).pow(2) * w).sum() / (w.sum() * t.shape[-1])
        total = total + mse / ((t.pow(2) * w).sum() / (w.sum() * t.shape[-1])).clamp(min=1e-8)
    return total / max(len(teacher), 1)


class Objective:
    """The distillation loss of one batch; `parts` keeps the last action / hidden terms."""

    def __init__(self, student: Any, teacher: Any, config: DistillConfig):
        self.s, self.t, self.config = student, teacher, config
        names = tuple(config.hidden_components) if config.hidden_weight > 0 else ()
        self.s_cap, self.t_cap = HiddenCapture(student, names), HiddenCapture(teacher, names)
        self.parts: dict[str, float] = {}

    def remove(self) -> None:
        self.s_cap.remove()
        self.t_cap.remove()

    def teacher_forward(self, imgs, text_ids, text_mask, state):
        """(teacher's output, the action token ids to force with, captured teacher hidden states)."""
        import torch

        cfg = self.s.cfg
        with torch.no_grad():
            if cfg.head == "regression":
                with self.t_cap.capturing() as hidden:
                    return self.t.forward_regression(imgs, text_ids, text_mask, state), None, hidden
            ids = self.t.generate_action_tokens(imgs, text_ids, text_mask, state) + (
                cfg.backbone.vocab_size - cfg.n_bins)
            with self.t_cap.capturing() as hidden:
                logits = self.t.forward_tokens_teacher(imgs, text_ids, text_mask, state, ids)[..., -cfg.n_bins:]
            return logits, ids, hidden

    def __call__(self, imgs, text_ids, text_mask, state):
        import torch.nn.functional as F

        cfg, T = self.s.cfg, self.config.temperature
        target, ids, t_hidden = self.teacher_forward(imgs, text_ids, text_mask, state)
        with self.s_cap.capturing() as s_hidden:
            if cfg.head == "regression":
                out = self.s.forward_regression(imgs, text_ids, text_mask, state)
                action = F.l1_loss(out.float(), target.float())
            else:
                logits = self.s.forward_tokens_teacher(imgs, text_ids, text_mask, state, ids)[..., -cfg.n_bins:]
                action = F.kl_div(F.log_softmax(logits.float().reshape(-1, cfg.n_bins) / T, -1),
                                  F.log_softmax(target.float().reshape(-1, cfg.n_bins) / T, -1),
                                  log_target=True, reduction="batchmean") * T * T
        loss = self.config.action_weight * action
        self.parts = {"action": float(action.detach())}
        if self.config.hidden_weight > 0:
            h = hidden_loss(s_hidden, t_hidden)
            loss = loss + self.config.hidden_weight * h
            self.parts["hidden"] = float(h.detach())
        return loss


# --- held-out distance -----------------------------------------------------------------------------

def heldout(student: Any, teacher: Any, data: DistillData, objective: Objective, idx: np.ndarray,
            batch_size: int, cache: dict) -> dict:
    """Distance of the student to the teacher (and to the demonstrations) on held-out frames:
    action L1 in the normalised action space (the chunk each model predicts at run time, greedy
    tokens decoded to bin centres for the tokens head) and the training objective without
    augmentation. The teacher's chunks are computed once and kept in `cache` (with the teacher's
    own L1 to the demonstrations under "teacher_l1_to_data")."""
    import torch

    if len(idx) == 0:
        return {}
    sums = {"action_l1_to_teacher": 0.0, "action_l1_to_data": 0.0, "objective": 0.0}
    chunks = cache.setdefault("teacher_chunks", {})
    teacher_to_data = 0.0
    student.eval()
    with torch.no_grad():
        for i in range(0, len(idx), batch_size):
            sel = idx[i:i + batch_size]
            imgs, ids, mask, state, act = data.batch(student, sel)
            inputs = {"pixel_values": imgs, "text_ids": ids, "text_mask": mask, "state": state}
            if i not in chunks:
                chunks[i] = teacher.predict_chunk(inputs).float()
            chunk = student.predict_chunk(inputs).float()
            n = len(sel)
            sums["action_l1_to_teacher"] += float((chunk - chunks[i]).abs().mean()) * n
            sums["action_l1_to_data"] += float((chunk - act).abs().mean()) * n
            sums["objective"] += float(objective(imgs, ids, mask, state)) * n
            teacher_to_data += float((chunks[i] - act).abs().mean()) * n
    cache["teacher_l1_to_data"] = round(teacher_to_data / len(idx), 6)
    return {k: round(v / len(idx), 6) for k, v in sums.items()}


# --- the pass ---------------------------------------------------------------------------------------

def _window_mean(values: list[float], n: int, last: bool) -> float:
    w = values[-n:] if last else values[:n]
    return round(float(np.mean(w)), 6)


def distill(vla: Any, config: DistillConfig, context: PassContext) -> Any:
    teacher = context.teacher.eval()
    check_teacher(vla, teacher, config)
    params, frozen = trainable_parameters(vla, config)
    t0 = time.perf_counter()
    data = load_distill_data(vla, context.training, config)
    load_s = time.perf_counter() - t0
    teacher.to(next(vla.parameters()).device)
    objective = Objective(vla, teacher, config)
    eval_idx, cache = data.eval_indices(config.eval_frames), {}
    try:
        before = heldout(vla, teacher, data, objective, eval_idx, config.batch_size, cache)
        log.info("distill: %d train / %d held-out frames; held out before: %s", len(data.train_idx),
                 len(data.val_idx), before)
        t1 = time.perf_counter()
        losses = train_steps(vla, params, data, objective, config)
        train_s = time.perf_counter() - t1
        parts = dict(objective.parts)  # the last training batch's loss terms
        after = heldout(vla, teacher, data, objective, eval_idx, config.batch_size, cache)
    finally:
        objective.remove()
    every = max(1, config.steps // 20)
    window = max(1, min(10, config.steps // 10))
    context.notes.update({
        "head": vla.cfg.head, "steps": config.steps, "trainable_params": int(sum(p.numel() for p in params.values())),
        "frozen_quantized": frozen, "episodes": data.episodes,
        "frames": {"train": int(len(data.train_idx)), "val": int(len(data.val_idx)), "eval": int(len(eval_idx))},
        "loss_start": _window_mean(losses, window, last=False), "loss_end": _window_mean(losses, window, last=True),
        "loss_curve": [[s, _window_mean(losses[:s], every, last=True)] for s in range(every, config.steps + 1, every)],
        "last_step_parts": parts,
        "heldout": {"before": before, "after": after, "teacher_l1_to_data": cache.get("teacher_l1_to_data")},
        "load_s": round(load_s, 2), "train_s": round(train_s, 2), "s_per_step": round(train_s / config.steps, 4),
    })
    return vla


def train_steps(vla: Any, params: dict[str, Any], data: DistillData, objective: Objective,
                config: DistillConfig) -> list[float]:
    """The optimisation loop (seeded batches, augmentation, AdamW + cosine); returns each step's loss."""
    import torch

    from ...train.bc import adamw_cosine

    device = next(vla.parameters()).device
    torch.manual_seed(config.seed)
    rng = np.random.RandomState(config.seed)
    opt, sched = adamw_cosine(list(params.values()), config.lr, config.weight_decay, config.warmup, config.steps)
    losses: list[float] = []
    t0, checked, report = time.perf_counter(), False, max(1, config.steps // 10)
    with only_training(vla, params):
        for step in range(1, config.steps + 1):
            idx = rng.choice(data.train_idx, config.batch_size, replace=len(data.train_idx) < config.batch_size)
            batch = data.batch(vla, idx, config.shift_px, rng, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp):
                loss = objective(*batch[:4])
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
    return losses


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
