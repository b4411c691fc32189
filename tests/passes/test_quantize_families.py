"""INT8 / INT4 quantization passes on the OpenVLA, OpenVLA-OFT and SmolVLA tiny fixtures, saved in
the family's own layout and reloaded: the stored weights keep their integer dtypes, quantization.json
and compression.json travel with the checkpoint, and the reloaded model predicts bit-identically."""

from __future__ import annotations

import json

import pytest
import torch

from tests.passes.conftest import context_for
from tests.passes.test_prune_families import family_models, inputs_for, model, reload  # noqa: F401  (fixtures)
from vla_compress.errors import CheckpointError
from vla_compress.passes import apply_passes
from vla_compress.passes.quantize import Int4WeightOnlyConfig, Int8WeightOnlyConfig
from vla_compress.passes.quantize.config import Int8DynamicActivationInt8WeightConfig
from vla_compress.nn.quantized import Int4WeightOnlyLinear

FAMILIES = ("openvla", "openvla-oft", "smolvla")


def _quantize(vla):
    apply_passes(vla, [Int4WeightOnlyConfig(group_size=32, where=["backbone"]),
                       Int8DynamicActivationInt8WeightConfig(where=["vision_encoder"]),
                       Int8WeightOnlyConfig(where=["projector"])], context_for(vla))
    return vla


@pytest.mark.parametrize("family", FAMILIES)
def test_quantized_checkpoint_reloads_bit_identically(family, model, tmp_path):
    vla = _quantize(model(family))
    assert any(isinstance(m, Int4WeightOnlyLinear) for m in vla.backbone.modules())
    inputs = inputs_for(vla)
    with torch.no_grad():
        before = vla.predict_chunk(dict(inputs))
    loaded = reload(vla, tmp_path / "q")
    quant = json.loads((tmp_path / "q" / "quantization.json").read_text())
    assert {s["class"] for s in quant["modules"].values()} >= {"Int4WeightOnlyLinear", "Int8WeightOnlyLinear"}
    stored = {t.dtype for n, t in loaded.state_dict().items() if n.endswith("qweight")}
    assert stored == {torch.int8, torch.uint8}  # int8 rows, packed int4 nibbles
    log = json.loads((tmp_path / "q" / "compression.json").read_text())["log"]
    assert [e["pass"] for e in log] == [e["pass"] for e in vla.compression_log] == \
        ["int4-weight-only", "int8-dynamic", "int8-weight-only"]
    assert [e["pass"] for e in loaded.compression_log] == [e["pass"] for e in log]
    with torch.no_grad():
        assert torch.equal(loaded.predict_chunk(dict(inputs)), before)


@pytest.mark.parametrize("family", ("openvla", "smolvla"))
def test_float_checkpoint_has_no_quantization_files_and_a_bad_one_is_refused(family, model, tmp_path):
    vla = model(family)
    reload(vla, tmp_path / "f")
    assert not (tmp_path / "f" / "quantization.json").exists()
    assert not (tmp_path / "f" / "compression.json").exists()
    # a quantization.json naming a module the model does not have: a CheckpointError naming the file
    (tmp_path / "f" / "quantization.json").write_text(json.dumps(
        {"format_version": 1, "modules": {"backbone.nope": {"class": "Int8WeightOnlyLinear",
                                                           "in_features": 4, "out_features": 4}}}))
    with pytest.raises(CheckpointError, match="quantization.json"):
        _load(vla, tmp_path / "f")


def _load(vla, path):
    from vla_compress.models.openvla.adapter import OpenVLA
    from vla_compress.models.smolvla.adapter import SmolVLA

    if vla.family == "smolvla":
        return SmolVLA.from_pretrained(path)
    return OpenVLA.from_pretrained(path, unnorm_key="bridge_orig")
