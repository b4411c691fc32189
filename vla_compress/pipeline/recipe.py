"""Recipes: one YAML file per deployment (`profiles/NAME.yaml`), validated with errors that name the
file, the line and the key.

A recipe says where the model goes and what it must still do there:

    name: cpu-onnx-int8
    description: ...
    target: {hardware: x86-desktop-cpu, runtime: onnxruntime, precision: int8}
    passes:  [{pass: int8-dynamic, where: backbone}]          # vla_compress.passes configs, in order
    exports: [{format: onnx, precision: int8-dynamic}]        # vla_compress.export configs
    deploy: onnx-int8-dynamic        # the variant the verdict is about (default: the last export)
    calibration: {episodes_per_task: 1, samples: 32, validation_samples: 8}   # dataset: a LeRobot dir to use instead
    evaluation: {suite: metaworld-mt10, tasks: [...], episodes: 10, workers: 2}   # variants: [names] to run
                                     # only those in closed loop beside the baseline (default: every one)
    budgets: {max_success_drop: 0.10, confidence: 0.95, max_latency_ms: 50, min_control_hz: 20}
    profiling: {steps: 20, warmup: 3}

Validation happens before anything heavy runs: pass and export configs are built (their own
checks run), the hardware profile is loaded, the runtime/precision pair is checked against it.
No torch import here.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from ..backends import runtime_name
from ..errors import ConfigError
from ..resources import shipped

PROFILES_DIR = shipped("profiles")  # the shipped recipes (vla_compress/resources.py: checkout or installed copy)
TOP_KEYS = {"name", "description", "target", "passes", "exports", "deploy", "calibration", "evaluation",
            "budgets", "profiling"}
SECTION_KEYS = {
    "target": {"hardware", "runtime", "precision", "power_mode"},
    "calibration": {"episodes_per_task", "samples", "validation_samples", "seed", "dataset"},
    "evaluation": {"suite", "tasks", "episodes", "workers", "threads_per_worker", "max_steps", "sequential",
                   "executor", "variants"},
    "budgets": {"max_success_drop", "confidence", "max_latency_ms", "min_control_hz"},
    "profiling": {"steps", "warmup", "threads"},
}
DEFAULTS: dict[str, Any] = {
    "description": "",
    "passes": [],
    "exports": [],
    "deploy": None,
    "calibration": {"episodes_per_task": 1, "samples": 32, "validation_samples": 8, "seed": 0, "dataset": None},
    "evaluation": {"suite": "metaworld-mt10", "tasks": None, "episodes": 10, "workers": 2,
                   "threads_per_worker": None, "max_steps": None, "sequential": None, "executor": None,
                   "variants": None},
    "budgets": {"max_success_drop": 0.10, "confidence": 0.95, "max_latency_ms": None, "min_control_hz": None},
    "profiling": {"steps": 20, "warmup": 3, "threads": None},
}


class RecipeError(ConfigError):
    """A recipe problem, located: `file:line: key: problem`."""

    def __init__(self, source: str, key: str, problem: str, line: int | None = None):
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")


@dataclass
class Recipe:
    """A validated recipe: the raw dict (defaults filled in) plus the built pass/export configs."""

    name: str
    data: dict
    source: str
    passes: list = field(default_factory=list)
    exports: list = field(default_factory=list)

    @property
    def target(self) -> dict:
        return self.data["target"]

    @property
    def evaluation(self) -> dict:
        return self.data["evaluation"]

    @property
    def budgets(self) -> dict:
        return self.data["budgets"]

    @property
    def calibration(self) -> dict:
        return self.data["calibration"]

    @property
    def profiling(self) -> dict:
        return self.data["profiling"]

    def variant_names(self) -> list[str]:
        """compressed (when there are passes) then one name per export: `<format>-<precision>`."""
        names = ["compressed"] if self.passes else []
        return names + [export_variant_name(c) for c in self.exports]

    @property
    def deploy(self) -> str:
        return self.data["deploy"] or (self.variant_names()[-1] if self.variant_names() else "baseline")

    def to_dict(self) -> dict:
        return copy.deepcopy(self.data)

    def canonical_json(self) -> str:
        return json.dumps(self.data, sort_keys=True, default=str)


def export_variant_name(config: Any) -> str:
    return f"{config.format}-{config.precision}"


# --- loading -------------------------------------------------------------------------------------

def _lines(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """key path -> 1-based line of that key (or list item) in the YAML text."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            p = path + (k.value,)
            out[p] = k.start_mark.line + 1
            _lines(v, p, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out[path + (i,)] = v.start_mark.line + 1
            _lines(v, path + (i,), out)
    return out


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ConfigError(f"{p}: recipe file not found")
        return p
    candidate = PROFILES_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        raise ConfigError(f"unknown recipe {str(name_or_path)!r}; shipped recipes: {', '.join(list_recipes())} "
                          f"(or give a path to a .yaml file)")
    return candidate


def list_recipes() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override (`key.sub=value`, value parsed as YAML) and validate a recipe."""
    path = resolve_recipe_path(name_or_path)
    text = path.read_text()
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise RecipeError(str(path), "", f"malformed YAML: {getattr(e, 'problem', None) or e}",
                          mark.line + 1 if mark else None) from None
    lines = _lines(node) if node is not None else {}
    if not isinstance(raw, dict):
        raise RecipeError(str(path), "", f"a recipe is a mapping of keys, got {type(raw).__name__}", 1)
    for ov in overrides or []:
        apply_override(raw, ov, str(path))
    return validate_recipe(raw, str(path), lines)


def apply_override(raw: dict, override: str, source: str = "--set") -> None:
    """`evaluation.episodes=20`, `passes.0.group_size=32`, `budgets.max_latency_ms=null`."""
    key, sep, value = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {override!r}: expected key=value (e.g. evaluation.episodes=20)")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {override!r}: value is not valid YAML ({getattr(e, 'problem', None) or e})") from None
    parts = key.strip().split(".")
    cur: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(cur, list):
            if not part.isdigit() or int(part) >= len(cur):
                raise ConfigError(f"--set {override!r}: {'.'.join(parts[:i])} has {len(cur)} item(s); "
                                  f"{part!r} is not an index into it")
            part = int(part)  # type: ignore[assignment]
        elif not isinstance(cur, dict):
            raise ConfigError(f"--set {override!r}: {'.'.join(parts[:i])} is not a mapping or a list")
        if last:
            cur[part] = parsed
        else:
            if isinstance(cur, dict) and part not in cur:
                cur[part] = {}
            cur = cur[part]


def _check_executor(ev: dict, fail: Callable) -> None:
    """evaluation.executor, normalised to {kind, address}; ray must be installed to be named."""
    from ..evaluate.executor import EXECUTORS, RAY_INSTALL, ray_available

    ex = ev["executor"]
    if not isinstance(ex, dict) or not set(ex) <= {"kind", "address"} or "kind" not in ex:
        fail(("evaluation", "executor"), f"must be {{kind: local|ray, address: ADDR}} (address: ray only, "
                                         f"optional), got {ex!r}")
    if ex["kind"] not in EXECUTORS:
        fail(("evaluation", "executor", "kind"), f"must be one of {', '.join(EXECUTORS)}, got {ex['kind']!r}")
    addr = ex.get("address")
    if addr is not None and (not isinstance(addr, str) or not addr.strip()):
        fail(("evaluation", "executor", "address"), f"must be a Ray address (host:port, or auto), got {addr!r}")
    if addr is not None and ex["kind"] != "ray":
        fail(("evaluation", "executor", "address"), "is for kind: ray (the local executor joins no cluster)")
    if ex["kind"] == "ray" and not ray_available():
        fail(("evaluation", "executor", "kind"), f"ray is not installed: {RAY_INSTALL}")
    ev["executor"] = {"kind": ex["kind"], "address": addr}


def validate_recipe(raw: dict, source: str = "<recipe>", lines: dict | None = None) -> Recipe:
    from ..export.registry import config_from_dict as export_config
    from ..hardware import load_hardware
    from ..passes.registry import config_from_dict as pass_config

    lines = lines or {}

    def fail(path: tuple, problem: str):
        line = None
        for n in range(len(path), 0, -1):
            if path[:n] in lines:
                line = lines[path[:n]]
                break
        raise RecipeError(source, ".".join(map(str, path)), problem, line)

    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        fail((unknown[0],), f"unknown key; known: {', '.join(sorted(TOP_KEYS))}")
    for req in ("name", "target"):
        if req not in raw:
            raise RecipeError(source, req, "required key is missing", 1)
    data = copy.deepcopy(DEFAULTS)
    for k, v in raw.items():
        if k in SECTION_KEYS:
            if not isinstance(v, dict):
                fail((k,), f"must be a mapping, got {type(v).__name__}")
            bad = sorted(set(v) - SECTION_KEYS[k])
            if bad:
                fail((k, bad[0]), f"unknown key; known: {', '.join(sorted(SECTION_KEYS[k]))}")
            data[k] = {**data.get(k, {}), **v}
        else:
            data[k] = v
    if not isinstance(data["name"], str) or not data["name"].strip():
        fail(("name",), "must be a non-empty string")

    # target: hardware must exist, runtime/precision must run on it
    tgt = data["target"]
    if "hardware" not in tgt:
        fail(("target",), "needs 'hardware' (a name from hardware/: see `vla-compress hardware list`)")
    try:
        hw = load_hardware(tgt["hardware"])
    except ConfigError as e:
        fail(("target", "hardware"), str(e))
    from ..profile.estimate import default_precision, default_runtime, resolve_precision

    if tgt.get("runtime") is not None:  # any spelling a backend accepts, recorded as its canonical name
        try:
            tgt["runtime"] = runtime_name(str(tgt["runtime"]))
        except ConfigError as e:
            fail(("target", "runtime"), str(e))
    try:
        tgt.setdefault("precision", default_precision(hw, tgt.get("runtime")))
        tgt.setdefault("runtime", default_runtime(hw, tgt["precision"]))
        tgt.setdefault("power_mode", None)
        resolve_precision(tgt["precision"], hw, tgt["runtime"])
    except ConfigError as e:
        fail(("target",), str(e))

    # numbers
    ev, bud, cal = data["evaluation"], data["budgets"], data["calibration"]
    for sect, key, lo in (("evaluation", "episodes", 1), ("evaluation", "workers", 1), ("calibration", "samples", 1),
                          ("calibration", "validation_samples", 1), ("calibration", "episodes_per_task", 1),
                          ("profiling", "steps", 1), ("profiling", "warmup", 0)):
        v = data[sect][key]
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            fail((sect, key), f"must be an integer >= {lo}, got {v!r}")
    if ev["tasks"] is not None:
        if not isinstance(ev["tasks"], list) or not all(isinstance(t, str) for t in ev["tasks"]) or not ev["tasks"]:
            fail(("evaluation", "tasks"), "must be a non-empty list of task names (or omitted for the whole suite)")
        from ..evaluate.suites import get_suite

        try:
            get_suite(ev["suite"], ev["tasks"])
        except ConfigError as e:
            fail(("evaluation", "tasks"), str(e))
    seq = ev["sequential"]
    if seq is not None:  # evaluate in rounds with the sequential gate; `episodes` is then the cap per task
        if not isinstance(seq, dict) or set(seq) != {"episodes_per_round"}:
            fail(("evaluation", "sequential"), "must be {episodes_per_round: N} (or null for one fixed-size "
                                               f"evaluation), got {seq!r}")
        r = seq["episodes_per_round"]
        if not isinstance(r, int) or isinstance(r, bool) or not 1 <= r <= ev["episodes"]:
            fail(("evaluation", "sequential", "episodes_per_round"), f"must be an integer in [1, evaluation.episodes"
                                                                     f" = {ev['episodes']}] (the cap), got {r!r}")
    if ev["executor"] is not None:  # who runs the episodes: {kind: local|ray, address: ADDR (ray only)}
        _check_executor(ev, fail)
    if ev["max_steps"] is not None and (not isinstance(ev["max_steps"], int) or ev["max_steps"] < 1):
        fail(("evaluation", "max_steps"), f"must be a positive integer or null (the suite's default), got "
                                          f"{ev['max_steps']!r}")
    if cal["dataset"] is not None and not (Path(str(cal["dataset"])) / "meta" / "info.json").is_file():
        fail(("calibration", "dataset"), f"{cal['dataset']!r} is not a LeRobot dataset directory (no meta/info.json)")
    drop = bud["max_success_drop"]
    if not isinstance(drop, (int, float)) or isinstance(drop, bool) or not 0 <= drop < 1:
        fail(("budgets", "max_success_drop"), f"must be a fraction in [0, 1) (0.1 = ten points), got {drop!r}")
    conf = bud["confidence"]
    if not isinstance(conf, (int, float)) or not 0.5 <= conf < 1:
        fail(("budgets", "confidence"), f"must be in [0.5, 1), got {conf!r}")
    for key in ("max_latency_ms", "min_control_hz"):
        v = bud[key]
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0):
            fail(("budgets", key), f"must be a positive number or null, got {v!r}")

    # passes and exports: their own config classes validate them
    if not isinstance(data["passes"], list):
        fail(("passes",), "must be a list of pass configs")
    if not isinstance(data["exports"], list):
        fail(("exports",), "must be a list of export configs")
    passes, exports = [], []
    for i, p in enumerate(data["passes"]):
        try:
            passes.append(pass_config(p))
        except ConfigError as e:
            fail(("passes", i), str(e))
    for i, x in enumerate(data["exports"]):
        try:
            cfg = export_config(x)
        except ConfigError as e:
            fail(("exports", i), str(e))
        exports.append(cfg)  # its format is a backend's (export/registry.py): that backend's runtime runs it
    names = [export_variant_name(c) for c in exports]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        fail(("exports",), f"two exports with the same format and precision: {dup}")
    recipe = Recipe(data["name"], data, source, passes, exports)
    if data["deploy"] is not None and data["deploy"] not in ["baseline", *recipe.variant_names()]:
        fail(("deploy",), f"{data['deploy']!r} is not a variant of this recipe; variants: "
                          f"{', '.join(recipe.variant_names()) or '(none)'}")
    chosen = data["evaluation"]["variants"]
    if chosen is not None:  # which variants run in closed loop beside the baseline (null: every one)
        known = recipe.variant_names()
        if not isinstance(chosen, list) or not chosen or not all(isinstance(v, str) for v in chosen):
            fail(("evaluation", "variants"), f"must be a non-empty list of variant names (or null for every "
                                             f"variant), got {chosen!r}")
        bad = [v for v in chosen if v not in known]
        if bad:
            fail(("evaluation", "variants"), f"{bad} are not variants of this recipe; variants: {', '.join(known)}")
        if recipe.deploy not in ("baseline", *chosen):
            fail(("evaluation", "variants"), f"must include the deployed variant {recipe.deploy!r} (the gate judges it)")
    return recipe
