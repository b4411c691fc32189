"""The TensorRT build files written into an artifact, checked here without TensorRT: the trtexec
command of each precision (parsed back: flags, files, shapes), build_engine.sh run against a
stand-in trtexec, build_engine.py (self-contained, and its clear failure without TensorRT), the
optimization profiles derived from the ONNX io, and the manifest."""

from __future__ import annotations

import ast
import json
import os
import shlex
import subprocess
import sys

import pytest

from vla_compress.errors import ConfigError, ExportError
from vla_compress.export import Artifact, export
from vla_compress.export.tensorrt import TensorRTExportConfig
from vla_compress.export.tensorrt.profiles import eval_dim
from vla_compress.export.tensorrt.scripts import trtexec_command
from vla_compress.runtime.registry import build_policy

FLAGS = {"fp32": {"--noTF32"}, "fp16": {"--fp16"}, "int8": {"--int8", "--fp16"}, "fp8": {"--fp8", "--fp16"}}
CASES = [("regression", "fp32"), ("regression", "fp16"), ("regression", "int8"), ("regression", "fp8"),
         ("tokens", "fp16"), ("tokens", "int8")]


@pytest.fixture(scope="module")
def trt_artifacts(tiny_models, onnx_fp32, observations, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("trt-files")
    return {(head, p): export(tiny_models[head], TensorRTExportConfig(precision=p, build_engine="never"),
                              root / f"{head}-{p}", base=onnx_fp32[head], calibration=observations[:3])
            for head, p in CASES}


def sh_commands(script: str) -> list[list[str]]:
    """The trtexec invocations of build_engine.sh, continuation lines joined, shell-split."""
    joined = script.replace("\\\n", " ")
    return [shlex.split(line)[1:] for line in joined.splitlines() if line.startswith('"$TRTEXEC"')]


def parse_shapes(arg: str) -> dict[str, list[int]]:
    out = {}
    for item in arg.split("=", 1)[1].split(","):
        name, dims = item.rsplit(":", 1)
        out[name] = [int(d) for d in dims.split("x")]
    return out


@pytest.mark.parametrize("head,precision", CASES)
def test_trtexec_commands_per_precision(trt_artifacts, head, precision):
    art = trt_artifacts[head, precision]
    plan = json.loads((art.path / "build_plan.json").read_text())
    commands = sh_commands((art.path / "build_engine.sh").read_text())
    assert len(commands) == len(plan["graphs"]) == len(art.manifest["graphs"])
    for args, (name, g) in zip(commands, plan["graphs"].items()):
        opts = dict(a.split("=", 1) if "=" in a else (a, True) for a in args)
        assert opts["--onnx"] == g["onnx"] == art.manifest["graphs"][name]["file"]
        assert (art.path / opts["--onnx"]).is_file() and opts["--onnx"] in art.files  # hashed in the manifest
        assert opts["--saveEngine"] == f"{name}.engine"
        flags = {a for a in args if "=" not in a}
        assert flags - {"--skipInference"} == FLAGS[precision]
        assert opts["--timingCacheFile"] == "timing.cache" and opts["--memPoolSize"] == "workspace:2048M"
        assert opts["--builderOptimizationLevel"] == "3"
        shapes = {k: parse_shapes(f"{k}={opts[k]}") for k in ("--minShapes", "--optShapes", "--maxShapes")}
        inputs = [v["name"] for v in art.manifest["io"][name]["inputs"]]
        for key, plan_key in (("--minShapes", "min"), ("--optShapes", "opt"), ("--maxShapes", "max")):
            assert list(shapes[key]) == inputs
            assert all(shapes[key][i] == g["profile"][i][plan_key] for i in inputs)
        for i in inputs:
            lo, opt, hi = (shapes[k][i] for k in ("--minShapes", "--optShapes", "--maxShapes"))
            assert all(a <= b <= c for a, b, c in zip(lo, opt, hi))
        assert args == trtexec_command(plan, name)[1:]  # the manifest's command is the script's
        assert art.manifest["build"]["trtexec_commands"][name][1:] == args


def test_tokens_profiles_follow_the_kv_cache(trt_artifacts, tiny_models):
    art = trt_artifacts["tokens", "fp16"]
    prefix = {v["name"]: v["shape"] for v in art.manifest["io"]["prefill"]["outputs"]}["attention_mask"][1]
    cfg = TensorRTExportConfig()
    n = tiny_models["tokens"].cfg.action_tokens
    dec = art.manifest["profiles"]["graphs"]["decode"]
    lo, hi = eval_dim(prefix, {"text": 1}), eval_dim(prefix, {"text": cfg.max_text})
    assert dec["past_key_values.0.key"]["min"][2] == lo
    assert dec["past_key_values.0.key"]["max"][2] == hi + n - 2  # the last decode step's past
    assert dec["attention_mask"]["max"][1] == hi + n - 1  # past + 1
    assert dec["token_ids"]["max"] == [cfg.max_batch, 1]
    pre = art.manifest["profiles"]["graphs"]["prefill"]
    assert pre["text_ids"] == {"min": [1, 1], "opt": [1, cfg.opt_text], "max": [cfg.max_batch, cfg.max_text]}


def test_build_sh_runs_trtexec_as_planned(trt_artifacts, tmp_path):
    """Run build_engine.sh with a stand-in trtexec that records its arguments."""
    art = trt_artifacts["tokens", "int8"]
    log = tmp_path / "calls.txt"
    fake = tmp_path / "trtexec"
    fake.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done >> {log}\necho --- >> {log}\n')
    fake.chmod(0o755)
    subprocess.run(["sh", "-n", str(art.path / "build_engine.sh")], check=True)
    subprocess.run(["sh", str(art.path / "build_engine.sh")], check=True, capture_output=True, cwd=tmp_path,
                   env={**os.environ, "TRTEXEC": str(fake)})
    calls = [c.strip("\n").splitlines() for c in log.read_text().split("---\n") if c.strip()]
    plan = json.loads((art.path / "build_plan.json").read_text())
    assert calls == [trtexec_command(plan, g)[1:] for g in plan["graphs"]]


def test_build_engine_py_is_self_contained_and_fails_clearly_without_tensorrt(trt_artifacts):
    art = trt_artifacts["regression", "int8"]
    script = art.path / "build_engine.py"
    from vla_compress.export.tensorrt import build_engine

    assert script.read_text() == open(build_engine.__file__).read()  # what vla-compress builds with
    tree = ast.parse(script.read_text())
    imported = {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert imported <= {"__future__", "argparse", "ctypes", "json", "os", "sys", "tempfile", "time", "pathlib",
                        "typing", "tensorrt"}
    assert os.access(script, os.X_OK) and os.access(art.path / "build_engine.sh", os.X_OK)
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here: the no-TensorRT message cannot be observed")
    except ImportError:
        pass
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd="/")
    assert proc.returncode == 1 and "tensorrt Python package is not installed" in proc.stderr
    assert not (art.path / "policy_step.engine").exists()


def test_manifest_records_what_the_device_needs(trt_artifacts):
    m = trt_artifacts["regression", "fp8"].manifest
    assert m["format"] == "tensorrt" and m["precision"] == "fp8" and m["status"] == "unvalidated"
    assert m["engine"] is None and "build_engine.py" in m["engine_note"]
    assert m["onnx_base"]["precision"] == "fp32" and m["build"]["python"] == "build_engine.py"
    assert set(m["files"]) >= {"policy_step.onnx", "build_plan.json", "build_engine.py", "build_engine.sh",
                               "config.json", "tokenizer.json", "dataset_statistics.json"}
    assert m["profiles"]["axes"]["batch"] == [1, 1, 8]
    Artifact.load(trt_artifacts["regression", "fp8"].path).verify_files()


def test_tensorrt_policy_without_engine_is_a_clear_error(trt_artifacts):
    from vla_compress.evaluate.rollout import PolicySpec

    with pytest.raises(ExportError, match="engine_info.json: missing.*build_engine.py"):
        build_policy(PolicySpec("tensorrt", str(trt_artifacts["regression", "fp16"].path)))
    with pytest.raises(ConfigError, match="needs a TensorRT artifact"):
        from vla_compress.runtime.tensorrt_policy import TensorRTPolicy

        TensorRTPolicy(trt_artifacts["regression", "fp16"].manifest["onnx_base"]["path"])


def test_engine_build_always_without_tensorrt_is_refused(tiny_models, onnx_fp32, tmp_path):
    from vla_compress.export.tensorrt.exporter import engine_support

    ok, why = engine_support()
    if ok:
        pytest.skip("TensorRT and a GPU are available here")
    with pytest.raises(ConfigError, match="cannot build TensorRT engines here"):
        export(tiny_models["regression"], TensorRTExportConfig(build_engine="always"), tmp_path / "a",
               base=onnx_fp32["regression"])


def test_eval_dim():
    assert eval_dim("past + 1", {"past": 9}) == 10 and eval_dim(7, {}) == 7
    assert eval_dim("2 * text + 18", {"text": 3}) == 24
    with pytest.raises(ConfigError, match="axis 'seq'.*no range"):
        eval_dim("seq", {"batch": 1})
    with pytest.raises(ConfigError, match="unsupported expression"):
        eval_dim("__import__('os')", {})


def test_flow_profiles_size_the_keys_values_from_the_prefix_graph():
    """A flow head's keys/values axis spans the prefix lengths its prefix graph produces over the text
    range (a prompt padded to the longest: text + image tokens), and a missing output is a clear error."""
    from vla_compress.export.tensorrt.profiles import axis_ranges

    loop = {"prefix": "prefix", "step": "denoise_step",
            "prefix_axis": {"name": "prefix", "output": "prefix_pad", "dim": 1}}
    manifest = {"model": {"head": "flow", "loop": loop},
                "io": {"prefix": {"outputs": [{"name": "prefix_pad", "shape": ["batch", "text + 64"]}]}}}
    config = TensorRTExportConfig(opt_text=20, max_text=48)
    assert axis_ranges(config, manifest)["prefix"] == (65, 84, 112)
    manifest["io"]["prefix"]["outputs"][0]["name"] = "pad"
    with pytest.raises(ConfigError, match="'prefix' graph has no 'prefix_pad' output"):
        axis_ranges(config, manifest)


class _FakeTensorRT:
    """A stand-in for the `tensorrt` module with TensorRT 10's Python API names, recording what the
    builder is asked to do. It checks build_engine.py's orchestration (which flags, which profile
    shapes, which files), not TensorRT: the engine tests do that where TensorRT runs."""

    __version__ = "10.3.0"

    class Logger:
        WARNING, VERBOSE = 1, 0

        def __init__(self, level):
            self.level = level

    class BuilderFlag:
        FP16, INT8, FP8, INT4, TF32 = "FP16", "INT8", "FP8", "INT4", "TF32"

    class MemoryPoolType:
        WORKSPACE = "WORKSPACE"

    def __init__(self):
        self.calls: list = []
        fake = self

        class Network:
            def __init__(self):
                self.inputs = []

            @property
            def num_inputs(self):
                return len(self.inputs)

            def get_input(self, i):
                from types import SimpleNamespace

                return SimpleNamespace(name=self.inputs[i])

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                self.network = network

            def parse_from_file(self, path):
                import onnx

                self.network.inputs = [v.name for v in onnx.load(path, load_external_data=False).graph.input]
                fake.calls.append(("parse", path))
                return True

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                fake.calls.append(("shape", name, list(lo), list(opt), list(hi)))

        class Config:
            builder_optimization_level = None

            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("pool", pool, size))

            def set_flag(self, flag):
                fake.calls.append(("flag", flag))

            def clear_flag(self, flag):
                fake.calls.append(("clear", flag))

            def add_optimization_profile(self, profile):
                fake.calls.append(("profile", self.builder_optimization_level))

            def create_timing_cache(self, data):
                fake.calls.append(("cache-in", bytes(data)))
                return data

            def set_timing_cache(self, cache, ignore_mismatch):
                pass

            def get_timing_cache(self):
                from types import SimpleNamespace

                return SimpleNamespace(serialize=lambda: b"timing")

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"engine:" + ",".join(network.inputs).encode()

        self.Builder, self.OnnxParser = Builder, OnnxParser


