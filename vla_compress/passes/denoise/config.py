"""Config of the denoise-steps pass (no torch here; the transform is in apply.py)."""

from __future__ import annotations

from dataclasses import dataclass

from ..base import CALIBRATION, PassConfig
from ..registry import register_pass


@dataclass(frozen=True)
class DenoiseStepsConfig(PassConfig):
    """Run a flow-matching action head with fewer Euler steps (e.g. 10 -> 4 -> 2).

    The head integrates the learned velocity from noise (t = 1) to actions (t = 0) in `steps`
    equal steps instead of the checkpoint's; every step is one pass of the action expert over the
    cached prefix, so the head's cost falls in proportion. The new count is written into the
    family's config (SmolVLA `num_steps`, π0 `num_inference_steps`), so save/load, every export
    (the ONNX graph unrolls the loop) and every runtime honour it.

    `distill_steps` > 0 then fine-tunes the action expert (the `action_head` component) so that the
    few-step student's chunk matches the many-step teacher's chunk at the same noise (MSE over the
    real action dimensions), on the calibration observations, with Adam at `lr`. The compression
    log records the offline fidelity against the many-step model either way.
    """

    name = "denoise-steps"
    supported_components = ("action_head",)
    steps: int = 4
    distill_steps: int = 0
    lr: float = 1e-4
    batch_size: int = 4
    seed: int = 0

    def validate(self) -> None:
        self.check_range("steps", 1, 1000)
        self.check_range("distill_steps", 0, 10**6)
        self.check_range("lr", 0.0, 1.0, lo_open=True)
        self.check_range("batch_size", 1, 4096)

    def needs(self) -> frozenset[str]:
        return frozenset({CALIBRATION}) if self.distill_steps else frozenset()


register_pass(DenoiseStepsConfig, "vla_compress.passes.denoise.apply:reduce_denoise_steps", needs="flow")
