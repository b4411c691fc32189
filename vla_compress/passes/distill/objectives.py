"""The distillation loss of one batch, per family (config.py says what each term is).

A batch is {"inputs": the model's preprocessed inputs, "actions": (B, K, A) normalised
demonstration chunk} (data.py / data_families.py), plus, for SmolVLA, the flow-matching "noise"
and "time" drawn with the batch (so a held-out batch is the same at every evaluation).
Each objective returns the weighted loss and keeps its terms in `parts`:
"action" (distance to the teacher's output), "label" (the family's training loss on the
demonstration), "hidden" (hidden-state matching).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np

from ...errors import PassError
from .config import DistillConfig


class HiddenCapture:
    """Forward hooks keeping the output hidden states (and the backbone's attention mask) of named
    components while `active`. A component returning per-layer (key, value) pairs (SmolVLA's
    backbone, whose prefix keys/values are what the action expert reads) is captured as every
    layer's keys and values concatenated along the feature axis."""

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
            import torch

            h = output if not hasattr(output, "last_hidden_state") else output.last_hidden_state
            if isinstance(h, list) and h and isinstance(h[0], tuple):  # [(k, v) per layer]
                h = torch.cat([t.flatten(2) for kv in h for t in kv], dim=-1)
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


def kl_bins(student_logits: Any, teacher_logits: Any, temperature: float) -> Any:
    """temperature^2 * KL(teacher || student) over the last axis, averaged over the other ones."""
    import torch.nn.functional as F

    n = student_logits.shape[-1]
    t = temperature
    return F.kl_div(F.log_softmax(student_logits.float().reshape(-1, n) / t, -1),
                    F.log_softmax(teacher_logits.float().reshape(-1, n) / t, -1),
                    log_target=True, reduction="batchmean") * t * t


class Objective:
    """Shared plumbing: hidden-state capture on both models and the weighted sum of the terms.
    Subclasses implement `terms(batch) -> (action, label)`, running the student inside
    `self.student_pass()` and the teacher inside `self.teacher_pass()` (each exactly once when
    hidden states are matched)."""

    def __init__(self, student: Any, teacher: Any, config: DistillConfig):
        self.s, self.t, self.config = student, teacher, config
        names = tuple(config.hidden_components) if config.hidden_weight > 0 else ()
        self.s_cap, self.t_cap = HiddenCapture(student, names), HiddenCapture(teacher, names)
        self.parts: dict[str, float] = {}
        self._hidden: dict[str, dict] = {}

    def remove(self) -> None:
        self.s_cap.remove()
        self.t_cap.remove()

    @contextlib.contextmanager
    def student_pass(self) -> Iterator[None]:
        with self.s_cap.capturing() as h:
            yield
        self._hidden["student"] = dict(h)

    @contextlib.contextmanager
    def teacher_pass(self) -> Iterator[None]:
        import torch

        with torch.no_grad(), self.t_cap.capturing() as h:
            yield
        self._hidden["teacher"] = dict(h)

    def terms(self, batch: dict) -> tuple[Any, Any]:
        raise NotImplementedError

    def __call__(self, batch: dict) -> Any:
        self._hidden = {}
        c = self.config
        action, label = self.terms(batch)
        loss = 0.0
        self.parts = {}
        if c.action_weight > 0:
            loss = loss + c.action_weight * action
            self.parts["action"] = float(action.detach())
        if c.label_weight > 0:
            loss = loss + c.label_weight * label
            self.parts["label"] = float(label.detach())
        if c.hidden_weight > 0:
            h = hidden_loss(self._hidden["student"], self._hidden["teacher"])
            loss = loss + c.hidden_weight * h
            self.parts["hidden"] = float(h.detach())
        return loss


class ReferenceObjective(Objective):
    """The reference family: L1 to the teacher's chunk (regression head) or KL over the action bins
    under teacher forcing with the teacher's greedy tokens (tokens head)."""

    def terms(self, batch: dict) -> tuple[Any, Any]:
        import torch.nn.functional as F

        x, act, cfg, c = batch["inputs"], batch["actions"], self.s.cfg, self.config
        args = (x["pixel_values"], x["text_ids"], x["text_mask"], x["state"])
        if cfg.head == "regression":
            with self.teacher_pass():
                target = self.t.forward_regression(*args)
            with self.student_pass():
                out = self.s.forward_regression(*args)
            label = F.l1_loss(out.float(), act.float()) if c.label_weight > 0 else None
            return F.l1_loss(out.float(), target.float()), label
        start = cfg.backbone.vocab_size - cfg.n_bins
        ids = self.t.generate_action_tokens(*args) + start
        with self.teacher_pass():
            target = self.t.forward_tokens_teacher(*args, ids)[..., -cfg.n_bins:]
        with self.student_pass():
            logits = self.s.forward_tokens_teacher(*args, ids)[..., -cfg.n_bins:]
        label = None
        if c.label_weight > 0:
            bins = self.s.actions_to_bins(act.float())
            gt = self.s.forward_tokens_teacher(*args, bins + start)[..., -cfg.n_bins:]
            label = F.cross_entropy(gt.float().reshape(-1, cfg.n_bins), bins.reshape(-1))
        return kl_bins(logits, target, c.temperature), label


def openvla_forced_logits(model: Any, inputs: dict, ids: Any) -> Any:
    """Logits (B, n, V) at the n action positions when `ids` (B, n) are forced (teacher forcing:
    the sequence OpenVLA's greedy decoding would see with these tokens)."""
    import torch

    lm = model.language_model
    embeds, mask = model.sequence(inputs)
    n = ids.shape[1]
    embeds = torch.cat([embeds, lm.model.embed_tokens(ids[:, :-1])], dim=1)
    mask = torch.cat([mask, torch.ones(mask.shape[0], n - 1, dtype=mask.dtype, device=mask.device)], dim=1)
    hidden = lm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=model.positions(mask)).last_hidden_state
    return lm.lm_head(hidden[:, -n:])


