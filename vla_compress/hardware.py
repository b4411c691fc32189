"""Device profiles: load and validate `hardware/*.yaml` (one data file per device).

Why a schema of its own: the roofline estimator turns these numbers into latency claims, so every
number carries its source (`bandwidth_gbs: {value: 204.8, source: "..."}`) and every name is checked,
with errors naming the file, line and key. Top-level figures are those of `default_power_mode`;
other power modes override bandwidth / clock / peaks. Peaks are *dense* (no 2:4 sparsity), in
TFLOPS or TOPS. Calibrated efficiency factors live beside the profile (`calibration/<name>.yaml`; for a
profile installed with the package, in the user folder: vla_compress/resources.py) and are laid over its
defaults on load.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, NamedTuple, NoReturn

from . import resources
from .backends import canonical_or_same, runtime_names
from .errors import HardwareError

PRECISIONS = ("fp32", "fp16", "bf16", "fp8", "int8", "int4", "fp4")
RUNTIMES = tuple(runtime_names())  # the backends' canonical names (vla_compress/backends.py); aliases are normalised
KINDS = ("gpu", "cpu", "soc")
SCHEMA_VERSION = 1
ENV_DIR = "VLA_COMPRESS_HARDWARE_DIR"
_ETA_FIELDS = ("eta_compute", "eta_memory")
_TOP_REQUIRED = ("schema_version", "name", "display_name", "kind", "memory_gb", "bandwidth_gbs", "peak_tflops",
                 "runtimes", "efficiency")
_TOP_OPTIONAL = ("compute_capability", "clock_mhz", "cores", "fp16_accumulate_peak_tflops", "dla",
                 "default_power_mode", "power_modes", "notes")
_MODE_FIELDS = ("watts", "bandwidth_gbs", "clock_mhz", "peak_tflops", "dla_peak_tops", "notes")


class Fact(NamedTuple):
    """One sourced value from a profile and where the number comes from."""
    value: Any
    source: str


@dataclass(frozen=True)
class PowerMode:
    """A power mode; None / empty fields mean "same as the profile's top-level figure"."""
    name: str
    watts: float | None = None
    bandwidth_gbs: float | None = None
    clock_mhz: float | None = None
    peak_tflops: Mapping[str, float] = field(default_factory=dict)
    dla_peak_tops: Mapping[str, float] = field(default_factory=dict)
    notes: str = ""


@dataclass(frozen=True)
class DLA:
    """Deep-learning accelerator engines (Jetson Orin); `peak_tops` is dense, summed over engines."""
    count: int
    precisions: tuple[str, ...]
    peak_tops: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RuntimeSupport:
    """What a runtime computes in on this device. `weight_only` formats (e.g. INT4 W4A16) only
    shrink the bytes read: model them as bandwidth formats, not as compute precisions."""
    name: str
    precisions: tuple[str, ...]
    weight_only: tuple[str, ...] = ()
    fp16_accumulate: bool = False
    notes: str = ""


@dataclass(frozen=True)
class Efficiency:
    """Roofline efficiency factors. `eta_*` map a precision (or "default") to a fraction of peak."""
    eta_compute: Mapping[str, float] = field(default_factory=dict)
    eta_memory: Mapping[str, float] = field(default_factory=dict)
    launch_overhead_us: float | None = None

    def compute(self, precision: str) -> float:
        """Fraction of the dense compute peak reached at `precision`."""
        return self.eta_compute.get(precision, self.eta_compute["default"])

    def memory(self, precision: str | None = None) -> float:
        """Fraction of the memory bandwidth reached when streaming weights stored in `precision`."""
        return self.eta_memory.get(precision or "default", self.eta_memory["default"])

    def overlay(self, other: Efficiency) -> Efficiency:
        """`other`'s factors where it gives them, this one's elsewhere."""
        return Efficiency({**self.eta_compute, **other.eta_compute}, {**self.eta_memory, **other.eta_memory},
                          self.launch_overhead_us if other.launch_overhead_us is None else other.launch_overhead_us)


@dataclass(frozen=True)
class HardwareProfile:
    """A validated device profile. Top-level figures are those of `default_power_mode`."""
    name: str
    display_name: str
    kind: str
    memory_gb: float
    bandwidth_gbs: float
    peak_tflops: Mapping[str, float]
    runtimes: Mapping[str, RuntimeSupport]
    base_efficiency: Efficiency
    runtime_efficiency: Mapping[str, Efficiency]
    power_modes: Mapping[str, PowerMode]
    default_power_mode: str
    compute_capability: str | None = None
    clock_mhz: float | None = None
    cores: int | None = None
    fp16_accumulate_peak_tflops: Mapping[str, float] = field(default_factory=dict)
    dla: DLA | None = None
    notes: tuple[str, ...] = ()
    facts: Mapping[str, Fact] = field(default_factory=dict)
    path: Path | None = None
    calibration_path: Path | None = None

    def _error(self, problem: str, key: str = "") -> HardwareError:
        return HardwareError(self.path or self.name, problem, key=key)

    def mode(self, power_mode: str | None = None) -> PowerMode:
        """The named power mode (the default one when None)."""
        name = self.default_power_mode if power_mode is None else power_mode
        if name not in self.power_modes:
            raise self._error(f"unknown power mode '{name}'; known: {', '.join(self.power_modes)}", "power_modes")
        return self.power_modes[name]

    def bandwidth(self, power_mode: str | None = None) -> float:
        """Peak memory bandwidth in GB/s in `power_mode`."""
        mode = self.mode(power_mode)
        return self.bandwidth_gbs if mode.bandwidth_gbs is None else mode.bandwidth_gbs

    def peak(self, precision: str, power_mode: str | None = None, runtime: str | None = None) -> float:
        """Dense peak in TFLOPS/TOPS at `precision` in `power_mode`. With `runtime`, checks that it computes
        in `precision` here and, if it accumulates in FP16 (`fp16_accumulate`, GeForce), uses that faster peak."""
        _check_name(precision, PRECISIONS, "precision", self._error)
        if runtime is not None:
            rt = self.runtime(runtime)
            if precision not in rt.precisions:
                hint = " (weight-only here: model it as a bandwidth format)" if precision in rt.weight_only else ""
                raise self._error(f"{runtime} does not compute in {precision} on {self.name}{hint}", f"runtimes.{runtime}")
        if precision not in self.peak_tflops:
            raise self._error(f"no {precision} compute peak on {self.name}; it has {', '.join(self.peak_tflops)}", "peak_tflops")
        mode = self.mode(power_mode)
        value = mode.peak_tflops.get(precision, self.peak_tflops[precision])
        if runtime is not None and self.runtime(runtime).fp16_accumulate and precision in self.fp16_accumulate_peak_tflops:
            value *= self.fp16_accumulate_peak_tflops[precision] / self.peak_tflops[precision]
        return value

    def runtime(self, name: str) -> RuntimeSupport:
        """The runtime's support entry (any spelling of its name: `onnx` is `onnxruntime`); a clear error when
        the runtime is unknown or not on this device."""
        name = canonical_or_same(name)
        _check_name(name, RUNTIMES, "runtime", self._error)
        if name not in self.runtimes:
            raise self._error(f"runtime {name} is not supported on {self.name}; it has {', '.join(self.runtimes)}", "runtimes")
        return self.runtimes[name]

    def efficiency(self, runtime: str | None = None) -> Efficiency:
        """Efficiency factors (calibration laid over defaults), with `runtime`'s own where it has them."""
        if runtime is None:
            return self.base_efficiency
        return self.base_efficiency.overlay(self.runtime_efficiency.get(self.runtime(runtime).name, Efficiency()))


