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