def openvla_action_token_ids(model: Any, actions: Any) -> Any:
    """Normalised actions (B, A) -> OpenVLA's action token ids (ActionTokenizer: vocab - digitize)."""
    import torch

    n = model.cfg.n_action_bins
    edges = torch.linspace(-1.0, 1.0, n, dtype=torch.float32, device=actions.device)
    d = torch.bucketize(actions.float().clamp(-1, 1).contiguous(), edges, right=True).clamp(1, n)
    return model.cfg.action_vocab_end - d


class OpenVLAObjective(Objective):
    """OpenVLA's 7 autoregressive action tokens: KL over the action-token logits under teacher
    forcing with the teacher's greedy tokens; label: cross-entropy on the demonstration's tokens."""

    def terms(self, batch: dict) -> tuple[Any, Any]:
        import torch.nn.functional as F

        c, cfg = self.config, self.s.cfg
        inputs = self.s._model_inputs(batch["inputs"])
        dim = self.s.action_spec.dim
        lo, hi = cfg.action_vocab_end - cfg.n_action_bins, cfg.action_vocab_end
        ids = self.t.generate_action_tokens(self.t._model_inputs(batch["inputs"]), dim)
        with self.teacher_pass():
            target = openvla_forced_logits(self.t, self.t._model_inputs(batch["inputs"]), ids)[..., lo:hi]
        with self.student_pass():
            logits = openvla_forced_logits(self.s, inputs, ids)[..., lo:hi]
        label = None
        if c.label_weight > 0:
            gt = openvla_action_token_ids(self.s, batch["actions"][:, 0])
            out = openvla_forced_logits(self.s, inputs, gt)
            label = F.cross_entropy(out.float().reshape(-1, out.shape[-1]), gt.reshape(-1))
        return kl_bins(logits, target, c.temperature), label


class OFTObjective(Objective):
    """OpenVLA-OFT's parallel-decoded chunk through the L1 head: L1 to the teacher's chunk and
    (label) to the demonstration's."""

    def terms(self, batch: dict) -> tuple[Any, Any]:
        import torch.nn.functional as F

        with self.teacher_pass():
            target = self.t.predict_chunk(batch["inputs"])
        with self.student_pass():
            out = self.s.predict_chunk(batch["inputs"])
        label = F.l1_loss(out.float(), batch["actions"].float()) if self.config.label_weight > 0 else None
        return F.l1_loss(out.float(), target.float()), label


def draw_flow_noise(vla: Any, batch: dict, rng: np.random.RandomState) -> dict:
    """Add SmolVLA's training draws to a batch: noise (B, K, max_action_dim) ~ N(0, 1) and time
    t ~ Beta(1.5, 1) * 0.999 + 0.001 (LeRobot's sample_time)."""
    import torch

    b = batch["actions"].shape[0]
    shape = vla.noise_shape(b)
    batch["noise"] = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    batch["time"] = torch.from_numpy((rng.beta(1.5, 1.0, size=b) * 0.999 + 0.001).astype(np.float32))
    return batch


class SmolVLAObjective(Objective):
    """SmolVLA's flow matching as LeRobot trains it: x_t = t * noise + (1 - t) * actions; the
    velocity v(x_t, t) is matched (MSE, over the real action dimensions) to the teacher's velocity
    at the same x_t and t, and (label) to the target noise - actions."""

    @staticmethod
    def velocity(model: Any, inputs: dict, x_t: Any, t: Any) -> Any:
        inputs = model._model_inputs({k: v for k, v in inputs.items() if k != "noise"})
        prefix_kv, pad = model.prefill(inputs)
        return model.action_head(x_t, t, prefix_kv, pad)

    def terms(self, batch: dict) -> tuple[Any, Any]:
        import torch.nn.functional as F

        act = batch["actions"].float()
        noise, t = batch["noise"].to(act.device), batch["time"].to(act.device)
        a = F.pad(act, (0, noise.shape[-1] - act.shape[-1]))
        x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * a
        dim = act.shape[-1]
        with self.teacher_pass():
            target = self.velocity(self.t, batch["inputs"], x_t, t)[..., :dim]
        with self.student_pass():
            v = self.velocity(self.s, batch["inputs"], x_t, t)[..., :dim].float()
        label = F.mse_loss(v, (noise - a)[..., :dim]) if self.config.label_weight > 0 else None
        return F.mse_loss(v, target.float()), label


def make_objective(student: Any, teacher: Any, config: DistillConfig) -> Objective:
    """The objective of the student's family."""
    cls = {"reference": ReferenceObjective, "openvla": OpenVLAObjective, "openvla-oft": OFTObjective,
           "smolvla": SmolVLAObjective}.get(student.family)
    if cls is None:
        raise PassError(f"pass {config.name!r}: no distillation objective for family {student.family!r}")
    return cls(student, teacher, config)