def hardware_dir() -> Path:
    """The folder device profiles are looked up in first, and where the profiler writes `local-host.yaml`
    and `calibration/`: $VLA_COMPRESS_HARDWARE_DIR, else the checkout's `hardware/`, else (an installed
    package) the user folder ~/.cache/vla-compress/hardware (see vla_compress/resources.py)."""
    return hardware_dirs()[0]


def hardware_dirs() -> list[Path]:
    """Where device profiles are looked up, first match wins (resources.search_path)."""
    env = os.environ.get(ENV_DIR)
    if env and not Path(env).is_dir():
        raise HardwareError(env, f"{ENV_DIR} points here, but it is not a directory")
    dirs = resources.search_path("hardware", env)
    if not any(d.is_dir() for d in dirs):
        raise HardwareError(dirs[-1], f"no device profiles folder here (not shipped with this install?); set {ENV_DIR}")
    return dirs


def list_hardware(directory: str | Path | None = None) -> list[str]:
    """Names of the device profiles (file stems) in `directory` (default: every folder `hardware_dirs()` searches)."""
    dirs = [Path(directory)] if directory is not None else hardware_dirs()
    return sorted({p.stem for d in dirs for p in d.glob("*.yaml") if p.is_file()})


def _resolve(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or text.endswith((".yaml", ".yml")) or "/" in text or os.sep in text:
        return Path(name_or_path)
    dirs = hardware_dirs()
    for d in dirs:
        if (d / f"{text}.yaml").is_file():
            return d / f"{text}.yaml"
    raise HardwareError(dirs[0], f"unknown hardware '{text}'; known: {', '.join(list_hardware()) or '(none)'}")


def calibration_path(profile_path: str | Path, name: str) -> Path:
    """Where calibrated efficiency factors for profile `name` live: beside the profile file, or in the user
    folder when the profile is one installed with the package (resources.writable)."""
    return resources.writable(Path(profile_path).parent, "hardware") / "calibration" / f"{name}.yaml"


def load_hardware(name_or_path: str | Path, *, calibrated: bool = True) -> HardwareProfile:
    """Load and validate a profile by name (`jetson-agx-orin-64gb`) or path; lay its calibration
    file (if any, and if `calibrated`) over the default efficiency factors."""
    path = _resolve(name_or_path)
    data, lines = _read_yaml(path)
    profile = validate(data, path, lines)
    cal = calibration_path(path, profile.name)
    return _apply_calibration(profile, cal, *_read_yaml(cal)) if calibrated and cal.is_file() else profile


def _read_yaml(path: Path) -> tuple[Any, dict[str, int]]:
    """Parse YAML once, keeping the line of every key so schema errors can point at it."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise HardwareError(path, "file not found" if isinstance(e, FileNotFoundError) else f"cannot read: {e}") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = "; ".join(str(p) for p in (getattr(e, "context", None), getattr(e, "problem", None)) if p)
        raise HardwareError(path, f"invalid YAML: {problem or e}", line=mark.line + 1 if mark else None) from None
    finally:
        loader.dispose()
    lines: dict[str, int] = {}
    if node is not None:
        _index_lines(node, "", lines, path)
    return data, lines


def _index_lines(node: Any, prefix: str, lines: dict[str, int], path: Path) -> None:
    import yaml

    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = _join(prefix, str(key_node.value))
            if key in seen:  # PyYAML silently keeps the last one: a classic source of wrong numbers
                raise HardwareError(path, "duplicate key", key=key, line=key_node.start_mark.line + 1)
            seen.add(key)
            lines[key] = key_node.start_mark.line + 1
            _index_lines(value_node, key, lines, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[f"{prefix}[{i}]"] = item.start_mark.line + 1
            _index_lines(item, f"{prefix}[{i}]", lines, path)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _check_name(name: Any, known: tuple[str, ...], what: str, error) -> None:  # for run-time lookups
    if name not in known:
        raise error(f"unknown {what} '{name}'; known: {', '.join(known)}")


class _Checker:
    """Schema helpers: each check either returns the clean value or raises a HardwareError that
    names the file, the line (from the YAML node) and the key path."""

    def __init__(self, path: Path | None, lines: Mapping[str, int] | None):
        self.path, self.lines, self.facts = path, dict(lines or {}), {}

    def fail(self, key: str, problem: str) -> NoReturn:
        k = key  # a missing key has no line of its own: point at its parent's
        while k and k not in self.lines:
            k = k.rpartition(".")[0]
        raise HardwareError(self.path, problem, key=key, line=self.lines.get(k))

    def mapping(self, obj: Any, key: str, required: tuple = (), optional: tuple | None = None) -> dict:
        if not isinstance(obj, dict):
            self.fail(key, f"expected a mapping, got {_type(obj)}")
        for k in obj:
            if not isinstance(k, str):
                self.fail(_join(key, str(k)), f"keys must be strings, got {_type(k)}")
        if optional is not None:
            self.known(obj, key, (*required, *optional), "field")
        for k in required:
            if k not in obj:
                self.fail(_join(key, k), "missing required field")
        return obj

    def number(self, obj: Any, key: str, *, zero_ok: bool = False, at_most: float | None = None) -> float:
        """A sourced number `{value: 204.8, source: "..."}`, > 0 (or >= 0 with zero_ok)."""
        m = self.mapping(obj, key, ("value", "source"), ())
        v = m["value"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or abs(v) == float("inf"):
            self.fail(_join(key, "value"), f"expected a finite number, got {v!r}" if isinstance(v, float) else
                      f"expected a number, got {_type(v)}")
        if v < 0 or (v == 0 and not zero_ok):
            self.fail(_join(key, "value"), f"must be {'>= 0' if zero_ok else '> 0'}, got {v}")
        if at_most is not None and v > at_most:
            self.fail(_join(key, "value"), f"must be <= {at_most}, got {v}")
        self.facts[key] = Fact(v, self.text(m["source"], _join(key, "source")))
        return float(v)

    def known(self, m: dict, key: str, known: tuple[str, ...], what: str) -> dict:
        for k in m:
            if k not in known:
                self.fail(_join(key, k), f"unknown {what} '{k}'; known: {', '.join(known)}")
        return m

    def text(self, obj: Any, key: str) -> str:
        if not isinstance(obj, str) or not obj.strip():
            self.fail(key, f"expected a non-empty string, got {_type(obj)}")
        return obj.strip()

    def names(self, obj: Any, key: str, known: tuple[str, ...], what: str) -> tuple[str, ...]:
        if not isinstance(obj, list):
            self.fail(key, f"expected a list of {what} names, got {_type(obj)}")
        for i, item in enumerate(obj):
            if item not in known:
                self.fail(f"{key}[{i}]", f"unknown {what} '{item}'; known: {', '.join(known)}")
        if len(set(obj)) != len(obj):
            self.fail(key, f"lists a {what} twice")
        return tuple(obj)

    def peaks(self, obj: Any, key: str) -> dict[str, float]:
        m = self.known(self.mapping(obj, key), key, PRECISIONS, "precision")
        return {p: self.number(v, _join(key, p)) for p, v in m.items()}

    def efficiency(self, obj: Any, key: str, *, complete: bool) -> Efficiency:
        m = self.mapping(obj, key, _ETA_FIELDS + ("launch_overhead_us",) if complete else (),
                         ("runtimes",) if complete else _ETA_FIELDS + ("launch_overhead_us",))
        etas = {}
        for f in _ETA_FIELDS:
            sub = self.mapping(m.get(f, {}), _join(key, f), ("default",) if complete else ())
            self.known(sub, _join(key, f), ("default", *PRECISIONS), "precision")
            etas[f] = {p: self.number(v, _join(key, f"{f}.{p}"), at_most=1.0) for p, v in sub.items()}
        launch = m.get("launch_overhead_us")
        return Efficiency(etas["eta_compute"], etas["eta_memory"],
                          None if launch is None else self.number(launch, _join(key, "launch_overhead_us"), zero_ok=True))

    def runtime_efficiencies(self, obj: Any, key: str, runtimes: Mapping) -> dict[str, Efficiency]:
        m = self.known(self.mapping(obj, key), key, tuple(runtimes), "runtime (not under runtimes)")
        return {rt: self.efficiency(v, _join(key, rt), complete=False) for rt, v in m.items()}


def _type(obj: Any) -> str:
    return "nothing" if obj is None else type(obj).__name__


def validate(data: Any, path: str | Path | None = None, lines: Mapping[str, int] | None = None) -> HardwareProfile:
    """Check a parsed profile against the schema and build the HardwareProfile (raises HardwareError)."""
    path = Path(path) if path is not None else None
    c = _Checker(path, lines)
    d = c.mapping(data, "", _TOP_REQUIRED, _TOP_OPTIONAL)
    if d["schema_version"] != SCHEMA_VERSION:
        c.fail("schema_version", f"expected {SCHEMA_VERSION}, got {d['schema_version']!r}")
    name = c.text(d["name"], "name")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", name):
        c.fail("name", f"'{name}' must be lower-case letters, digits, '-' and '.'")
    if path is not None and path.stem != name:
        c.fail("name", f"'{name}' does not match the file name '{path.stem}'")
    kind = c.text(d["kind"], "kind")
    if kind not in KINDS:
        c.fail("kind", f"unknown kind '{kind}'; known: {', '.join(KINDS)}")
    cc = None
    if "compute_capability" in d:
        m = c.mapping(d["compute_capability"], "compute_capability", ("value", "source"), ())
        cc = str(m["value"])
        if not re.fullmatch(r"\d+\.\d+", cc):
            c.fail("compute_capability.value", f"expected MAJOR.MINOR such as '8.7', got {m['value']!r}")
        c.facts["compute_capability"] = Fact(cc, c.text(m["source"], "compute_capability.source"))
    elif kind != "cpu":
        c.fail("compute_capability", f"missing required field (every {kind} has one)")
    memory, bandwidth = c.number(d["memory_gb"], "memory_gb"), c.number(d["bandwidth_gbs"], "bandwidth_gbs")
    clock, cores = (c.number(d["clock_mhz"], "clock_mhz") if "clock_mhz" in d else None,
                    int(c.number(d["cores"], "cores")) if "cores" in d else None)
    peaks = c.peaks(d["peak_tflops"], "peak_tflops") or c.fail("peak_tflops", "lists no precision")
    acc16 = c.peaks(d.get("fp16_accumulate_peak_tflops", {}), "fp16_accumulate_peak_tflops")
    for p, v in acc16.items():
        if p not in peaks or v < peaks[p]:
            c.fail(f"fp16_accumulate_peak_tflops.{p}", f"needs a peak_tflops.{p} no larger than it")
    dla = _dla(c, d["dla"]) if "dla" in d else None
    modes, default_mode = _power_modes(c, d, peaks, dla)
    runtimes = _runtimes(c, d["runtimes"], peaks, acc16)
    base = c.efficiency(d["efficiency"], "efficiency", complete=True)
    per_rt = c.runtime_efficiencies(d["efficiency"].get("runtimes", {}), "efficiency.runtimes", runtimes)
    notes = d.get("notes", [])
    notes = tuple(c.text(n, f"notes[{i}]") for i, n in enumerate(notes)) if isinstance(notes, list) else \
        c.fail("notes", f"expected a list of strings, got {_type(notes)}")
    return HardwareProfile(
        name=name, display_name=c.text(d["display_name"], "display_name"), kind=kind, memory_gb=memory,
        bandwidth_gbs=bandwidth, peak_tflops=peaks, runtimes=runtimes, base_efficiency=base, runtime_efficiency=per_rt,
        power_modes=modes, default_power_mode=default_mode, compute_capability=cc, clock_mhz=clock, cores=cores,
        fp16_accumulate_peak_tflops=acc16, dla=dla, notes=notes, path=path,
        facts=dict(sorted(c.facts.items(), key=lambda kv: c.lines.get(kv[0], 0))))  # in file order


def _dla(c: _Checker, obj: Any) -> DLA:
    m = c.mapping(obj, "dla", ("count", "precisions"), ("peak_tops",))
    precisions = c.names(m["precisions"], "dla.precisions", PRECISIONS, "precision")
    peaks = c.peaks(m.get("peak_tops", {}), "dla.peak_tops")
    for p in set(peaks) - set(precisions):
        c.fail(f"dla.peak_tops.{p}", f"{p} is not in dla.precisions")
    return DLA(int(c.number(m["count"], "dla.count")), precisions, peaks)


def _power_modes(c: _Checker, d: dict, peaks: dict, dla: DLA | None) -> tuple[dict[str, PowerMode], str]:
    if "power_modes" not in d:
        if "default_power_mode" in d:
            c.fail("default_power_mode", "names a power mode, but there is no power_modes section")
        return {"default": PowerMode("default")}, "default"
    raw = c.mapping(d["power_modes"], "power_modes") or c.fail("power_modes", "lists no power mode")
    default = c.text(d.get("default_power_mode"), "default_power_mode")
    if default not in raw:
        c.fail("default_power_mode", f"unknown power mode '{default}'; known: {', '.join(raw)}")
    modes = {}
    for name, spec in raw.items():
        key = f"power_modes.{name}"
        m = c.mapping(spec if spec is not None else {}, key, (), _MODE_FIELDS)
        num = lambda f: c.number(m[f], f"{key}.{f}") if f in m else None  # noqa: E731
        overrides = [f for f in ("bandwidth_gbs", "clock_mhz", "peak_tflops", "dla_peak_tops") if f in m]
        if name == default and overrides:
            c.fail(f"{key}.{overrides[0]}", "the default power mode's figures are the top-level ones; put them there")
        mode_peaks = c.peaks(m.get("peak_tflops", {}), f"{key}.peak_tflops")
        if mode_peaks and set(mode_peaks) != set(peaks):  # a partial override would silently mix two clocks
            c.fail(f"{key}.peak_tflops", f"must give exactly the precisions of peak_tflops ({', '.join(peaks)})")
        dla_peaks = c.peaks(m.get("dla_peak_tops", {}), f"{key}.dla_peak_tops")
        if dla_peaks and (dla is None or set(dla_peaks) != set(dla.peak_tops)):
            c.fail(f"{key}.dla_peak_tops", "must give exactly the precisions of dla.peak_tops")
        modes[name] = PowerMode(name, num("watts"), num("bandwidth_gbs"), num("clock_mhz"), mode_peaks, dla_peaks,
                                c.text(m["notes"], f"{key}.notes") if "notes" in m else "")
    return modes, default


def _runtimes(c: _Checker, obj: Any, peaks: dict, acc16: dict) -> dict[str, RuntimeSupport]:
    raw = c.known(c.mapping(obj, "runtimes"), "runtimes", RUNTIMES, "runtime") or c.fail("runtimes", "lists no runtime")
    out = {}
    for rt, spec in raw.items():
        key = f"runtimes.{rt}"
        m = c.mapping(spec, key, ("precisions",), ("weight_only", "fp16_accumulate", "notes"))
        precisions = c.names(m["precisions"], f"{key}.precisions", PRECISIONS, "precision")
        for p in [p for p in precisions if p not in peaks]:
            c.fail(f"{key}.precisions", f"{p} has no peak in peak_tflops; list storage-only formats under weight_only")
        weight_only = c.names(m.get("weight_only", []), f"{key}.weight_only", PRECISIONS, "precision")
        acc = m.get("fp16_accumulate", False)
        if not isinstance(acc, bool):
            c.fail(f"{key}.fp16_accumulate", f"expected true or false, got {_type(acc)}")
        if acc and not acc16:
            c.fail(f"{key}.fp16_accumulate", "needs fp16_accumulate_peak_tflops")
        out[rt] = RuntimeSupport(rt, precisions, weight_only, acc, c.text(m["notes"], f"{key}.notes") if "notes" in m else "")
    return out


def _apply_calibration(profile: HardwareProfile, path: Path, data: Any, lines: Mapping[str, int] | None) -> HardwareProfile:
    """Validate a calibration file's content and lay its factors over the profile's."""
    c = _Checker(path, lines)
    d = c.mapping(data, "", ("hardware", "efficiency"), ("power_mode", "notes"))
    if d["hardware"] != profile.name:
        c.fail("hardware", f"'{d['hardware']}' is not the profile it sits beside ('{profile.name}')")
    if "power_mode" in d and d["power_mode"] not in profile.power_modes:
        c.fail("power_mode", f"unknown power mode '{d['power_mode']}'; known: {', '.join(profile.power_modes)}")
    eff = c.mapping(d["efficiency"], "efficiency")
    base = c.efficiency({k: v for k, v in eff.items() if k != "runtimes"}, "efficiency", complete=False)
    per_rt = c.runtime_efficiencies(eff.get("runtimes", {}), "efficiency.runtimes", profile.runtimes)
    merged_rt = {**profile.runtime_efficiency,
                 **{rt: profile.runtime_efficiency.get(rt, Efficiency()).overlay(e) for rt, e in per_rt.items()}}
    facts = {**profile.facts, **{k: Fact(v.value, f"calibrated ({path.name}): {v.source}") for k, v in c.facts.items()}}
    return replace(profile, base_efficiency=profile.base_efficiency.overlay(base), runtime_efficiency=merged_rt,
                   facts=facts, calibration_path=path)


def save_calibration(profile: HardwareProfile, factors: Mapping[str, float], source: str, *,
                     runtime: str | None = None, power_mode: str | None = None) -> Path:
    """Record measured factors ("eta_compute.fp16", "eta_memory.default", "launch_overhead_us" -> value)
    beside the profile, merged into its calibration file; `source` says how they were measured."""
    import yaml

    from .fileio import write_text

    if profile.path is None:
        raise HardwareError(profile.name, "profile was not loaded from a file; nowhere to store its calibration")
    path = calibration_path(profile.path, profile.name)
    data = (_read_yaml(path)[0] if path.is_file() else None) or {"hardware": profile.name, "efficiency": {}}
    if power_mode is not None:
        profile.mode(power_mode)
        data["power_mode"] = power_mode
    target = data.setdefault("efficiency", {})
    if runtime is not None:
        runtime = profile.runtime(runtime).name  # the canonical name, as the profile's runtimes: lists it
        target = target.setdefault("runtimes", {}).setdefault(runtime, {})
    for key, value in factors.items():
        group, _, prec = key.partition(".")
        entry = {"value": float(value), "source": source}
        if group == "launch_overhead_us" and not prec:
            target[group] = entry
        elif group in _ETA_FIELDS and prec:
            target.setdefault(group, {})[prec] = entry
        else:  # checked before anything is written
            raise HardwareError(path, f"unknown factor '{key}'; use eta_compute.<precision|default>, "
                                      "eta_memory.<precision|default> or launch_overhead_us")
    text = yaml.safe_dump(data, sort_keys=False)
    _apply_calibration(profile, path, yaml.safe_load(text), None)  # refuse to write a file that would not load
    write_text(path, text)
    return path
