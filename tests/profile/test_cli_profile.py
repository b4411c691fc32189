"""`vla-compress profile`: a tiny checkpoint measured here and estimated on an AGX Orin, presets
estimated only (with the fit check), unsupported combinations and unknown devices, --calibrate."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from vla_compress.cli.main import main
from vla_compress.hardware import hardware_dir

ORIN = "jetson-agx-orin-64gb"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_profile_is_a_command(runner):
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0 and "profile" in result.output
    assert "--hardware" in runner.invoke(main, ["profile", "--help"]).output


def test_tiny_checkpoint_measured_and_estimated_on_orin(runner, tiny_checkpoints, tmp_path):
    out = tmp_path / "profile.json"
    ckpt = str(tiny_checkpoints["tokens"])
    result = runner.invoke(main, ["profile", ckpt, "--hardware", ORIN, "--steps", "3", "--warmup", "1",
                                  "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for text in ("measured", ORIN, "estimated (default etas)", "tensorrt", "breakdown per component", "decode"):
        assert text in result.output, text
    data = json.loads(out.read_text())
    measured, estimated = data["rows"]
    assert measured["kind"] == "measured" and measured["runtime"] == "torch" and measured["precision"] == "fp32"
    assert 0 < measured["p50_ms"] <= measured["p99_ms"]
    assert measured["control_hz"] == pytest.approx(2 * 1e3 / measured["p50_ms"])  # chunk of 2, all executed
    assert estimated["kind"] == "estimated" and estimated["device"] == ORIN and estimated["precision"] == "fp16"
    assert estimated["fits"] is True and estimated["p50_ms"] > 0 and estimated["control_hz"] > 0
    target = data["targets"][0]
    assert target["measurement"]["steps"] == 3 and target["trace"]["calls"]["backbone"] == 8
    assert target["estimates"][0]["inputs"]["label"].startswith("roofline estimate")


def test_preset_is_estimated_only_and_fit_check_flags_the_bytes(runner, tmp_path):
    out = tmp_path / "p.json"
    result = runner.invoke(main, ["profile", "preset:openvla-7b-shape", "-H", "jetson-orin-nano-8gb",
                                  "-p", "fp16", "-p", "int4", "-p", "fp8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "no: needs" in result.output and "not estimated" in result.output and "weight-only" in result.output
    rows = {r["precision"]: r for r in json.loads(out.read_text())["rows"]}
    assert all(r["kind"] == "estimated" for r in rows.values())  # nothing measured for a meta-device preset
    assert rows["fp16"]["fits"] is False and 13e9 < rows["fp16"]["memory_bytes"] < 16e9
    assert rows["fp16"]["device_memory_bytes"] == 8e9
    assert rows["int4"]["fits"] is True and rows["int4"]["memory_bytes"] < 5e9
    assert rows["int4"]["p50_ms"] < rows["fp16"]["p50_ms"]
    assert "fp8" in rows["fp8"]["error"]


def test_unknown_inputs_are_one_line_errors(runner, tiny_checkpoints, tmp_path):
    result = runner.invoke(main, ["profile", str(tiny_checkpoints["regression"]), "-H", "no-such-device"])
    assert result.exit_code == 2 and "unknown hardware 'no-such-device'" in result.stderr
    result = runner.invoke(main, ["profile", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "not a checkpoint" in result.stderr
    result = runner.invoke(main, ["profile", "preset:no-such-preset"])
    assert result.exit_code == 2 and "unknown preset" in result.stderr


def test_calibrate_writes_a_host_profile_and_its_calibration(runner, tiny_checkpoints, tmp_path, monkeypatch):
    hw = tmp_path / "hardware"
    hw.mkdir()
    for p in hardware_dir().glob("*.yaml"):
        shutil.copy(p, hw)
    monkeypatch.setenv("VLA_COMPRESS_HARDWARE_DIR", str(hw))
    out = tmp_path / "cal.json"
    result = runner.invoke(main, ["profile", str(tiny_checkpoints["tokens"]), str(tiny_checkpoints["regression"]),
                                  "--steps", "3", "--warmup", "1", "--threads", "1", "--calibrate", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (hw / "local-host.yaml").is_file() and (hw / "calibration" / "local-host.yaml").is_file()
    data = json.loads(out.read_text())
    fit = data["calibration"]["fits"]["torch"]
    assert "launch_overhead_us" in fit["fitted"] and fit["saved_to"].endswith("calibration/local-host.yaml")
    local = [r for r in data["rows"] if r["device"] == "local-host"]
    assert len(local) == 2 and all(r["calibrated"] for r in local)
    assert "estimated (calibrated)" in result.output
