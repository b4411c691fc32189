"""The backend records (vla_compress/backends.py): one per runtime, read by every layer that names one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from vla_compress import backends as B
from vla_compress.errors import ConfigError

HARDWARE = Path(__file__).resolve().parents[1] / "hardware"


def test_hardware_profiles_name_runtimes_by_their_canonical_backend_names():
    names = set(B.runtime_names())
    files = sorted(HARDWARE.glob("*.yaml")) + sorted((HARDWARE / "calibration").glob("*.yaml"))
    assert files
    for path in files:
        d = yaml.safe_load(path.read_text()) or {}
        used = set(d.get("runtimes") or {}) | set(((d.get("efficiency") or {}).get("runtimes")) or {})
        assert used <= names, f"{path.name}: {sorted(used - names)} are not backend names ({sorted(names)})"


def test_every_spelling_normalises_to_the_canonical_name():
    assert B.runtime_name("onnx") == B.runtime_name("onnxruntime") == "onnxruntime"
    assert [B.runtime_name(n) for n in ("torch", "llama.cpp", "tensorrt")] == ["torch", "llama.cpp", "tensorrt"]
    assert B.export_format("onnxruntime") == B.export_format("onnx") == "onnx"
    assert B.export_format("llama.cpp") == "gguf" and B.export_formats() == ["gguf", "onnx", "openvino", "tensorrt"]
    with pytest.raises(ConfigError, match="unknown runtime 'mlc'; known: llama.cpp, onnx, ov, tensorrt, torch"):
        B.get_backend("mlc")
    with pytest.raises(ConfigError, match="unknown export format 'torch'; known: gguf, onnx, openvino, tensorrt"):
        B.format_backend("torch")  # torch runs checkpoints: no export format


def test_each_record_points_at_its_exporter_policy_and_precisions():
    for b in B.backends():
        assert callable(b.policy_factory()), b.name
        if b.format is None:
            continue
        exporter = b.exporter_cls()
        assert exporter.format == b.format and exporter.label
        assert exporter.config_cls.PRECISIONS == tuple(b.precisions)  # the config validates against the record
        assert set(b.precisions.values()) <= {"fp32", "fp16", "bf16", "int8", "fp8", "int4", "w4a16", "w8a16"}


def test_the_registry_imports_no_heavy_package():
    code = ("import sys, vla_compress.backends, vla_compress.export.registry, vla_compress.runtime.registry; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'tensorrt', 'llama_cpp', 'openvino', 'nncf') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


class FakeExporter:
    format = "openvino"


def fake_policy(spec):
    return ("fake policy", spec.runtime, spec.path)


def test_a_new_backend_is_one_registration(monkeypatch):
    from vla_compress.evaluate.rollout import PolicySpec
    from vla_compress.export.registry import get_exporter
    from vla_compress.runtime.registry import build_policy

    monkeypatch.setattr(B, "_BACKENDS", dict(B._BACKENDS))
    B.register_backend(B.Backend("openvino", aliases=("ov",), format="openvino",
                                 exporter=f"{__name__}:FakeExporter", policy=f"{__name__}:fake_policy",
                                 precisions={"fp32": "fp32", "int8": "int8"}, requires=("no_such_module_here",),
                                 install="pip install openvino"))
    assert isinstance(get_exporter("openvino"), FakeExporter) and isinstance(get_exporter("ov"), FakeExporter)
    assert build_policy(PolicySpec("ov", "x")) == ("fake policy", "ov", "x")
    assert "openvino" in B.runtime_names() and "ov is also written openvino" in B.known_runtimes()
    why = B.get_backend("openvino").missing()
    assert "no_such_module_here" in why and why.endswith("pip install openvino")
    with pytest.raises(ConfigError, match="'onnx' is already 'onnxruntime'"):
        B.register_backend(B.Backend("other", aliases=("onnx",), policy="x:y", precisions={}))
    with pytest.raises(ConfigError, match="export format 'gguf' is already registered"):
        B.register_backend(B.Backend("other", format="gguf", exporter="x:Y", policy="x:y", precisions={}))


def test_hardware_and_estimates_accept_aliases():
    from vla_compress.hardware import load_hardware

    hw = load_hardware("x86-desktop-cpu")
    assert hw.runtime("onnx") is hw.runtime("onnxruntime")
    assert hw.efficiency("onnx") == hw.efficiency("onnxruntime")
    assert hw.peak("fp32", runtime="onnx") == hw.peak("fp32", runtime="onnxruntime")


RECIPE = {"name": "alias", "target": {"hardware": "x86-desktop-cpu", "runtime": "onnx", "precision": "int8"},
          "exports": [{"format": "onnxruntime", "precision": "int8-dynamic"}]}


def test_recipes_accept_aliases_and_record_canonical_names():
    import copy

    from vla_compress.pipeline.recipe import RecipeError, validate_recipe

    recipe = validate_recipe(copy.deepcopy(RECIPE), "r.yaml")
    assert recipe.target["runtime"] == "onnxruntime"
    assert recipe.exports[0].format == "onnx" and recipe.variant_names() == ["onnx-int8-dynamic"]
    bad = copy.deepcopy(RECIPE)
    bad["target"]["runtime"] = "mlc"
    with pytest.raises(RecipeError, match="target.runtime: unknown runtime 'mlc'"):
        validate_recipe(bad, "r.yaml")


def test_cli_names_the_backends_and_rejects_an_unknown_runtime_in_one_line(tmp_path):
    from vla_compress.cli.main import main

    res = CliRunner().invoke(main, ["eval", str(tmp_path), "--runtime", "mlc"])
    assert res.exit_code == 2 and res.stderr.strip().startswith("error: unknown runtime 'mlc'; known: llama.cpp")
    assert "\n" not in res.stderr.strip()
    help_text = CliRunner().invoke(main, ["export", "--help"]).output
    assert "gguf, onnx, openvino, tensorrt" in help_text and "q4_k_m" in help_text


def test_export_options_are_valid_configs_of_their_format():
    # what a search exports with for each runtime: ONNX Runtime gets graphs fused for its kernels
    from vla_compress.export.registry import config_from_dict

    assert B.get_backend("onnxruntime").export_options == {"optimize": "ort"}
    for b in B.backends():
        if b.format and b.export_options:
            for p in b.precisions:
                cfg = config_from_dict({"format": b.format, "precision": p, **b.export_options})
                assert all(getattr(cfg, k) == v for k, v in b.export_options.items())
