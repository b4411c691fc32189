"""`vla-compress export`: ONNX fp32/int8 round trip on a tiny checkpoint, a missed tolerance (exit 1,
artifact marked failed), TensorRT build files and readiness through the command, held-out dataset
observations, and unknown format/precision/option as one-line errors (exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from vla_compress.cli.main import main
from vla_compress.export import Artifact


@pytest.fixture(scope="module")
def exported(tiny_checkpoints, tmp_path_factory) -> dict:
    """fp32 + int8-static (+ int4 with a loose gate) ONNX of the tiny regression checkpoint, one command."""
    out = tmp_path_factory.mktemp("cli-export") / "onnx"
    summary = out.parent / "summary.json"
    result = CliRunner().invoke(main, ["export", str(tiny_checkpoints["regression"]), "--format", "onnx",
                                       "-p", "int8-static", "-p", "fp32", "--out", str(out), "--samples", "4",
                                       "--calibration-samples", "3", "--json-out", str(summary)])
    return {"result": result, "out": out, "summary": json.loads(summary.read_text()) if summary.is_file() else None}


def test_onnx_fp32_and_int8_round_trip(exported):
    result, out = exported["result"], exported["out"]
    assert result.exit_code == 0, result.output
    for text in ("export summary", "fp32", "int8-static", "ok", "synthetic observations"):
        assert text in result.output
    rows = exported["summary"]["artifacts"]
    assert [r["precision"] for r in rows] == ["fp32", "int8-static"]  # fp32 first: the others reuse its graph
    for r in rows:
        art = Artifact.load(out / f"onnx-{r['precision']}")
        assert art.status == r["status"] == "ok" and art.manifest["parity"]["n_observations"] == 4
        assert r["bytes"] == sum(f["bytes"] for f in art.files.values()) and "policy_step.onnx" in r["files"]
        assert r["parity"]["cosine"] == art.manifest["parity"]["cosine"]
    assert rows[0]["parity"]["max_abs"] < 1e-4 and 0 < rows[1]["parity"]["max_abs"] < 1
    assert Artifact.load(out / "onnx-int8-static").manifest["graphs"]["policy_step"]["ops"]["QuantizeLinear"] > 0


def test_missed_tolerance_exits_1_and_marks_failed(exported, tiny_checkpoints, tmp_path):
    out = tmp_path / "int8"
    result = CliRunner().invoke(main, ["export", str(tiny_checkpoints["regression"]), "-f", "onnx", "-p", "int8-dynamic",
                                       "--out", str(out), "--base", str(exported["out"] / "onnx-fp32"),
                                       "--samples", "3", "-t", "max_abs=1e-12"])
    assert result.exit_code == 1, result.output
    assert "failed" in result.output and "max abs" in result.output
    art = Artifact.load(out)
    assert art.status == "failed" and any("max abs" in f for f in art.failures)


def test_tensorrt_build_files_and_readiness(exported, tiny_checkpoints, tmp_path):
    ckpt, fp32 = str(tiny_checkpoints["regression"]), str(exported["out"] / "onnx-fp32")
    out = tmp_path / "trt-int8"
    result = CliRunner().invoke(main, ["export", ckpt, "-f", "tensorrt", "-p", "int8", "--out", str(out), "--base",
                                       fp32, "--samples", "3", "--calibration-samples", "3"])
    assert result.exit_code == 0, result.output
    assert "(graph)" in result.output and "engine not validated" in result.output
    art = Artifact.load(out)
    assert art.status == "unvalidated" and art.manifest["graph_parity"]["passed"]
    assert all(r["ok"] for r in art.manifest["readiness"].values())
    assert (out / "build_engine.sh").is_file() and (out / "build_engine.py").is_file()
    assert "--int8" in (out / "build_engine.sh").read_text()

    # the ONNX exporter's int4 graph is flagged: MatMulNBits, with what to use instead
    int4 = tmp_path / "onnx-int4"
    result = CliRunner().invoke(main, ["export", ckpt, "-f", "onnx", "-p", "int4-weight", "--out", str(int4), "--base",
                                       fp32, "--samples", "3", "-t", "min_cosine=0.5", "-t", "max_action_l1=0.5"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["export", ckpt, "-f", "tensorrt", "-p", "int8", "--out", str(tmp_path / "t4"),
                                       "--base", str(int4), "--samples", "3"])
    assert result.exit_code == 1, result.output
    assert "MatMulNBits" in result.output and "Model Optimizer" in result.output
    assert Artifact.load(tmp_path / "t4").status == "failed"


@pytest.mark.parametrize("args,message", [
    (["-f", "onnx2"], "unknown export format 'onnx2'; known: "),
    (["-f", "onnx", "-p", "int3"], "unknown precision 'int3'; supported: fp32, int8-dynamic"),
    (["-f", "tensorrt", "-p", "int4"], "unknown precision 'int4'; supported: fp32, fp16, int8, fp8"),
    (["-f", "onnx", "-o", "opsett=19"], "unknown keys ['opsett']"),
    (["-f", "onnx", "-o", "opset"], "expected KEY=VALUE"),
    (["-f", "onnx", "-t", "max_diff=1"], "unknown tolerance keys ['max_diff']"),
])
def test_bad_input_is_a_one_line_error(tiny_checkpoints, tmp_path, args, message):
    result = CliRunner().invoke(main, ["export", str(tiny_checkpoints["regression"]), *args, "--out", str(tmp_path / "x")])
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "x").exists()


def _tiny_dataset(root, tasks=("reach to the target location", "open the door"), per_task=4, frames=3):
    """Episodes whose state encodes (episode index, frame) so every sampled observation is traceable."""
    from vla_compress.data import Episode, LeRobotWriter

    rng = np.random.default_rng(0)
    writer = LeRobotWriter(root, fps=80)
    index = 0
    for _ in range(per_task):
        for task in tasks:
            state = np.array([[index, t, 0, 0] for t in range(frames)], np.float32)
            writer.add(Episode(task=task, images={"corner": rng.integers(0, 256, (frames, 32, 32, 3), dtype=np.uint8)},
                               state=state, action=rng.uniform(-1, 1, (frames, 4)).astype(np.float32)))
            index += 1
    return writer.close()


def test_dataset_observations_are_held_out(tiny_models, tiny_checkpoints, tmp_path):
    from vla_compress.export.observations import export_observations

    ds = _tiny_dataset(tmp_path / "demos")
    obs = export_observations(tiny_models["regression"], tiny_checkpoints["regression"], ds, 4, 6, seed=0)
    val_eps = {int(o["state"][0]) for o in obs.validation}
    cal_eps = {int(o["state"][0]) for o in obs.calibration}
    assert len(obs.validation) == 4 and len(obs.calibration) == 6
    assert val_eps <= {4, 5, 6, 7} and cal_eps <= {0, 1, 2, 3}  # the last 2 episodes of each task are held out
    assert "held-out episodes" in obs.source and "last 2 episodes" in obs.source
    for o in obs.validation:  # the frame an observation claims is the frame it holds
        assert o["images"]["corner"].shape == (32, 32, 3) and o["instruction"] in ("reach to the target location",
                                                                                  "open the door")
    # a checkpoint trained on this dataset says how many episodes it held out
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoints["regression"], ckpt)
    (ckpt / "training.json").write_text(json.dumps({"dataset": str(ds), "config": {"val_episodes_per_task": 1}}))
    obs = export_observations(tiny_models["regression"], ckpt, ds, 2, 2, seed=1)
    assert {int(o["state"][0]) for o in obs.validation} <= {6, 7} and "validation split" in obs.source


def test_export_with_dataset(exported, tiny_checkpoints, tmp_path):
    ds = _tiny_dataset(tmp_path / "demos")
    out = tmp_path / "a"
    result = CliRunner().invoke(main, ["export", str(tiny_checkpoints["regression"]), "-f", "onnx", "--out", str(out),
                                       "--base", str(exported["out"] / "onnx-fp32"), "--dataset", str(ds),
                                       "--samples", "3"])
    assert result.exit_code == 0, result.output
    assert "held-out episodes" in result.output
    assert Artifact.load(out).manifest["parity"]["n_observations"] == 3


def test_default_precision_is_the_formats_own():
    from vla_compress.cli.export_cmd import build_configs
    from vla_compress.export.registry import get_exporter

    assert [c.precision for c in build_configs(get_exporter("onnx"), (), (), ())] == ["fp32"]
    (trt,) = build_configs(get_exporter("tensorrt"), (), ("max_batch=2", "build_engine=never"), ("max_action_l1=0.02",))
    assert trt.precision == "fp16" and trt.max_batch == 2 and trt.build_engine == "never"
    assert trt.tolerance_for("regression").max_action_l1 == 0.02
