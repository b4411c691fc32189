"""Device profiles: every shipped hardware/*.yaml validates, schema errors name file/line/key,
power modes change peaks and bandwidth, calibration files lay over defaults, and the CLI works."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from vla_compress.cli.main import main
from vla_compress.errors import ConfigError, HardwareError
from vla_compress.hardware import (PRECISIONS, hardware_dir, list_hardware, load_hardware, save_calibration,
                                   validate)

# local-host.yaml is generated on each machine by `vla-compress profile --calibrate` (git-ignored), not shipped
SHIPPED = [n for n in list_hardware() if n != "local-host"]
REQUIRED_DEVICES = {"jetson-orin-nano-8gb", "jetson-orin-nx-16gb", "jetson-agx-orin-64gb", "jetson-thor", "rtx-4090",
                    "rtx-4070", "l4", "a100-80gb-sxm", "h100-sxm", "x86-desktop-cpu", "orin-cpu"}


def _copy(tmp_path: Path, name: str = "jetson-agx-orin-64gb", edit=None) -> Path:
    """A copy of a shipped profile in tmp_path, optionally edited as text (keeps line numbers real)."""
    text = (hardware_dir() / f"{name}.yaml").read_text()
    if edit is not None:
        old, new = edit
        assert old in text, f"test setup: {old!r} not in {name}.yaml"
        text = text.replace(old, new, 1)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


# ------------------------------------------------------------------ shipped profiles
def test_all_required_devices_are_shipped():
    assert REQUIRED_DEVICES <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_loads_and_every_number_has_a_source(name):
    p = load_hardware(name, calibrated=False)
    assert p.name == name and p.memory_gb > 0 and p.bandwidth() > 0
    assert set(p.peak_tflops) <= set(PRECISIONS)
    for key, fact in p.facts.items():
        assert fact.source, key
        if key.startswith("efficiency."):  # a measurement behind it, or an honest "calibrate on device"
            assert "hardware-facts.md" in fact.source or "calibrate on device" in fact.source, key
    # every figure the estimator reads has a source
    for prec in p.peak_tflops:
        assert f"peak_tflops.{prec}" in p.facts
    assert {"memory_gb", "bandwidth_gbs", "efficiency.eta_compute.default", "efficiency.eta_memory.default",
            "efficiency.launch_overhead_us"} <= set(p.facts)
    for mode in p.power_modes:
        assert p.bandwidth(mode) > 0
        for prec in p.peak_tflops:
            assert p.peak(prec, mode) > 0
    for rt in p.runtimes.values():
        for prec in rt.precisions:
            assert p.peak(prec, runtime=rt.name) > 0
    eff = p.efficiency()
    assert 0 < eff.compute("fp16") <= 1 and 0 < eff.memory() <= 1 and eff.launch_overhead_us >= 0


def test_consistency_of_the_jetson_figures():
    """Headline Jetson TOPS = GPU sparse + DLA sparse; FP16 dense = INT8 dense / 2 on Orin."""
    agx = load_hardware("jetson-agx-orin-64gb")
    assert 2 * agx.peak("int8") + 2 * agx.dla.peak_tops["int8"] == pytest.approx(275, abs=1)
    nx = load_hardware("jetson-orin-nx-16gb")
    assert 2 * nx.peak("int8") + 2 * nx.dla.peak_tops["int8"] == pytest.approx(100, abs=1)
    super_dla = nx.mode("MAXN_SUPER").dla_peak_tops["int8"]
    assert 2 * nx.peak("int8", "MAXN_SUPER") + 2 * super_dla == pytest.approx(157, abs=1)
    for p in (agx, nx, load_hardware("jetson-orin-nano-8gb")):
        for mode in p.power_modes:
            assert p.peak("fp16", mode) == pytest.approx(p.peak("int8", mode) / 2, rel=0.03)
            assert "fp8" not in p.peak_tflops  # SM 8.7 has no FP8 tensor cores


def test_no_fp8_on_orin_and_int4_is_weight_only():
    p = load_hardware("jetson-agx-orin-64gb")
    with pytest.raises(HardwareError, match="no fp8 compute peak"):
        p.peak("fp8")
    with pytest.raises(HardwareError, match="weight-only here"):
        p.peak("int4", runtime="tensorrt")
    assert "int4" in p.runtime("tensorrt").weight_only


# ------------------------------------------------------------------ power modes, runtimes, efficiency
def test_peak_and_bandwidth_follow_the_power_mode():
    nano = load_hardware("jetson-orin-nano-8gb")
    assert nano.default_power_mode == "15W"
    assert nano.bandwidth() == 68 and nano.bandwidth("MAXN_SUPER") == 102
    assert nano.peak("fp16") == pytest.approx(10.2) and nano.peak("fp16", "MAXN_SUPER") == pytest.approx(16.7)
    assert nano.peak("int8", "MAXN_SUPER") == pytest.approx(33.4)
    assert nano.peak("fp16", "7W") == nano.peak("fp16")  # no sourced caps: the default figures (upper bound)
    nx = load_hardware("jetson-orin-nx-16gb")
    assert nx.bandwidth("MAXN_SUPER") == nx.bandwidth()  # bandwidth unchanged by Super on the NX
    assert nx.peak("fp16", "MAXN_SUPER") > nx.peak("fp16")
    with pytest.raises(HardwareError, match=r"unknown power mode 'TURBO'; known: 25W, 15W, 10W, MAXN_SUPER"):
        nx.peak("fp16", "TURBO")
    with pytest.raises(HardwareError, match="unknown precision 'fp6'"):
        nx.peak("fp6")


def test_geforce_fp16_accumulate_peak_is_used_only_by_runtimes_that_accumulate_in_fp16():
    p = load_hardware("rtx-4090")
    assert p.peak("fp16") == 165 and p.peak("fp16", runtime="tensorrt") == 165
    assert p.peak("fp16", runtime="llama.cpp") == 330
    assert p.efficiency("llama.cpp").compute("fp16") == pytest.approx(0.45)
    assert p.efficiency("llama.cpp").memory("int8") == pytest.approx(0.70)
    assert p.efficiency("tensorrt").compute("fp16") == pytest.approx(0.5)  # base default
    with pytest.raises(HardwareError, match="unknown runtime 'mlc'"):
        p.efficiency("mlc")


def test_calibration_file_is_laid_over_the_defaults(tmp_path):
    path = _copy(tmp_path)
    base = load_hardware(path)
    assert base.calibration_path is None
    written = save_calibration(base, {"eta_memory.default": 0.77, "launch_overhead_us": 12.5},
                               "measured by a test", power_mode="MAXN")
    assert written == tmp_path / "calibration" / "jetson-agx-orin-64gb.yaml"
    save_calibration(base, {"eta_compute.fp16": 0.61}, "measured by a test", runtime="tensorrt")  # merged, not replaced
    cal = load_hardware(path)
    assert cal.calibration_path == written
    assert cal.efficiency().memory() == pytest.approx(0.77) and cal.efficiency().launch_overhead_us == 12.5
    assert cal.efficiency("tensorrt").compute("fp16") == pytest.approx(0.61)
    assert cal.efficiency().compute("fp16") == pytest.approx(0.5)  # untouched default
    assert cal.efficiency("llama.cpp").memory() == pytest.approx(0.42)  # profile's runtime factor survives
    assert cal.facts["efficiency.eta_memory.default"].source.startswith("calibrated")
    assert load_hardware(path, calibrated=False).efficiency().memory() == pytest.approx(0.82)
    with pytest.raises(HardwareError, match="unknown factor 'eta_magic'"):
        save_calibration(base, {"eta_magic": 0.5}, "x")


def test_calibration_file_errors_name_the_file(tmp_path):
    path = _copy(tmp_path)
    cal = tmp_path / "calibration" / "jetson-agx-orin-64gb.yaml"
    cal.parent.mkdir()
    cal.write_text("hardware: jetson-agx-orin-64gb\npower_mode: TURBO\nefficiency: {}\n")
    with pytest.raises(HardwareError, match=re.escape(f"{cal}:2: power_mode: unknown power mode 'TURBO'")):
        load_hardware(path)
    cal.write_text("hardware: jetson-agx-orin-64gb\nefficiency:\n  eta_memory:\n    default: {value: 1.5, source: x}\n")
    with pytest.raises(HardwareError, match=r"eta_memory.default.value: must be <= 1.0, got 1.5"):
        load_hardware(path)


# ------------------------------------------------------------------ schema errors
def test_missing_required_field(tmp_path):
    path = _copy(tmp_path, edit=("memory_gb: {value: 64,", "memory_gib: {value: 64,"))
    with pytest.raises(HardwareError) as e:
        load_hardware(path)
    assert str(path) in str(e.value)
    assert "memory_gib: unknown field" in str(e.value)
    path = _copy(tmp_path, edit=('  int8: {value: 85, source: "hardware-facts.md devices table: GPU INT8 85 dense (170 sparse)"}',
                                 "  int8: {value: 85}"))
    with pytest.raises(HardwareError, match=r"peak_tflops.int8.source: missing required field"):
        load_hardware(path)


def test_missing_top_level_field_names_it(tmp_path):
    data = yaml.safe_load(_copy(tmp_path).read_text())
    del data["bandwidth_gbs"]
    with pytest.raises(ConfigError, match=r"bandwidth_gbs: missing required field"):
        validate(data, tmp_path / "jetson-agx-orin-64gb.yaml")


def test_negative_bandwidth(tmp_path):
    path = _copy(tmp_path, edit=("bandwidth_gbs: {value: 204.8,", "bandwidth_gbs: {value: -204.8,"))
    line = _line_of(path, "bandwidth_gbs: {value: -204.8")
    with pytest.raises(HardwareError, match=re.escape(f"{path}:{line}: bandwidth_gbs.value: must be > 0, got -204.8")):
        load_hardware(path)


def test_zero_peak_and_wrong_type(tmp_path):
    path = _copy(tmp_path, edit=("fp16: {value: 42.5,", "fp16: {value: 0,"))
    with pytest.raises(HardwareError, match=r"peak_tflops.fp16.value: must be > 0, got 0"):
        load_hardware(path)
    path = _copy(tmp_path, edit=("fp16: {value: 42.5,", 'fp16: {value: "fast",'))
    with pytest.raises(HardwareError, match=r"peak_tflops.fp16.value: expected a number, got str"):
        load_hardware(path)
    path = _copy(tmp_path, edit=("  torch: {precisions: [fp32, fp16, bf16]}", "  torch: {precisions: fp16}"))
    with pytest.raises(HardwareError, match=r"runtimes.torch.precisions: expected a list of precision names, got str"):
        load_hardware(path)


def test_unknown_precision(tmp_path):
    path = _copy(tmp_path, edit=("  int8: {value: 85,", "  int6: {value: 85,"))
    line = _line_of(path, "int6:")
    with pytest.raises(HardwareError, match=re.escape(f"{path}:{line}: peak_tflops.int6: unknown precision 'int6'; known: fp32")):
        load_hardware(path)


def test_runtime_precision_without_a_peak(tmp_path):
    path = _copy(tmp_path, edit=("precisions: [fp32, fp16, bf16, int8]", "precisions: [fp32, fp16, bf16, int8, fp8]"))
    with pytest.raises(HardwareError, match="runtimes.tensorrt.precisions: fp8 has no peak in peak_tflops"):
        load_hardware(path)


def test_unknown_runtime(tmp_path):
    path = _copy(tmp_path, edit=("  torch: {precisions:", "  pytorch: {precisions:"))
    with pytest.raises(HardwareError, match=r"runtimes.pytorch: unknown runtime 'pytorch'; known: torch, onnxruntime"):
        load_hardware(path)


def test_unknown_power_mode_referenced(tmp_path):
    path = _copy(tmp_path, edit=("default_power_mode: MAXN", "default_power_mode: MAXQ"))
    with pytest.raises(HardwareError, match=r"default_power_mode: unknown power mode 'MAXQ'; known: MAXN, 50W, 30W, 15W"):
        load_hardware(path)


def test_partial_power_mode_peak_override_is_refused(tmp_path):
    path = _copy(tmp_path, "jetson-orin-nano-8gb", edit=(
        '      fp32: {value: 2.09, source: "derived (hardware-facts.md ~2.1): 1024 CUDA cores x 2 FLOP x 1020 MHz"}\n', ""))
    with pytest.raises(HardwareError, match=r"power_modes.MAXN_SUPER.peak_tflops: must give exactly the precisions"):
        load_hardware(path)


def test_yaml_syntax_error_has_a_line_number(tmp_path):
    path = _copy(tmp_path, edit=("memory_gb: {value: 64,", "memory_gb: {value: [64,"))
    line = _line_of(path, "memory_gb: {value: [64")
    with pytest.raises(HardwareError) as e:
        load_hardware(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:") and "invalid YAML" in msg
    reported = int(msg[len(str(path)) + 1:].split(":")[0])
    assert line <= reported <= line + 1  # PyYAML reports where the flow collection broke


def test_duplicate_key_is_an_error(tmp_path):
    path = _copy(tmp_path, edit=("kind: soc\n", "kind: soc\nkind: gpu\n"))
    with pytest.raises(HardwareError, match=r":\d+: kind: duplicate key"):
        load_hardware(path)


def test_name_must_match_the_file(tmp_path):
    path = _copy(tmp_path)
    other = path.rename(tmp_path / "agx.yaml")
    with pytest.raises(HardwareError, match=r"name: 'jetson-agx-orin-64gb' does not match the file name 'agx'"):
        load_hardware(other)


def test_env_var_selects_the_hardware_dir(tmp_path, monkeypatch):
    _copy(tmp_path, "l4")
    monkeypatch.setenv("VLA_COMPRESS_HARDWARE_DIR", str(tmp_path))
    assert list_hardware() == ["l4"]
    with pytest.raises(HardwareError, match=r"unknown hardware 'h100-sxm'; known: l4"):
        load_hardware("h100-sxm")
    monkeypatch.setenv("VLA_COMPRESS_HARDWARE_DIR", str(tmp_path / "missing"))
    with pytest.raises(HardwareError, match="VLA_COMPRESS_HARDWARE_DIR points here"):
        hardware_dir()


# ------------------------------------------------------------------ CLI
def test_cli_hardware_list():
    result = CliRunner().invoke(main, ["hardware", "list"])
    assert result.exit_code == 0, result.output
    for name in REQUIRED_DEVICES:
        assert name in result.output
    row = next(line for line in result.output.splitlines() if "jetson-agx-orin-64gb" in line)
    assert "204.8" in row and "42.5" in row and "85" in row and "tensorrt" in row


def test_cli_hardware_show():
    result = CliRunner().invoke(main, ["hardware", "show", "jetson-agx-orin-64gb"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "NVIDIA Jetson AGX Orin 64GB" in out and "compute capability 8.7" in out
    assert "204.8 GB/s" in out and "42.5 TFLOPS" in out and "hardware-facts.md" in out
    assert "MAXN" in out and "llama.cpp" in out and "DLA: 2 engines" in out


def test_cli_unknown_hardware_lists_known_names():
    result = CliRunner().invoke(main, ["hardware", "show", "jetson-xavier"])
    assert result.exit_code != 0
    assert "unknown hardware 'jetson-xavier'" in result.output
    assert "jetson-agx-orin-64gb" in result.output and "rtx-4090" in result.output
