"""FLOPs and weight bytes of one policy step, per component, from the model itself.

FLOPs come from torch's FlopCounterMode over a real policy step (matmuls, convolutions and
attention, counted as 2 FLOPs per multiply-add), so they follow whatever a pass changed:
fewer layers, narrower MLPs, fewer visual tokens. Weight bytes are each component's
parameter bytes times the number of times the step runs it (a tokens head re-reads the
backbone once per decoded token). Models built on the meta device are counted without
allocating their weights (OpenVLA-7B-sized configs).
"""

from __future__ import annotations

from dataclasses import dataclass



@dataclass
class StepCount:
    flops: int
    weight_bytes: int
    params: int
    per_component: dict[str, dict]

    def to_dict(self) -> dict:
        return {"flops": self.flops, "weight_bytes": self.weight_bytes, "params": self.params,
                "per_component": self.per_component}


def dummy_observation(vla, instruction: str | None = None) -> dict:
    return vla.dummy_observation(instruction)


def param_bytes(module, read_only: bool = False) -> int:
    """Bytes of a module's parameters and buffers. With `read_only`, embedding tables are left
    out: a lookup gathers a few rows, it does not stream the table."""
    from torch import nn

    skip = set()
    if read_only:
        skip = {id(p) for m in module.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    return sum(p.numel() * p.element_size() for p in module.parameters() if id(p) not in skip) + \
        sum(b.numel() * b.element_size() for b in module.buffers())


def _extra_flop_formulas() -> dict:
    """FLOP formulas torch's FlopCounterMode lacks: its registry has no entry for the CPU flash
    attention kernel, so on the CPU (not on the meta device, where SDPA decomposes into bmm)
    attention counted 0 FLOPs."""
    import torch
    from torch.utils.flop_counter import sdpa_flop_count

    def cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {op: cpu_sdpa} if op is not None else {}


def count_policy_step(vla, observation: dict | None = None) -> StepCount:
    """Count one `predict_chunk` call on `observation` (a dummy one by default)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    obs = observation or dummy_observation(vla)
    inputs = vla.preprocess([obs])
    device = next(vla.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    comps = vla.components()
    counter = FlopCounterMode(display=False, depth=None, custom_mapping=_extra_flop_formulas())
    calls = {name: 0 for name in comps}
    flops = {name: 0 for name in comps}
    open_at: dict[str, int] = {}
    hooks = []
    for name, mod in comps.items():
        def pre(*_, _n=name):
            calls[_n] += 1
            open_at[_n] = counter.get_total_flops()

        def post(*_, _n=name):
            flops[_n] += counter.get_total_flops() - open_at.pop(_n)

        hooks += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    try:
        with torch.inference_mode(), counter:
            vla.predict_chunk(inputs)
    finally:
        for h in hooks:
            h.remove()
    total = int(counter.get_total_flops())
    per = {}
    for name, mod in comps.items():
        pb = param_bytes(mod)
        streamed = param_bytes(mod, read_only=True)
        n_calls = calls[name]
        f = flops[name]
        if name == "action_head" and n_calls == 0 and vla.action_spec.head == "tokens":
            # the tokens head is applied as a matmul on its weight rows, not a module call:
            # it runs once per decoded token, and its FLOPs are what the components leave over
            n_calls = vla.action_spec.tokens_per_step
            f = total - sum(flops.values())
        per[name] = {"params": sum(p.numel() for p in mod.parameters()), "param_bytes": pb,
                     "calls": n_calls, "flops": int(f), "weight_bytes_read": streamed * n_calls}
    return StepCount(flops=total, weight_bytes=int(sum(v["weight_bytes_read"] for v in per.values())),
                     params=sum(p.numel() for p in vla.parameters()), per_component=per)
