"""OpenVINO export and runtime: IR from the fp32 ONNX graphs, fp32 / int8 / int4-weight / int8-weight
parity in OpenVINO's runtime, the `where:` scope, the policy (without torch), refused artifacts, the backend."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'vla-compress[openvino]')")
pytest.importorskip("nncf", reason="nncf is not installed (pip install 'vla-compress[openvino]')")

from vla_compress.errors import ConfigError  # noqa: E402
from vla_compress.evaluate.rollout import PolicySpec  # noqa: E402
from vla_compress.export import Artifact, ExportError, Tolerance, config_from_dict, export, validate  # noqa: E402
from vla_compress.export.openvino import OpenVinoExportConfig  # noqa: E402
from vla_compress.runtime import TorchPolicy  # noqa: E402

from .conftest import observation  # noqa: E402

HEADS = ("regression", "tokens")


@pytest.fixture(scope="module")
def ov_fp32(tiny_models, onnx_fp32, observations, tmp_path_factory) -> dict:
    """head -> validated fp32 OpenVINO artifact: the regression one traced by the exporter itself,
    the tokens one converted from the shared fp32 ONNX artifact (`base`). Shared: copy before editing."""
    root = tmp_path_factory.mktemp("openvino")
    out = {}
    for head, vla in tiny_models.items():
        base = None if head == "regression" else onnx_fp32[head]
        art = export(vla, OpenVinoExportConfig(), root / f"{head}-fp32", example=observations[:2], base=base)
        validate(art, vla, observations)
        out[head] = Artifact.load(art.path)
    return out


@pytest.mark.parametrize("head", HEADS)
def test_fp32_ir_matches_torch(ov_fp32, head):
    art = ov_fp32[head]
    p, m = art.manifest["parity"], art.manifest
    assert art.status == "ok" and p["passed"], p["failures"]
    assert p["max_abs"] < 1e-4 and p["n_observations"] == 6 and "openvino" in p["timing_s"]
    graphs = {"policy_step"} if head == "regression" else {"prefill", "decode"}
    assert set(m["graphs"]) == set(m["io"]) == graphs
    assert {f for g in graphs for f in (f"{g}.xml", f"{g}.bin")} | {"config.json", "tokenizer.json",
                                                                     "dataset_statistics.json"} == set(m["files"])
    assert m["format"] == "openvino" and m["onnx_base"]["precision"] == "fp32"
    assert all(g["ops"].get("MatMul", 0) > 0 and "FakeQuantize" not in g["ops"] for g in m["graphs"].values())
    art.verify_files()
    if head == "tokens":
        assert p["token_match"] == 1.0


@pytest.mark.parametrize("head,precision,op", [("regression", "int8", "FakeQuantize"),
                                               ("tokens", "int8", "FakeQuantize"),
                                               ("regression", "int4-weight", "Constant[i4]"),
                                               ("regression", "int8-weight", "Constant[u8]")])
def test_quantized_ir_reports_parity(tiny_models, onnx_fp32, observations, tmp_path, head, precision, op):
    vla = tiny_models[head]
    # a random model's action-token logits are near ties: its tokens head is judged on the logits alone
    tol = None if head == "regression" else Tolerance(min_cosine=0.98)
    cfg = OpenVinoExportConfig(precision=precision, tolerance=tol, group_size=32)
    art = export(vla, cfg, tmp_path / precision, base=onnx_fp32[head], calibration=observations[:4])
    assert art.status == "unvalidated" and art.precision == precision
    assert all(g["ops"].get(op, 0) > 0 for name, g in art.manifest["graphs"].items()
               if not (precision == "int8" and name == "decode"))  # one-token decode: nothing worth FakeQuantize
    report = validate(art, vla, observations)
    assert Artifact.load(art.path).status == "ok", report.summary()
    assert 0 < report.max_abs < 1.0 and report.cosine > 0.98


def test_where_scopes_the_quantized_matmuls(tiny_models, onnx_fp32, observations, tmp_path):
    vla = tiny_models["regression"]
    full = export(vla, OpenVinoExportConfig(precision="int8-weight"), tmp_path / "all", base=onnx_fp32["regression"])
    cfg = OpenVinoExportConfig(precision="int8-weight", where={"components": ["backbone"],
                                                               "exclude": ["backbone.layers.0.mlp"]})
    art = export(vla, cfg, tmp_path / "backbone", base=onnx_fp32["regression"])
    s = art.manifest["scope"]["graphs"]["policy_step"]
    layers = vla.cfg.backbone.num_layers
    # in scope: each layer's q/k/v/o and gate/up/down projections and attention matmuls, less layer 0's MLP
    assert 0 < s["weight_ops"] - s["ignored"] < s["weight_ops"] and s["ignored_ir_ops"] > 0
    assert s["weight_ops"] - s["ignored"] <= layers * 9 - 3
    n_all = full.manifest["graphs"]["policy_step"]["ops"]["Constant[u8]"]
    n_scoped = art.manifest["graphs"]["policy_step"]["ops"]["Constant[u8]"]
    assert 0 < n_scoped < n_all
    assert art.manifest["config"]["where"] == {"components": ["backbone"], "include": [],
                                               "exclude": ["backbone.layers.0.mlp"]}
    assert validate(art, vla, observations).passed
    with pytest.raises(ConfigError, match="unknown component.*'gripper'"):
        export(vla, OpenVinoExportConfig(precision="int8-weight", where="gripper"), tmp_path / "x",
               base=onnx_fp32["regression"])
    with pytest.raises(ConfigError, match="where.include: pattern 'backbone.nope' matches no module"):
        export(vla, OpenVinoExportConfig(precision="int8-weight", where={"include": ["backbone.nope"]}),
               tmp_path / "y", base=onnx_fp32["regression"])


@pytest.mark.parametrize("head", HEADS)
def test_policy_acts_like_torch(ov_fp32, tiny_models, tmp_path, head):
    from vla_compress.runtime.openvino_policy import OpenVinoPolicy

    art_dir = shutil.copytree(ov_fp32[head].path, tmp_path / "artifact")  # the artifact alone is enough
    vla = tiny_models[head]
    policy = PolicySpec("openvino", str(art_dir), {"threads": 1, "name": "ov"}).build()
    torch_policy = TorchPolicy(vla)
    assert isinstance(policy, OpenVinoPolicy) and policy.name == "ov"
    k = vla.cfg.chunk_size
    for step in range(2 * k + 1):
        obs = observation(step)
        a, b = policy.act(obs), torch_policy.act(obs)
        assert a.shape == (vla.cfg.action_dim,) and a.dtype == np.float32
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert len(policy.latencies_s) == 3  # one inference per chunk
    expected = {"policy_step"} if head == "regression" else {"prefill", "decode"}
    assert expected | {"preprocess", "postprocess"} == set(policy.component_latencies_s)
    d = policy.describe()
    assert d["runtime"] == "openvino" and d["precision"] == "fp32" and d["device"] == "CPU"
    assert d["threads"] == 1 and d["inference_precision"] == "f32"
    compiled = next(iter(policy.graphs.sessions.values())).compiled
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    policy.reset()
    np.testing.assert_allclose(policy.act(observation(0)), vla.act(observation(0))[0], atol=1e-5)


def test_profiler_measures_the_policy(ov_fp32):
    from vla_compress.profile.measure import measure_policy
    from vla_compress.runtime.openvino_policy import OpenVinoPolicy

    m = measure_policy(OpenVinoPolicy(ov_fp32["regression"].path), steps=3, warmup=1)
    assert len(m.latencies_ms) == 3 and m.p50_ms > 0 and "policy_step" in m.breakdown_ms


def test_policy_runs_without_torch(tmp_path):
    """An OpenVINO artifact of a family whose artifact processor needs no torch (OpenVLA; the reference
    family's resizes with torch) loads and acts in a fresh interpreter without importing torch."""
    from vla_compress.export.family import get_export_family
    from vla_compress.models.openvla import OpenVLA

    vla = OpenVLA.tiny()
    obs = get_export_family(vla.family).example_observations(vla, 4)
    art = export(vla, OpenVinoExportConfig(), tmp_path / "openvla-ov", example=obs[:2])
    assert validate(art, vla, obs).passed
    script = """
import sys
import numpy as np
from vla_compress.runtime.openvino_policy import OpenVinoPolicy
p = OpenVinoPolicy(sys.argv[1])
t = p.processor.observation_template()
rng = np.random.default_rng(0)
obs = {"images": {k: rng.integers(0, 256, v.shape, dtype=np.uint8) for k, v in t["images"].items()},
       "instruction": "open the drawer"}
if t.get("state") is not None:
    obs["state"] = np.zeros(np.shape(t["state"]), np.float32)
print(p.act(obs).shape)
assert "torch" not in sys.modules, "torch was imported"
print("no torch")
"""
    res = subprocess.run([sys.executable, "-c", script, str(art.path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split()[-2:] == ["no", "torch"]


def test_failed_artifact_is_refused(ov_fp32, tiny_models, observations, tmp_path):
    from vla_compress.runtime.openvino_policy import OpenVinoPolicy

    vla = tiny_models["regression"]
    art = export(vla, OpenVinoExportConfig(precision="int8-weight", tolerance=Tolerance(max_abs=1e-9)),
                 tmp_path / "tight", example=observations[:2])
    report = validate(art, vla, observations)
    assert not report.passed and Artifact.load(art.path).status == "failed"
    with pytest.raises(ExportError, match="failed validation"):
        OpenVinoPolicy(art.path)
    assert OpenVinoPolicy(art.path, allow_failed=True).act(observation(0)).shape == (vla.cfg.action_dim,)
    with pytest.raises(ConfigError, match="artifact format is 'openvino', the 'onnx' runtime needs"):
        PolicySpec("onnx", str(ov_fp32["regression"].path)).build()


def test_bad_configs_and_inputs_are_clear(tiny_models, onnx_fp32, tmp_path):
    from vla_compress.runtime.openvino_policy import OpenVinoPolicy

    with pytest.raises(ConfigError, match="openvino export: unknown precision 'int2'; supported: fp32, int8, "
                                          "int4-weight, int8-weight"):
        OpenVinoExportConfig(precision="int2")
    with pytest.raises(ConfigError, match="group_size must be a power of two"):
        OpenVinoExportConfig(precision="int4-weight", group_size=48)
    with pytest.raises(ConfigError, match="unknown key.*'component'.*in where"):
        OpenVinoExportConfig(where={"component": "backbone"})
    vla = tiny_models["regression"]
    with pytest.raises(ConfigError, match="int8 export needs calibration observations"):
        export(vla, OpenVinoExportConfig(precision="int8"), tmp_path / "nocal", base=onnx_fp32["regression"])
    int8_onnx = export(vla, config_from_dict({"format": "onnx", "precision": "int8-dynamic"}), tmp_path / "onnx-int8",
                       base=onnx_fp32["regression"])
    with pytest.raises(ConfigError, match="base must be an fp32 ONNX artifact"):
        export(vla, OpenVinoExportConfig(), tmp_path / "badbase", base=int8_onnx)
    with pytest.raises(ConfigError, match="artifact format is 'onnx', the 'openvino' runtime needs an OpenVINO"):
        OpenVinoPolicy(onnx_fp32["regression"].path)


def test_backend_is_found_by_its_alias(ov_fp32):
    from vla_compress.backends import get_backend
    from vla_compress.export.registry import get_exporter
    from vla_compress.runtime.openvino_policy import OpenVinoPolicy

    b = get_backend("ov")
    assert b.name == "openvino" and b.format == "openvino" and b.missing() is None
    assert b.requires == ("openvino", "nncf") and "vla-compress[openvino]" in b.install
    assert b.roofline_precision("int4-weight") == "w4a16" and b.roofline_precision("int8") == "int8"
    assert get_exporter("ov").format == "openvino"
    cfg = config_from_dict({"format": "ov", "precision": "int4-weight", "group_size": 32})
    assert isinstance(cfg, OpenVinoExportConfig) and OpenVinoExportConfig.from_dict(cfg.to_dict()) == cfg
    assert isinstance(PolicySpec("ov", str(ov_fp32["regression"].path)).build(), OpenVinoPolicy)