def _fake_build(monkeypatch, art, compute_capability="8.7"):
    from vla_compress.export.tensorrt import build_engine

    fake = _FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(build_engine, "cuda_device", lambda index=0: {
        "index": index, "name": "Orin (test double)", "compute_capability": compute_capability, "cuda_driver": "12.6"})
    plan = json.loads((art.path / "build_plan.json").read_text())
    return fake, plan, build_engine


@pytest.mark.parametrize("head,precision", [("regression", "int8"), ("tokens", "fp16"), ("regression", "fp32")])
def test_build_engines_drives_the_builder_as_planned(trt_artifacts, tmp_path, monkeypatch, head, precision):
    import shutil

    root = tmp_path / "art"
    shutil.copytree(trt_artifacts[head, precision].path, root)
    fake, plan, build_engine = _fake_build(monkeypatch, Artifact.load(root))
    info = build_engine.build_engines(plan, root, log=lambda m: None)
    for name, g in plan["graphs"].items():
        assert (root / g["engine"]).read_bytes() == b"engine:" + ",".join(g["inputs"]).encode()
        shapes = {c[1]: list(c[2:]) for c in fake.calls if c[0] == "shape" and c[1] in g["profile"]}
        assert shapes == {i: [g["profile"][i][k] for k in ("min", "opt", "max")] for i in g["inputs"]}
    flags = [c[1] for c in fake.calls if c[0] == "flag"]
    assert flags == plan["flags"] * len(plan["graphs"])
    assert (("clear", "TF32") in fake.calls) == (precision == "fp32")
    assert ("pool", "WORKSPACE", 2048 << 20) in fake.calls and ("profile", 3) in fake.calls
    assert (root / "timing.cache").read_bytes() == b"timing"
    assert [c[1] for c in fake.calls if c[0] == "cache-in"][-1] == (b"timing" if len(plan["graphs"]) > 1 else b"")
    on_disk = json.loads((root / "engine_info.json").read_text())
    assert on_disk == info and info["device"]["compute_capability"] == "8.7" and info["tensorrt"] == "10.3.0"
    m = json.loads((root / "artifact.json").read_text())
    assert m["engine"] == info and "engine_note" not in m


def test_fp8_needs_compute_capability_8_9(trt_artifacts, tmp_path, monkeypatch):
    _, plan, build_engine = _fake_build(monkeypatch, trt_artifacts["regression", "fp8"], compute_capability="8.7")
    with pytest.raises(build_engine.BuildError, match=r"fp8 engines need compute capability >= 8.9; .* is 8.7"):
        build_engine.build_engines(plan, tmp_path)
