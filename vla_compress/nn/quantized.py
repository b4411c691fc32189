"""Quantized Linear layers that store low-bit weights (the state dict really shrinks) and compute in
torch, so a quantized policy runs closed loop before any export.

Storage (all symmetric, zero point 0):
  int8 per output channel   qweight int8 (out, in), scale float32 (out,)
  int4 per group of inputs  qweight uint8 (out, in/2): two 4-bit values per byte, the even input
                            index in the low nibble, stored as q + 8 in [0, 15]; scale float16
                            (out, in/group) -- 4 + 16/group bits per weight (4.25 at group 64)
Compute: dequantize on the fly and F.linear (weight-only), or quantize the activations too
(W8A8: per-token dynamic scale, or a per-tensor static scale calibrated from percentiles) and
multiply the integer values (exact in float32 for the widths used here: |sum| < 2^24).
Dequantize-then-matmul keeps the arithmetic the scheme defines and keeps FLOP counting honest;
it is not a fast kernel (torch._weight_int8pack_mm / _weight_int4pack_mm_for_cpu are).

Every module has `scheme` (a dict exporters read: bits, group size, activation handling) and a
`weight` property returning the dequantized weight, for code that reads `.weight` (the reference
tokens head slices its action rows; adapters probe the weight's dtype/device).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INT4_SCALE_DTYPE = torch.float16


# --- quantizers -----------------------------------------------------------------------------------

def quantize_int8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = (w.detach().float().abs().amax(1) / 127.0).clamp(min=1e-12)
    q = (w.detach().float() / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
    return q, scale


def quantize_int4_groups(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Values in [-8, 7] (int8 tensor, not packed) and float16 scales (out, in/group)."""
    out, inp = w.shape
    g = w.detach().float().reshape(out, inp // group_size, group_size)
    scale = (g.abs().amax(-1) / 7.0).clamp(min=1e-8).to(INT4_SCALE_DTYPE)
    q = (g / scale.float()[..., None]).round().clamp(-8, 7).to(torch.int8)
    return q.reshape(out, inp), scale


def dequantize_int4_groups(q: torch.Tensor, scale: torch.Tensor, group_size: int) -> torch.Tensor:
    out, inp = q.shape
    return (q.float().reshape(out, inp // group_size, group_size) * scale.float()[..., None]).reshape(out, inp)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_int4(p: torch.Tensor) -> torch.Tensor:
    lo, hi = (p & 0x0F).to(torch.int8) - 8, (p >> 4).to(torch.int8) - 8
    return torch.stack([lo, hi], dim=-1).reshape(p.shape[0], p.shape[1] * 2)


# --- modules ------------------------------------------------------------------------------------------

class QuantizedLinear(nn.Module):
    is_quantized = True

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    scheme: dict = {}

    def dequantize(self) -> torch.Tensor:
        raise NotImplementedError

    @property
    def weight(self) -> torch.Tensor:
        return self.dequantize()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}"

    def _bias(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.bias is None else y + self.bias.to(y.dtype)


class Int8WeightOnlyLinear(QuantizedLinear):
    """int8 weights (per output channel), activations in float."""

    scheme = {"format": "int8_weight_only", "weight_bits": 8, "granularity": "per_channel",
              "symmetric": True, "activation": "float"}

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None = None):
        super().__init__(in_features, out_features, bias)
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))

    @classmethod
    def from_float(cls, lin: nn.Linear) -> "Int8WeightOnlyLinear":
        m = cls(lin.in_features, lin.out_features, lin.bias)
        m.qweight, m.scale = quantize_int8_per_channel(lin.weight)
        return m.to(lin.weight.device)

    def dequantize(self) -> torch.Tensor:
        return self.qweight.float() * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class Int8DynamicLinear(Int8WeightOnlyLinear):
    """W8A8 with dynamic activations: each token's activations are scaled by their own absmax/127."""

    scheme = {"format": "int8_dynamic", "weight_bits": 8, "granularity": "per_channel", "symmetric": True,
              "activation": "int8_dynamic_per_token"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        sx = (xf.abs().amax(-1, keepdim=True) / 127.0).clamp(min=1e-12)
        xq = (xf / sx).round().clamp(-127, 127)
        y = F.linear(xq, self.qweight.float()) * sx * self.scale
        return self._bias(y).to(x.dtype)


class Int8StaticLinear(Int8WeightOnlyLinear):
    """W8A8 with a static per-tensor activation scale calibrated on data (a percentile of |x|/127)."""

    scheme = {"format": "int8_static", "weight_bits": 8, "granularity": "per_channel", "symmetric": True,
              "activation": "int8_static_per_tensor"}

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None = None):
        super().__init__(in_features, out_features, bias)
        self.register_buffer("input_scale", torch.ones(()))

    @classmethod
    def from_float(cls, lin: nn.Linear, input_scale: float = 1.0) -> "Int8StaticLinear":
        m = super().from_float(lin)
        m.input_scale.fill_(max(float(input_scale), 1e-12))
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.input_scale
        xq = (x.float() / s).round().clamp(-128, 127)
        y = F.linear(xq, self.qweight.float()) * (s * self.scale)
        return self._bias(y).to(x.dtype)


