"""Quantization in torch: low-bit storage, schemes, per-module rules, AWQ, mixed precision, OpenVLA."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from tests.passes.conftest import context_for
from vla_compress.errors import PassError
from vla_compress.passes import apply_passes, quantize_
from vla_compress.passes.quantize import (FqnToConfig, Int4WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig,
                                          Int8StaticActivationInt8WeightConfig, Int8WeightOnlyConfig,
                                          MixedPrecisionConfig, quantization_scheme)
from vla_compress.passes.quantize.awq import awq_scale
from vla_compress.nn.quantized import (Int4WeightOnlyLinear, Int8DynamicLinear, Int8StaticLinear,
                                                  Int8WeightOnlyLinear, pack_int4, unpack_int4)


def linears(vla, kind=nn.Linear) -> dict:
    return {f"{c}.{n}" if n else c: m for c, mod in vla.components().items() for n, m in mod.named_modules()
            if isinstance(m, kind)}


def chunk(vla, obs) -> torch.Tensor:
    with torch.no_grad():
        return vla.predict_chunk(vla.preprocess(obs))


def test_int4_packing_round_trips():
    q = torch.randint(-8, 8, (5, 64), dtype=torch.int8)
    p = pack_int4(q)
    assert p.dtype == torch.uint8 and p.shape == (5, 32)
    assert torch.equal(unpack_int4(p), q)


@pytest.mark.parametrize("config, cls, tol", [
    (Int8WeightOnlyConfig(), Int8WeightOnlyLinear, 0.02),
    (Int8DynamicActivationInt8WeightConfig(), Int8DynamicLinear, 0.03),
    (Int8StaticActivationInt8WeightConfig(), Int8StaticLinear, 0.03),
])
def test_int8_schemes_store_int8_and_stay_close(fresh, make_obs, config, cls, tol):
    vla = fresh("regression")
    obs = [make_obs(1), make_obs(2)]
    ref = chunk(vla, obs)
    n_linear = len(linears(vla))
    apply_passes(vla, [config], context_for(vla, batch_size=2))
    q = linears(vla, cls)
    assert len(q) == n_linear and not linears(vla)  # every Linear, in every component
    assert all(m.qweight.dtype == torch.int8 and m.scale.dtype == torch.float32 for m in q.values())
    if cls is Int8StaticLinear:
        assert all(float(m.input_scale) > 0 for m in q.values())
    e = vla.compression_log[-1]
    assert e["after"]["state_dict_bytes"] < 0.6 * e["before"]["state_dict_bytes"]
    assert (chunk(vla, obs) - ref).abs().max() < tol
    assert all(s["weight_bits"] == 8 for s in quantization_scheme(vla).values())


@pytest.mark.parametrize("head", ["regression", "tokens"])
@pytest.mark.parametrize("awq", [False, True])
def test_int4_weight_only(fresh, make_obs, head, awq):
    vla = fresh(head)
    up = vla.backbone.layers[0].mlp.up_proj
    w = up.weight.detach().clone()
    apply_passes(vla, [Int4WeightOnlyConfig(group_size=32, awq=awq)], context_for(vla, batch_size=2))
    q = vla.backbone.layers[0].mlp.up_proj
    assert isinstance(q, Int4WeightOnlyLinear)
    assert q.qweight.dtype == torch.uint8 and q.qweight.shape == (128, 32)  # 64 inputs, two per byte
    assert q.scale.dtype == torch.float16 and q.scale.shape == (128, 2)
    assert (q.smooth is not None) == awq
    assert (q.dequantize() - w).abs().max() <= w.abs().max() / 7  # within one quantization step
    details = vla.compression_log[-1]["details"]
    assert "proprio_projector.fc1" in details["skipped"]  # 4 inputs: no group of 32
    assert isinstance(vla.proprio_projector.fc1, nn.Linear)
    if head == "tokens":  # the head's weight rows are read directly: the dequantizing property serves them
        assert isinstance(vla.action_head, Int4WeightOnlyLinear)
    assert np.isfinite(vla.act(make_obs(1))).all()


def test_awq_beats_round_to_nearest_with_outlier_channels():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 128, generator=g)
    x = torch.randn(256, 128, generator=g)
    x[:, :4] *= 30  # a few channels with large activations, as in LLMs
    s, info = awq_scale(w, x, x.abs().mean(0), group_size=32)
    assert s is not None and info["awq_rel_mse"] < 0.8 * info["rtn_rel_mse"]


def test_fqn_rules_and_where_overrides(fresh, make_obs):
    vla = fresh("regression")
    quantize_(vla, FqnToConfig(rules=[("action_head", None), ("backbone.*", Int4WeightOnlyConfig(group_size=32)),
                                      ("*", Int8WeightOnlyConfig())]))
    scheme = quantization_scheme(vla)
    assert all(type(m) is nn.Linear for m in vla.action_head.modules() if isinstance(m, nn.Linear))
    assert isinstance(vla.action_head.fc1, nn.Linear)
    assert scheme["backbone.layers.1.self_attn.o_proj"]["weight_bits"] == 4
    assert scheme["projector.fc1"]["weight_bits"] == 8
    assert not any(k.startswith("action_head") for k in scheme)
    assert np.isfinite(vla.act(make_obs(0))).all()

    vla = fresh("regression")
    quantize_(vla, Int8WeightOnlyConfig(where={"components": ["backbone"], "exclude": ["backbone.layers.0.mlp"]}))
    assert isinstance(vla.backbone.layers[0].mlp.up_proj, nn.Linear)
    assert isinstance(vla.backbone.layers[0].self_attn.q_proj, Int8WeightOnlyLinear)
    assert isinstance(vla.projector.fc1, nn.Linear)
    with pytest.raises(PassError, match="rules\\[0\\].*matches no Linear"):
        quantize_(fresh("regression"), FqnToConfig(rules=[("backbone.nothing.*", None)]))


def test_mixed_precision_respects_the_budget(fresh, make_obs):
    vla = fresh("regression")
    quantize_(vla, MixedPrecisionConfig(bits=(4, 8), avg_bits=6.0, group_size=32, where="backbone"),
              context_for(vla, batch_size=4))
    d = vla.compression_log[-1]["details"]
    assert d["avg_bits"] <= 6.0 and set(d["plan"].values()) <= {4, 8}
    assert len(d["sensitivity"]) == 14 and all("4" in s and "8" in s for s in d["sensitivity"].values())
    for name, bits in d["plan"].items():
        m = vla.backbone.get_submodule(name.removeprefix("backbone."))
        assert isinstance(m, Int4WeightOnlyLinear if bits == 4 else Int8WeightOnlyLinear)
    assert np.isfinite(vla.act(make_obs(0))).all()
    with pytest.raises(PassError, match="avg_bits"):
        quantize_(fresh("regression"), MixedPrecisionConfig(bits=(8, 32), avg_bits=4.0))


def test_openvla_quantization(openvla_model, make_obs):
    from tests.models.openvla.conftest import make_obs as openvla_obs

    vla = copy.deepcopy(openvla_model)
    obs = openvla_obs(1)
    quantize_(vla, FqnToConfig(rules=[("backbone.*", Int4WeightOnlyConfig(group_size=32)),
                                      ("action_head", Int8WeightOnlyConfig())]))
    assert isinstance(vla.language_model.model.layers[0].mlp.up_proj, Int4WeightOnlyLinear)
    assert isinstance(vla.language_model.lm_head, Int8WeightOnlyLinear)  # the component alias was followed
    assert isinstance(vla.projector.fc1, nn.Linear)
    sd = vla.state_dict()
    assert sd["language_model.lm_head.qweight"].dtype == torch.int8
    assert sd["language_model.model.layers.0.mlp.up_proj.qweight"].dtype == torch.uint8
    assert vla.act(obs).shape == (1, vla.action_spec.dim)
