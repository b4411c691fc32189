"""AWQ's activation-aware scale search (Lin et al. 2024), for one Linear at a time.

Input channels that carry large activations matter most; scaling their weight columns up by s
before quantization (and the inputs down by s) shrinks their relative rounding error. AWQ searches
s = mean|x|^alpha / sqrt(max * min) over a grid of alpha in [0, 1) and keeps the alpha whose
quantized layer best reproduces the float output on calibration inputs (alpha = 0 is plain
round-to-nearest, so the search never does worse than RTN on the calibration sample).

Difference from the reference implementation: 1/s is applied to the input at run time (one
elementwise multiply, stored in the module) instead of being folded into the previous LayerNorm /
Linear, so every Linear can be searched independently, whatever precedes it.
"""

from __future__ import annotations

import torch

from ...nn.quantized import dequantize_int4_groups, quantize_int4_groups


def awq_scale(weight: torch.Tensor, x: torch.Tensor, mean_abs: torch.Tensor, group_size: int,
              grid: int = 20) -> tuple[torch.Tensor | None, dict]:
    """Best smoothing vector s (in_features,) or None when plain RTN is best; and the search's
    errors (relative output MSE) at alpha = 0 and at the chosen alpha."""
    w = weight.detach().float()
    x = x.float()
    y = x @ w.t()
    denom = y.pow(2).mean().clamp(min=1e-12)

    def err(s: torch.Tensor | None) -> float:
        if s is None:
            q, sc = quantize_int4_groups(w, group_size)
            wq = dequantize_int4_groups(q, sc, group_size)
        else:
            q, sc = quantize_int4_groups(w * s[None, :], group_size)
            wq = dequantize_int4_groups(q, sc, group_size) / s[None, :]
        return float(((x @ wq.t() - y).pow(2).mean() / denom).item())

    base = err(None)
    best, best_s, best_alpha = base, None, 0.0
    a = mean_abs.float().clamp(min=1e-6)
    for k in range(1, grid):
        alpha = k / grid
        s = a.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        e = err(s)
        if e < best:
            best, best_s, best_alpha = e, s, alpha
    return best_s, {"rtn_rel_mse": base, "awq_rel_mse": best, "alpha": best_alpha}
