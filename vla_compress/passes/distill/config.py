"""Config of the distillation pass (no torch here; the training loop is in train.py).

    teacher = copy.deepcopy(vla)
    ctx = PassContext.from_lerobot(vla, ".cache/demos/mt10-corner128", teacher=teacher)
    apply_passes(vla, [LayerDropConfig(num_layers=1), DistillConfig(steps=300)], ctx)

Order: prune, then distill, then quantize. Quantized weights are not trained: a quantized module
inside the `where` scope is an error; quantized modules outside it stay frozen. Gradients pass
through weight-only ones unchanged. Activation-quantizing ones round their input, and rounding has
no gradient: behind a static-scale one (int8-static) nothing upstream learns, and a component
that gets no gradient at all is an error; behind a dynamic one (int8-dynamic) only the per-token
scale (the row's absmax) passes a gradient, a poor signal. Hence: distill before quantizing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..base import TEACHER, TRAINING, PassConfig
from ..registry import register_pass


@dataclass(frozen=True)
class DistillConfig(PassConfig):
    """Train the student (the model being compressed) against the teacher (context.teacher, the
    uncompressed model) on frames of the training dataset (context.training, a LeRobot dataset).

    Loss (per family: objectives.py): action_weight * the distance to the teacher's output (L1
    between the normalised action chunks, regression heads; temperature^2 * KL(teacher || student)
    over the action bins of every action token under teacher forcing with the teacher's greedy
    tokens, tokens heads; MSE between the flow-matching velocities at the same noisy chunk and time,
    flow heads) + label_weight * the family's own training loss on the demonstrations (L1 to the
    chunk, regression; cross-entropy on the demonstration's action tokens, tokens; MSE to the
    flow-matching target noise - action, flow) + hidden_weight * the mean squared difference of
    the output hidden states of `hidden_components` (over real, unpadded positions, divided by the
    teacher's mean square so the weight does not depend on the hidden scale; a backbone that
    outputs per-layer keys/values for an action expert is matched on those).
    `where` selects what trains (default: every component). AdamW with linear warm-up and cosine
    decay (the BC trainer's), gradient norm clipped at 1, random-shift augmentation of `shift_px`.
    Held out: the last `val_episodes_per_task` episodes of every task (the BC trainer's split);
    the distance to the teacher on up to `eval_frames` of their frames is recorded before and after.
    `train_episodes` > 0 loads only that many (seeded) training episodes, to bound memory.

    Early stopping: with `eval_every` > 0 the held-out objective is measured every `eval_every`
    steps (and before the first); training stops after `early_stop_patience` (> 0) evaluations in a
    row that do not improve the best one by more than `early_stop_min_delta`, and the weights of the
    best evaluation are put back at the end (with or without a stop). The log records the steps run,
    why training stopped, the best held-out objective and its step.
    """

    name = "distill"
    steps: int = 300
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup: int = 20
    batch_size: int = 32
    action_weight: float = 1.0
    label_weight: float = 0.0
    hidden_weight: float = 0.0
    hidden_components: tuple = ("backbone",)
    temperature: float = 1.0
    shift_px: int = 4
    train_episodes: int = 0
    val_episodes_per_task: int = 2
    eval_frames: int = 256
    eval_every: int = 0
    early_stop_patience: int = 0
    early_stop_min_delta: float = 0.0
    amp: bool = False  # bf16 autocast (fp32 master weights): faster on CPUs with AVX512-BF16 and on GPUs
    seed: int = 0

    def validate(self) -> None:
        self.check_range("steps", 1, 10**7)
        self.check_range("lr", 0.0, 1.0, lo_open=True)
        self.check_range("weight_decay", 0.0, 10.0)
        self.check_range("warmup", 0, 10**7)
        self.check_range("batch_size", 1, 65536)
        self.check_range("action_weight", 0.0, 1e6)
        self.check_range("label_weight", 0.0, 1e6)
        self.check_range("hidden_weight", 0.0, 1e6)
        if self.action_weight == 0 and self.hidden_weight == 0 and self.label_weight == 0:
            raise self.error("action_weight", "action_weight, label_weight and hidden_weight are all 0: "
                                              "nothing to learn")
        if self.hidden_weight > 0 and not self.hidden_components:
            raise self.error("hidden_components", "name at least one component when hidden_weight > 0")
        if not all(isinstance(c, str) for c in self.hidden_components):
            raise self.error("hidden_components", f"must be component names, got {list(self.hidden_components)}")
        self.check_range("temperature", 0.0, 100.0, lo_open=True)
        self.check_range("shift_px", 0, 64)
        self.check_range("train_episodes", 0, 10**7)
        self.check_range("val_episodes_per_task", 0, 10**4)
        self.check_range("eval_frames", 0, 10**7)
        self.check_range("seed", 0, 2**32 - 1)
        self.check_range("eval_every", 0, 10**7)
        self.check_range("early_stop_patience", 0, 10**6)
        self.check_range("early_stop_min_delta", 0.0, 1e6)
        if self.early_stop_patience and not self.eval_every:
            raise self.error("early_stop_patience", "early stopping needs held-out evaluations: set eval_every > 0")
        if self.eval_every and (self.val_episodes_per_task == 0 or self.eval_frames == 0):
            raise self.error("eval_every", "held-out evaluations need held-out frames: val_episodes_per_task and "
                                           "eval_frames must be > 0")

    def needs(self) -> frozenset[str]:
        return frozenset({TEACHER, TRAINING})


register_pass(DistillConfig, "vla_compress.passes.distill.train:distill",
              needs="distill")
