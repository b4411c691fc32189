"""The distillation loss of one batch: shared plumbing here, the terms in the student's family.

A batch is {"inputs": the model's preprocessed inputs, "actions": (B, K, A) normalised
demonstration chunk} (data.py / data_families.py), plus whatever the family draws with it (a flow
head's "noise" and "time", so a held-out batch is the same at every evaluation; a batch holding
"noise" hands it to predict_chunk as the start noise of both models). The loss is the weighted
sum of the terms, kept in `Objective.parts`: "action" (distance to the teacher's output), "label"
(the family's training loss on the demonstration), "hidden" (hidden-state matching, here).

Family hooks: the family spec's `distill` module (models/<family>/distill_<family>.py, reached
with `family_hook`) defines
    objective_terms(objective, batch) -> (action, label)   the two loss tensors of one batch (label
        None when objective.config.label_weight is 0); it runs the student inside
        `objective.student_pass()` and the teacher inside `objective.teacher_pass()`, each exactly
        once where hidden states are to be matched; `objective.s` / `.t` are the models,
        `.config` the DistillConfig (temperature, label_weight); nn/losses.py has kl_bins.
    load_data(vla, dataset, config, loaders) -> data        the frames to distil on: one of the
        generic loaders, parameterised: loaders.frames(vla, dataset, config) (data.py: the BC
        trainer's tensors) or loaders.observations(vla, dataset, config, cameras, clip)
        (data_families.py: observations through the model's processor; cameras(vla, available,
        root) -> the dataset cameras the model reads, in its order; clip: targets to [-1, 1]).
and optionally
    draw_batch_noise(vla, batch, rng) -> batch   per-batch draws of the objective (a flow head's
        noise and time), from the loop's seeded numpy generator.
    check_teacher(student, teacher) -> [problem]   what makes a teacher of the same family and
        action spec unusable; without it, the action statistics must be equal (train.py).
Hooks get models and objectives as arguments, never import passes/.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from ...errors import ConfigError, PassError
from ...models.registry import family_of
from .config import DistillConfig


def family_hook(vla: Any, name: str, optional: bool = False) -> Callable[..., Any] | None:
    """Distill hook `name` of `vla`'s family (see the module docstring); None for an optional hook
    the family does not define; a PassError naming the family for a missing required one."""
    try:
        spec = family_of(vla)
        if optional and not spec.has_hook("distill", name):
            return None
        return spec.hook("distill", name, "pass 'distill'")
    except PassError:
        raise
    except ConfigError as e:
        raise PassError(str(e)) from None


class HiddenCapture:
    """Forward hooks keeping the output hidden states (and the backbone's attention mask) of named
    components while `active`. A component returning per-layer (key, value) pairs (a backbone
    whose prefix keys/values are what an action expert reads) is captured as every layer's keys
    and values concatenated along the feature axis."""

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


class Objective:
    """The loss of a batch: the family's `objective_terms` (the action and label terms) plus
    hidden-state matching on both models, weighted by the config; the terms of the last call are
    in `parts`. Call `remove()` when done (it takes the capture hooks off the models)."""

    def __init__(self, student: Any, teacher: Any, config: DistillConfig):
        self.terms_fn = family_hook(student, "objective_terms")  # before any hook goes on the models
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
        """(action term, label term or None): the family's objective_terms."""
        return self.terms_fn(self, batch)

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
