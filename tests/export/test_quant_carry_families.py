"""INT8 / INT4 quantized in torch, then exported to ONNX, on the OpenVLA, OpenVLA-OFT and SmolVLA tiny
fixtures: the artifact carries torch's integers (every quantized layer the graph computes) and passes
parity against the quantized torch model, the way a user deploys a model whose success was measured
in torch. (Parity of a *re-quantized* random model is not meaningful: tests/export/test_onnx_openvla.py.)"""

from __future__ import annotations

import copy

import pytest

from tests.passes.conftest import context_for
from vla_compress.export import Artifact, export, validate
from vla_compress.export.onnx import OnnxExportConfig
from vla_compress.passes import apply_passes, synthetic_observations
from vla_compress.passes.quantize import Int4WeightOnlyConfig, Int8WeightOnlyConfig
from vla_compress.nn.quantized_state import quantized_modules

FAMILIES = ("openvla", "openvla-oft", "smolvla")


@pytest.fixture(scope="module")
def quantized() -> dict:
    from vla_compress.models.openvla.adapter import OpenVLA, OpenVLAOFT
    from vla_compress.models.smolvla.adapter import SmolVLA

    out = {}
    for fam, vla in (("openvla", OpenVLA.tiny(seed=0)), ("openvla-oft", OpenVLAOFT.tiny(seed=0)),
                     ("smolvla", SmolVLA.tiny(seed=0))):
        q = copy.deepcopy(vla)
        apply_passes(q, [Int4WeightOnlyConfig(group_size=32, where=["backbone"]),
                         Int8WeightOnlyConfig(where=["projector"])], context_for(q))
        out[fam] = q
    return out


@pytest.mark.parametrize("fam", FAMILIES)
def test_torch_int8_int4_model_exports_with_parity_and_carried_layers(quantized, fam, tmp_path):
    vla = quantized[fam]
    n_quantized = len(quantized_modules(vla))
    assert n_quantized > 0
    obs = synthetic_observations(vla, 4, seed=3)
    art = export(vla, OnnxExportConfig(), tmp_path / fam, example=obs[:2])
    validate(art, vla, obs)
    art = Artifact.load(art.path)
    carry = art.manifest["quantization_carry"]
    unused = set()
    if fam == "smolvla":  # its last VLM layer only gives the expert keys/values: the rest is not in the graph
        last = f"backbone.layers.{len(vla.backbone.layers) - 1}."
        unused = {n for n in quantized_modules(vla) if n.startswith(last) and not n.endswith(("k_proj", "v_proj"))}
        assert unused
    assert set(carry["not_carried"]) == unused, carry["not_carried"]
    assert set(carry["layers"]) == set(quantized_modules(vla)) - unused
    p = art.manifest["parity"]
    assert art.status == "ok" and p["passed"], p["failures"]
