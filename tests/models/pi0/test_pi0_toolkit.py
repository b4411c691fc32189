"""π0 / π0.5 through the rest of the toolkit: quantization passes by canonical names (saved with
quantization.json and reloaded to the same chunks) and profiling (the measured tiny checkpoint, the
estimated `preset:pi0-3b` / `preset:pi05-3b`)."""

from __future__ import annotations

import pytest
import torch

from vla_compress.models.pi0 import Pi0
from vla_compress.nn.quantized import Int8WeightOnlyLinear
from vla_compress.passes import PassContext, apply_passes, calibration_dataset, synthetic_observations
from vla_compress.passes.quantize import Int8WeightOnlyConfig

torch.set_num_threads(1)


def chunk(vla) -> torch.Tensor:
    x = vla.preprocess([vla.dummy_observation(), vla.dummy_observation("open the drawer")])
    x["noise"] = torch.randn(vla.noise_shape(2), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return vla.predict_chunk(x)


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_int8_weight_only_quantizes_every_component_and_reloads(kind, tmp_path):
    vla = Pi0.tiny(seed=0, kind=kind)
    ref = chunk(vla)
    ctx = PassContext(calibration=calibration_dataset(vla, synthetic_observations(vla, 2), 1))
    apply_passes(vla, [Int8WeightOnlyConfig()], ctx)
    quantized = {f"{c}.{n}" for c, m in vla.components().items() for n, sub in m.named_modules()
                 if isinstance(sub, Int8WeightOnlyLinear)}
    for name in ("vision_encoder.encoder.layers.0.self_attn.q_proj", "projector.linear",
                 "backbone.layers.0.mlp.up_proj", "action_head.expert.layers.1.self_attn.k_proj",
                 "action_head.action_in_proj"):
        assert name in quantized, name
    got = chunk(vla)
    assert torch.isfinite(got).all() and (got - ref).abs().max() / ref.abs().max() < 0.1
    loaded = Pi0.from_pretrained(vla.save_pretrained(tmp_path / "q"))
    assert (tmp_path / "q" / "quantization.json").is_file() and torch.equal(chunk(loaded), got)


def test_profile_measures_the_checkpoint_and_estimates_the_presets(tmp_path):
    from vla_compress.models.pi0.fixtures import write_tiny_pi0
    from vla_compress.profile.runner import profile_targets

    path = write_tiny_pi0(tmp_path / "tiny", dtype="float32")
    result = profile_targets([str(path), "preset:pi0-3b", "preset:pi05-3b"], hardware=["jetson-agx-orin-64gb"],
                             precisions=["fp16"], steps=2, warmup=1, threads=1)
    rows = {(r["target"], r["kind"]): r for r in result["rows"]}
    measured = rows[(str(path), "measured")]
    assert measured["p50_ms"] > 0 and measured["breakdown_ms"]["action_head"] > 0
    for preset in ("preset:pi0-3b", "preset:pi05-3b"):
        row = rows[(preset, "estimated")]
        assert row["error"] is None and row["p50_ms"] > 0 and row["fits"]
        trace = next(t for t in result["targets"] if t["target"] == preset)["trace"]
        assert trace["calls"]["action_head"] == 10 and trace["calls"]["backbone"] == 1


def test_an_artifacts_meta_model_has_the_pruned_shapes(tmp_path):
    """presets' meta_model_from_artifact rebuilds the exported network from the artifact's own files."""
    from tests.passes.conftest import context_for
    from vla_compress.models.pi0.export_pi0 import write_processor_files
    from vla_compress.models.registry import get_family
    from vla_compress.passes.prune import LayerDropConfig
    from vla_compress.passes.tokens import VisualTokenPruneConfig

    vla = Pi0.tiny(seed=0, kind="pi05")
    apply_passes(vla, [LayerDropConfig(num_layers=1), VisualTokenPruneConfig(keep_ratio=0.5, layer=0)],
                 context_for(vla))
    write_processor_files(vla, tmp_path)
    meta = get_family("pi05").hook("presets", "meta_model_from_artifact")(tmp_path)
    assert next(meta.parameters()).device.type == "meta" and meta.family == "pi05"
    assert len(meta.backbone.layers) == len(meta.action_head.expert.layers) == 1
    assert meta.token_counts().visual == vla.token_counts().visual == 4
    assert sum(p.numel() for p in meta.parameters()) == sum(p.numel() for p in vla.parameters())
