"""Compression passes: `apply(vla, config, context) -> vla`, one registry, composed by apply_passes.

    from vla_compress.passes import PassContext, apply_passes, quantize_
    from vla_compress.passes.prune import LayerDropConfig, WidthPruneConfig
    from vla_compress.passes.quantize import Int4WeightOnlyConfig

    ctx = PassContext.from_lerobot(vla, "data/mt10", num_samples=32, seed=0)
    apply_passes(vla, [LayerDropConfig(num_layers=1), WidthPruneConfig(mlp_ratio=0.25)], ctx)
    quantize_(vla, Int4WeightOnlyConfig(group_size=64, awq=True, where="backbone"), ctx)
    vla.compression_log  # one entry per pass: config, params/FLOPs/bytes before and after, wall time
    vla.save_pretrained("out")  # + quantization.json / compression.json: from_pretrained rebuilds it

Distillation (passes/distill) trains a pruned student against the uncompressed teacher:
`PassContext.from_lerobot(vla, dataset, teacher=copy.deepcopy(vla))`, then `DistillConfig(steps=300)`.

Importing this package does not import torch.
"""

from .base import CALIBRATION, TEACHER, TRAINING, PassConfig, PassContext, Where
from .calibration import Dataset, calibration_dataset, observations_from_lerobot, synthetic_observations
from .registry import config_from_dict, get_pass, list_passes, register_pass
from .runner import apply_pass, apply_passes, quantize_

__all__ = ["CALIBRATION", "TEACHER", "TRAINING", "Dataset", "PassConfig", "PassContext", "Where", "apply_pass",
           "apply_passes", "calibration_dataset", "config_from_dict", "get_pass", "list_passes",
           "observations_from_lerobot", "quantize_", "register_pass", "synthetic_observations"]
