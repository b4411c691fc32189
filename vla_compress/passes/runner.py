"""Compose passes in order and keep a compression log on the model.

`vla.compression_log` is a list with one dict per applied pass:
    {"pass", "config", "before": {...}, "after": {...}, "wall_s", "details"}
where before/after hold count_policy_step's params / flops / weight_bytes plus the logical
parameter count (quantized weights count as their element count) and the state-dict bytes, and
details is whatever the pass recorded (layers dropped, heads kept, bits per layer, ...).

When the context holds held-out observations (`PassContext.held_out`: frames never used for
calibration or training), every entry also gets `fidelity`: the model after this pass against the
original (the model as it was before the first pass of this call) on those observations --
normalised action L1 and max |difference| over the whole chunk, and for an action-token head the
fraction of greedily decoded action tokens that agree. `size_on_disk_bytes` in before/after is the
checkpoint directory's size where one was written (the pipeline fills it in); None otherwise.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from .base import PassConfig, PassContext
from .registry import config_from_dict, get_pass


def measure(vla: Any) -> dict:
    from ..profile.counting import count_policy_step

    c = count_policy_step(vla)
    sd = vla.state_dict()
    quant = [m for m in vla.modules() if getattr(m, "is_quantized", False)]
    logical = c.params + sum(m.in_features * m.out_features for m in quant)
    return {"params": c.params, "params_logical": int(logical), "flops": c.flops, "weight_bytes": c.weight_bytes,
            "state_dict_bytes": int(sum(t.numel() * t.element_size() for t in sd.values())),
            "size_on_disk_bytes": None,
            "visual_tokens": vla.token_counts().visual,
            "per_component": {k: {"params": v["params"], "param_bytes": v["param_bytes"], "flops": v["flops"]}
                              for k, v in c.per_component.items()}}


def apply_pass(vla: Any, config: PassConfig | dict, context: PassContext | None = None) -> Any:
    """Apply one pass (see apply_passes)."""
    return apply_passes(vla, [config], context)


def apply_passes(vla: Any, configs: Sequence[PassConfig | dict], context: PassContext | None = None,
                 measure_counts: bool = True) -> Any:
    """Apply passes in order, in place, recording each in `vla.compression_log`. Configs may be
    dataclasses or their dict form. Every config is validated before the first pass runs."""
    import torch

    context = context or PassContext()
    configs = [config_from_dict(c) if isinstance(c, dict) else c for c in configs]
    specs = [get_pass(c.name) for c in configs]
    for spec, cfg in zip(specs, configs):
        spec.check_family(vla)
        context.require(cfg)
    if not hasattr(vla, "compression_log"):
        vla.compression_log = []
    reference = policy_outputs(vla, context.held_out) if context.held_out else None
    for spec, cfg in zip(specs, configs):
        torch.manual_seed(context.seed)
        before = measure(vla) if measure_counts else {}
        context.notes = {}
        t0 = time.perf_counter()
        vla = spec.apply(vla, cfg, context)
        wall = time.perf_counter() - t0
        vla.eval()
        entry = {"pass": cfg.name, "config": cfg.to_dict(), "before": before,
                 "after": measure(vla) if measure_counts else {}, "wall_s": round(wall, 4),
                 "details": dict(context.notes)}
        if reference is not None:
            entry["fidelity"] = fidelity(reference, policy_outputs(vla, context.held_out))
        vla.compression_log.append(entry)
    return vla


def policy_outputs(vla: Any, observations: list[dict], batch: int = 8) -> dict:
    """Normalised action chunks (N, K, A) of `vla` on `observations` and, for an action-token head,
    the greedily decoded action tokens (N, K*A): what the robot would get, in torch."""
    import numpy as np
    import torch

    from ..errors import ConfigError
    from ..models.registry import family_of

    try:
        family = family_of(vla).hook("export", "export_family")()
    except ConfigError:  # a family without export hooks: action chunks only
        family = None
    parts: list[dict] = []
    with torch.inference_mode():
        for i in range(0, len(observations), batch):
            obs = observations[i:i + batch]
            if family is not None:
                out = family.torch_outputs(vla, obs)
                parts.append({k: out[k] for k in ("actions", "bins") if k in out})
            else:
                parts.append({"actions": np.asarray(vla.predict_chunk(vla.preprocess(obs)), dtype=np.float32)})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def fidelity(reference: dict, got: dict) -> dict:
    """Offline action fidelity of `got` against `reference` (both from policy_outputs)."""
    import numpy as np

    a, b = np.asarray(reference["actions"], np.float64), np.asarray(got["actions"], np.float64)
    out = {"observations": int(a.shape[0]), "baseline": "the model before the first pass",
           "action_l1": float(np.abs(a - b).mean()), "action_max_abs": float(np.abs(a - b).max()),
           "token_agreement": None}
    if "bins" in reference and "bins" in got:
        out["token_agreement"] = float((np.asarray(reference["bins"]) == np.asarray(got["bins"])).mean())
    return out


def quantize_(vla: Any, config: PassConfig | dict, context: PassContext | None = None) -> Any:
    """torchao-style verb: `quantize_(vla, Int4WeightOnlyConfig(group_size=64, where="backbone"))`."""
    return apply_passes(vla, [config], context)


def compare_models(a: Any, b: Any, observations: list[dict]) -> dict:
    """Action-chunk difference of two torch models on the same observations (normalised units)."""
    import numpy as np
    import torch

    diffs, l1 = [], []
    with torch.inference_mode():
        for obs in observations:
            ya = np.asarray(a.predict_chunk(a.preprocess([obs])), dtype=np.float64)
            yb = np.asarray(b.predict_chunk(b.preprocess([obs])), dtype=np.float64)
            diffs.append(np.abs(ya - yb).max())
            l1.append(np.abs(ya - yb).mean())
    return {"max_abs": float(max(diffs)), "action_l1": float(np.mean(l1)), "observations": len(observations)}
