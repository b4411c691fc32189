"""Per-operator trace of one policy step: FLOPs, weight elements and activation elements per op.

Why a trace and not only totals (counting.py): a roofline needs each operator on its own, since
one op is compute-bound (a prefill matmul over 280 tokens) while the next is bandwidth-bound (the
same matmul at decode, one token). The trace runs the model's real `predict_chunk`, so it follows
whatever a pass changed (fewer layers, narrower MLPs, fewer visual tokens, a pruned KV cache), and
works on the meta device (OpenVLA-7B-sized configs, nothing allocated).

What is recorded, per aten operator that launches a kernel (views and no-op casts are skipped):
- `flops`: 2 per multiply-add for matmuls (linear, matmul, mm, bmm), convolutions and attention
  (both attention matmuls, the full L_q x L_k score matrix, as torch's FlopCounterMode counts it);
  0 for everything else (norms, activations, copies: bandwidth-bound, their FLOPs are noise);
- `weight_elems`: elements of parameter operands read (an embedding lookup reads only the gathered
  rows; a slice of a weight reads only the slice). Bytes come later, at the deployment precision;
- `act_elems`: elements of the other operands plus the outputs. At a decode step the attention
  op's K/V operands *are* the KV cache, so the cache is read in full on every decoded token;
- `component` and `call`: the named component running (innermost), and which call of it (the
  backbone's call 0 is the prefill, calls >= 1 are decode steps of a tokens head).
Element counts (not bytes) are stored so one trace serves every precision.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from math import prod
from typing import Any, Callable

GROUPS = ("vision", "projector", "prefill", "decode", "action_head", "other")
GROUP_LABELS = {"vision": "vision encoder", "projector": "projector(s)", "prefill": "backbone prefill",
                "decode": "backbone decode steps", "action_head": "action head", "other": "other"}
HEAVY_KINDS = ("matmul", "attention", "conv")

# Ops treated as one kernel each (not decomposed), with how their FLOPs are counted.
_MATMUL = ("linear", "matmul", "mm", "addmm", "bmm", "baddbmm", "addmv", "mv", "dot")
_ATTENTION = ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention",
              "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention_for_cpu",
              "_scaled_dot_product_cudnn_attention")
_CONV = ("conv1d", "conv2d", "conv3d", "convolution", "_convolution")
_UNITS = (*_MATMUL, *_ATTENTION, *_CONV, "layer_norm", "group_norm", "rms_norm", "embedding")
# Ops that launch no kernel (aliases, allocation, shape queries).
_NO_KERNEL = ("detach", "detach_", "alias", "lift_fresh", "empty", "empty_like", "empty_strided", "new_empty",
              "_unsafe_view", "set_", "resize_", "size", "sym_size", "stride", "sym_stride", "numel", "sym_numel",
              "dim", "is_contiguous", "storage_offset", "sym_storage_offset", "is_strides_like_format",
              "is_non_overlapping_and_dense", "sym_is_contiguous", "_local_scalar_dense", "item")


def component_group(component: str, call: int) -> str:
    """The breakdown group of an op run by `component` in its `call`-th call (0-based)."""
    if component == "vision_encoder":
        return "vision"
    if component in ("projector", "proprio_projector"):
        return "projector"
    if component == "backbone":
        return "prefill" if call == 0 else "decode"
    if component == "action_head":
        return "action_head"
    return "other"


@dataclass(frozen=True)
class OpRecord:
    """One kernel of the policy step (see the module docstring for the fields)."""
    op: str
    kind: str  # matmul | attention | conv | norm | embedding | elementwise
    component: str
    call: int
    flops: int
    weight_elems: int
    act_elems: int
    weight: str = ""  # name of the (first) parameter operand, if any
    out_elems: int = 0  # elements written (part of act_elems)

    @property
    def group(self) -> str:
        return component_group(self.component, self.call)


@dataclass
class StepTrace:
    """Every kernel of one policy step plus what the memory-fit check needs."""
    ops: list[OpRecord]
    calls: dict[str, int]
    component_params: dict[str, int]
    matrix_param_elems: int  # parameters with >= 2 dims (stored at the weight format)
    vector_param_elems: int  # norms, biases (kept at the activation precision)
    kv_cache_elems: int  # K and V kept across decode steps (0 for a single-pass backbone)
    model: dict[str, Any] = field(default_factory=dict)

    @property
    def flops(self) -> int:
        return sum(o.flops for o in self.ops)

    def summary(self) -> dict[str, Any]:
        """Totals per group (FLOPs, weight/activation elements, kernels) and the model facts."""
        per: dict[str, dict[str, int]] = {}
        for o in self.ops:
            g = per.setdefault(o.group, {"flops": 0, "weight_elems": 0, "act_elems": 0, "kernels": 0, "heavy_kernels": 0})
            g["flops"] += o.flops
            g["weight_elems"] += o.weight_elems
            g["act_elems"] += o.act_elems
            g["kernels"] += 1
            g["heavy_kernels"] += o.kind in HEAVY_KINDS
        return {"model": self.model, "flops": self.flops, "calls": self.calls, "per_group": per,
                "params": sum(self.component_params.values()), "component_params": self.component_params,
                "matrix_param_elems": self.matrix_param_elems, "vector_param_elems": self.vector_param_elems,
                "kv_cache_elems": self.kv_cache_elems}

    def to_dict(self, ops: bool = False) -> dict[str, Any]:
        d = self.summary()
        if ops:
            d["ops"] = [asdict(o) for o in self.ops]
        return d


def _storage_key(t) -> int | None:
    try:
        return t.untyped_storage()._cdata
    except Exception:  # tensors without a storage (some subclasses)
        return None


def _tensors(obj) -> list:
    import torch

    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for x in obj for t in _tensors(x)]
    return []


def _unit_flops(name: str, args: tuple, out) -> int:
    """FLOPs of one matmul / attention / convolution op from its operand shapes."""
    outs = _tensors(out)
    if name in _MATMUL:
        a = args[1] if name in ("addmm", "baddbmm", "addmv") else args[0]
        k = a.shape[-1]
        return 2 * outs[0].numel() * k
    if name in _ATTENTION:
        q, k, v = args[:3]
        return 2 * prod(q.shape[:-1]) * k.shape[-2] * (q.shape[-1] + v.shape[-1])
    if name in _CONV:
        w = args[1]
        return 2 * outs[0].numel() * (w.numel() // w.shape[0])
    return 0


def _kind(name: str) -> str:
    if name in _MATMUL:
        return "matmul"
    if name in _ATTENTION:
        return "attention"
    if name in _CONV:
        return "conv"
    if name in ("layer_norm", "group_norm", "rms_norm", "native_layer_norm"):
        return "norm"
    if name in ("embedding", "index_select"):
        return "embedding"
    return "elementwise"


def _recorder_cls():
    """The dispatch mode class (built lazily: torch is imported only when tracing)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class _Recorder(TorchDispatchMode):
        def __init__(self, params: dict[int, tuple[str, str]], where: list[tuple[str, int]]):
            super().__init__()
            self.params, self.where, self.ops = params, where, []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = func._overloadpacket.__name__
            if name in _NO_KERNEL:
                return func(*args, **kwargs)
            if name not in _UNITS and func._overloadpacket not in flop_registry:
                with self:  # composite ops (to, contiguous, ...): record what they decompose into
                    r = func.decompose(*args, **kwargs)
                if r is not NotImplemented:
                    return r
            out = func(*args, **kwargs)
            if func.is_view:
                return out
            ins = _tensors(list(args) + list(kwargs.values()))
            outs = _tensors(out)
            if any(o is i for o in outs for i in ins) and name not in ("copy_",) and not name.endswith("_"):
                return out  # returned an input unchanged (a no-op cast or contiguous)
            weight_elems, act_elems, weight, owner = 0, 0, "", None
            for t in ins:
                hit = self.params.get(_storage_key(t))
                if hit is None:
                    act_elems += t.numel()
                else:
                    weight_elems += t.numel()
                    weight, owner = weight or hit[0], owner or hit[1]
            if name in ("embedding", "index_select") and weight:
                weight_elems = sum(o.numel() for o in outs)  # a lookup reads the gathered rows only
            out_elems = sum(o.numel() for o in outs)
            act_elems += out_elems
            if name in _UNITS:
                flops = _unit_flops(name, args, out)
            elif func._overloadpacket in flop_registry:
                flops = int(flop_registry[func._overloadpacket](*args, **kwargs, out_val=out))
            else:
                flops = 0
            # outside every component, an op belongs to the owner of its weight (a tokens head
            # applied as a matmul on its weight rows), else to "other"
            component, call = self.where[-1] if self.where else (owner or "other", 0)
            self.ops.append(OpRecord(name, _kind(name), component, call, flops, weight_elems, act_elems, weight, out_elems))
            return out

    return _Recorder