class Int4WeightOnlyLinear(QuantizedLinear):
    """int4 weights in groups of `group_size` inputs, packed two per byte; optional AWQ smoothing
    (weights stored as W diag(s), inputs divided by s at run time)."""

    def __init__(self, in_features: int, out_features: int, group_size: int, bias: torch.Tensor | None = None,
                 awq: bool = False):
        super().__init__(in_features, out_features, bias)
        self.group_size = group_size
        self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(out_features, in_features // group_size, dtype=INT4_SCALE_DTYPE))
        self.register_buffer("smooth", torch.ones(in_features) if awq else None)
        self.scheme = {"format": "int4_weight_only", "weight_bits": 4, "granularity": "per_group",
                       "group_size": group_size, "symmetric": True, "scale_dtype": "float16",
                       "packing": "uint8, even index in the low nibble, q + 8", "awq": awq, "activation": "float"}

    @classmethod
    def from_float(cls, lin: nn.Linear, group_size: int, smooth: torch.Tensor | None = None) -> "Int4WeightOnlyLinear":
        m = cls(lin.in_features, lin.out_features, group_size, lin.bias, awq=smooth is not None)
        w = lin.weight.detach().float()
        if smooth is not None:
            m.smooth.copy_(smooth)
            w = w * smooth[None, :]
        q, m.scale = quantize_int4_groups(w, group_size)
        m.qweight = pack_int4(q)
        return m.to(lin.weight.device)

    def dequantize(self) -> torch.Tensor:
        """The effective weight (smoothing folded back in)."""
        w = dequantize_int4_groups(unpack_int4(self.qweight), self.scale, self.group_size)
        return w if self.smooth is None else w / self.smooth[None, :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = dequantize_int4_groups(unpack_int4(self.qweight), self.scale, self.group_size).to(x.dtype)
        if self.smooth is not None:
            x = x / self.smooth.to(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))


def take_rows(m: QuantizedLinear, start: int) -> QuantizedLinear:
    """A quantized module of the same class holding output rows [start:] of `m`: the same integer
    values and scales (every scheme here quantizes per output row or per group within a row), so an
    exporter that needs a slice of a quantized Linear (the action-bin rows of an LM head) can carry it."""
    import copy

    out = copy.deepcopy(m)
    rows = range(m.out_features)[start:]
    idx = slice(rows.start, rows.stop)
    out.qweight = m.qweight[idx].clone()
    out.scale = m.scale[idx].clone()
    if m.bias is not None:
        out.bias = nn.Parameter(m.bias[idx].detach().clone(), requires_grad=False)
    out.out_features = len(rows)
    out.rows_of = (m, rows.start)  # (a tuple: not registered as a submodule) which module, from which row
    return out
