"""TensorRT engines built and run for real: fp32/fp16 engines of both heads validated against torch,
the TensorRT policy acting through the registry, and engines refused on another device. These run
only where the full tensorrt package imports and a CUDA GPU is present; elsewhere every test is
skipped with the reason (the build files and readiness are tested without TensorRT)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vla_compress.export import Artifact, Tolerance, export, validate
from vla_compress.export.tensorrt import TensorRTExportConfig
from vla_compress.export.tensorrt.exporter import engine_support

_OK, _WHY = engine_support()
pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu,
              pytest.mark.skipif(not _OK, reason=f"TensorRT engines cannot be built here: {_WHY}")]

HEADS = ("regression", "tokens")


@pytest.fixture(scope="module")
def engines(tiny_models, onnx_fp32, observations, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("trt-engines")
    out = {}
    for head in HEADS:
        for precision in ("fp32", "fp16", "int8"):
            # a random tokens head has near-tie logits: judge its quantized engines on the logits
            tol = Tolerance(min_cosine=0.98) if head == "tokens" and precision == "int8" else None
            cfg = TensorRTExportConfig(precision=precision, build_engine="always", max_batch=4, tolerance=tol)
            out[head, precision] = export(tiny_models[head], cfg, root / f"{head}-{precision}", base=onnx_fp32[head],
                                          calibration=observations[:3])
    return out


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_parity(engines, tiny_models, observations, head, precision):
    art = engines[head, precision]
    info = json.loads((art.path / "engine_info.json").read_text())
    assert info["device"]["compute_capability"] and info["tensorrt"] and set(info["engines"]) == set(art.manifest["graphs"])
    assert art.manifest["engine"]["device"]["name"] == info["device"]["name"]
    assert (art.path / "timing.cache").stat().st_size > 0
    report = validate(art, tiny_models[head], observations)  # 6 observations: two batches of <= 4
    m = Artifact.load(art.path).manifest
    assert report.passed, report.summary()
    assert m["status"] == "ok" and m["parity"]["passed"] and m["graph_parity"]["passed"]
    if precision == "fp32":
        assert report.max_abs < 1e-3


@pytest.mark.parametrize("head", HEADS)
def test_tensorrt_policy_acts(engines, tiny_models, observations, head):
    from vla_compress.evaluate.rollout import PolicySpec
    from vla_compress.runtime.registry import build_policy

    policy = build_policy(PolicySpec("tensorrt", str(engines[head, "fp32"].path)))
    torch_chunk = tiny_models[head].act(observations[0])
    chunk = policy.infer(observations[0])
    assert chunk.shape == torch_chunk.shape and np.isfinite(chunk).all()
    if head == "regression":  # (a random tokens head's near-tie logits may flip a bin)
        assert np.abs(chunk - torch_chunk).max() < 1e-2
    policy.reset()
    assert policy.act(observations[0]).shape == (torch_chunk.shape[1],)
    assert policy.describe()["runtime"] == "tensorrt"


def test_engine_from_another_device_is_refused(engines, tmp_path):
    import shutil

    from vla_compress.errors import ExportError
    from vla_compress.runtime.tensorrt_policy import TensorRTPolicy

    copy = tmp_path / "copy"
    shutil.copytree(engines["regression", "fp16"].path, copy)
    info = json.loads((copy / "engine_info.json").read_text())
    info["device"].update(name="another GPU", compute_capability="1.0")
    (copy / "engine_info.json").write_text(json.dumps(info))
    with pytest.raises(ExportError, match="rebuild them here"):
        TensorRTPolicy(copy)
