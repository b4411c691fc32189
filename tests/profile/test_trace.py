"""Per-operator trace: FLOPs, weight and activation elements against hand-computed counts, and the
policy-step trace of the tiny models (totals, decode re-reads, KV cache, token reduction)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vla_compress.profile.counting import count_policy_step
from vla_compress.profile.trace import component_group, trace_call, trace_policy_step

T, D, H = 5, 16, 2  # tokens, width, heads (head dim 8)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(D, D)
        self.k = nn.Linear(D, D, bias=False)
        self.v = nn.Linear(D, D, bias=False)

    def forward(self, x):
        split = lambda t: t.view(1, T, H, D // H).transpose(1, 2)  # noqa: E731
        return F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))


class Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = Attention()
        self.head = nn.Linear(D, 8)

    def forward(self, x):
        a = self.attn(x).transpose(1, 2).reshape(1, T, D)
        y = self.head(a)
        rows = self.head.weight[:4]  # a slice of a weight used outside its module
        return y, a @ rows.t()


@pytest.fixture(scope="module")
def stack_ops():
    torch.manual_seed(0)
    m = Stack()
    x = torch.randn(1, T, D)
    ops, calls = trace_call(lambda: m(x), m, {"attn": m.attn, "head": m.head})
    return [o for o in ops if o.kind in ("matmul", "attention")], calls


def test_linear_and_attention_counts_by_hand(stack_ops):
    ops, calls = stack_ops
    assert calls == {"attn": 1, "head": 1}
    q, k, v, sdpa, head, sliced = ops
    assert (q.kind, q.component, q.weight) == ("matmul", "attn", "attn.q.weight")
    assert q.flops == 2 * T * D * D == 2560
    assert q.weight_elems == D * D + D  # weight and bias
    assert q.act_elems == T * D + T * D and q.out_elems == T * D
    assert k.weight_elems == v.weight_elems == D * D
    assert sdpa.kind == "attention" and sdpa.weight_elems == 0
    assert sdpa.flops == 2 * (H * T) * T * (8 + 8) == 1600  # QK^T and AV
    assert sdpa.act_elems == 4 * T * D  # q, k, v in; output out
    assert head.flops == 2 * T * D * 8 and head.weight_elems == D * 8 + 8 and head.act_elems == T * D + T * 8
    # outside every component: attributed to the weight's owner; only the slice is read
    assert sliced.component == "head" and sliced.weight == "head.weight"
    assert sliced.weight_elems == 4 * D and sliced.flops == 2 * T * D * 4


def test_call_index_and_groups():
    lin, x = nn.Linear(4, 4), torch.ones(1, 4)
    ops, calls = trace_call(lambda: [lin(x) for _ in range(3)], lin, {"backbone": lin})
    assert calls == {"backbone": 3}
    assert [o.call for o in ops] == [0, 1, 2]
    assert [o.group for o in ops] == ["prefill", "decode", "decode"]
    assert component_group("vision_encoder", 0) == "vision" and component_group("proprio_projector", 0) == "projector"
    assert component_group("action_head", 3) == "action_head" and component_group("something", 0) == "other"


@pytest.fixture(scope="module")
def traces(tiny_models):
    return {head: trace_policy_step(m) for head, m in tiny_models.items()}


def test_totals_match_the_flop_counter(traces, tiny_models):
    for head, tr in traces.items():
        assert tr.flops == count_policy_step(tiny_models[head]).flops
        assert tr.matrix_param_elems + tr.vector_param_elems == sum(p.numel() for p in tiny_models[head].parameters())
        assert tr.model["head"] == head and tr.model["chunk_size"] == 2


def test_decode_rereads_the_backbone_and_keeps_a_kv_cache(traces, tiny_models):
    m, tr = tiny_models["tokens"], traces["tokens"]
    assert tr.calls["backbone"] == 8  # prefill + 7 decode steps for 2 x 4 action tokens
    linear = sum(p.numel() for mod in m.backbone.modules() if isinstance(mod, nn.Linear) for p in mod.parameters())
    decode = [o for o in tr.ops if o.group == "decode" and o.kind == "matmul"]
    assert sum(o.weight_elems for o in decode) == 7 * linear
    b = m.cfg.backbone
    head_dim = b.hidden_size // b.num_heads
    tokens = tr.model["tokens"]["prefill"] + 7  # the last action token is never fed back
    assert tr.kv_cache_elems == 2 * b.num_layers * b.num_kv_heads * head_dim * tokens
    assert traces["regression"].kv_cache_elems == 0  # one pass: K/V are transient activations
    # the decode attention reads the cache: its inputs grow by one token per step
    attn = [o for o in tr.ops if o.group == "decode" and o.kind == "attention"]
    assert attn[-1].act_elems > attn[0].act_elems


def test_token_reduction_is_reflected():
    from vla_compress.models.reference import ReferenceVLA

    full = ReferenceVLA.tiny(head="regression")
    pruned = ReferenceVLA.tiny(head="regression")
    pruned.visual_keep = torch.arange(6)  # keep 6 of 16 visual tokens, as the token pass does
    a, b = trace_policy_step(full), trace_policy_step(pruned)
    prefill = lambda tr: [o for o in tr.ops if o.group == "prefill" and o.kind == "matmul"]  # noqa: E731
    assert sum(o.flops for o in prefill(b)) < sum(o.flops for o in prefill(a))
    assert sum(o.act_elems for o in prefill(b)) < sum(o.act_elems for o in prefill(a))
    assert sum(o.weight_elems for o in prefill(b)) == sum(o.weight_elems for o in prefill(a))


def test_meta_device_trace_allocates_nothing():
    from vla_compress.models.reference import ReferenceVLA

    with torch.device("meta"):
        m = ReferenceVLA.tiny(head="tokens")
    tr = trace_policy_step(m)
    assert tr.model["device"] == "meta" and tr.flops > 0 and tr.calls["backbone"] == 8


@pytest.mark.parametrize("head", ["regression", "tokens"])
def test_reference_preset_traces_on_the_meta_device(head):
    """Counting a preset allocates nothing; transformers' packed-sequence probe must not run on meta."""
    import torch

    from vla_compress.models.reference import ReferenceVLA
    from vla_compress.profile.trace import trace_policy_step

    with torch.device("meta"):
        vla = ReferenceVLA.from_preset("reference-small", head=head)
    t = trace_policy_step(vla)
    assert t.summary()["flops"] > 5e8 and t.summary()["params"] > 5e6