def trace_call(fn: Callable[[], Any], root, components: dict[str, Any]) -> tuple[list[OpRecord], dict[str, int]]:
    """Run `fn()` under the op recorder: parameters of module `root` count as weights, ops are
    attributed to the innermost running module of `components` (name -> module). Returns
    (ops, calls per component)."""
    import torch

    comp_of_param: dict[int, str] = {}
    for cname, mod in components.items():
        for p in mod.parameters():
            comp_of_param.setdefault(id(p), cname)
    params: dict[int, tuple[str, str]] = {}
    for pname, p in root.named_parameters():
        key = _storage_key(p)
        if key is not None:
            params[key] = (pname, comp_of_param.get(id(p), "other"))
    where: list[tuple[str, int]] = []
    calls = {n: 0 for n in components}
    hooks = []
    for cname, mod in components.items():
        def pre(*_, _n=cname):
            where.append((_n, calls[_n]))
            calls[_n] += 1

        def post(*_, _n=cname):
            if where and where[-1][0] == _n:
                where.pop()

        hooks += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    recorder = _recorder_cls()(params, where)
    try:
        with torch.inference_mode(), recorder:
            fn()
    finally:
        for h in hooks:
            h.remove()
    return recorder.ops, calls


def trace_policy_step(vla, observation: dict | None = None) -> StepTrace:
    """Trace one `predict_chunk` of `vla` on `observation` (a dummy one by default)."""
    from .counting import dummy_observation

    obs = observation or dummy_observation(vla)
    device = next(vla.parameters()).device
    inputs = {k: v.to(device) for k, v in vla.preprocess([obs]).items()}
    comps = vla.components()
    ops, calls = trace_call(lambda: vla.predict_chunk(inputs), vla, comps)
    matrix = sum(p.numel() for p in vla.parameters() if p.dim() >= 2)
    vector = sum(p.numel() for p in vla.parameters() if p.dim() < 2)
    spec = vla.action_spec
    model = {"family": getattr(vla, "family", ""), "preset": getattr(vla, "preset", None),
             "head": spec.head, "chunk_size": spec.chunk_size, "action_dim": spec.dim,
             "tokens_per_step": spec.tokens_per_step, "device": device.type,
             "dtype": str(next(vla.parameters()).dtype).replace("torch.", "")}
    try:
        model["tokens"] = vla.token_counts(obs.get("instruction")).to_dict()
    except (NotImplementedError, AttributeError):
        pass
    return StepTrace(ops, calls, {n: sum(p.numel() for p in m.parameters()) for n, m in comps.items()},
                     matrix, vector, _kv_cache_elems(ops, calls), model)


def _kv_cache_elems(ops: list[OpRecord], calls: dict[str, int]) -> int:
    """K and V held across the decode steps of a multi-call backbone: what its K/V projections
    produced over the whole step (HF Llama naming), else the K/V operands of its last attention ops."""
    if calls.get("backbone", 0) <= 1:
        return 0
    produced = sum(o.out_elems for o in ops if o.component == "backbone"
                   and o.weight.endswith(("k_proj.weight", "v_proj.weight")))
    if produced:
        return produced
    last = calls["backbone"] - 1
    # attention reads q, k, v and writes an output the size of q: what is left is K and V
    return sum(o.act_elems - 2 * o.out_elems for o in ops
               if o.component == "backbone" and o.call == last and o.kind == "attention")
