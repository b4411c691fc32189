"""The pass contract: a frozen config dataclass, a `where:` scope, declared needs, a context.

A pass is `apply(vla, config, context) -> vla` (registered by name in registry.py). Its config is
a frozen dataclass that round-trips to YAML/JSON as

    {"pass": "int4-weight-only", "version": 1, "group_size": 64,
     "where": {"components": ["backbone"], "include": ["backbone.layers.*"], "exclude": []}}

Module names are *canonical*: `<component>.<path inside the component>` (backbone.layers.0.mlp.up_proj),
the same for every family whatever the checkpoint calls its modules, so a recipe written for the
reference family reads the same for OpenVLA. A pattern (fnmatch syntax) selects a module when it
matches the module's name or the name of one of its parents (`action_head` selects every Linear in
the head). A pattern that matches nothing is an error: a typo never silently compresses nothing.

No torch import at module level: recipes are validated without loading torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from fnmatch import fnmatchcase
from typing import Any, ClassVar, Iterable

from ..errors import PassError
from ..models.base import get_module, set_module  # noqa: F401  (re-exported: canonical module names)

CALIBRATION = "calibration"
TEACHER = "teacher"
TRAINING = "training"


@dataclass(frozen=True)
class Where:
    """Which part of the model a pass touches.

    components: component names (vision_encoder, projector, backbone, action_head, ...); empty =
    the pass's default. include / exclude: fnmatch patterns over canonical module names.
    """

    components: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for f in ("components", "include", "exclude"):
            v = getattr(self, f)
            if isinstance(v, str):
                v = (v,)
            if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
                raise PassError(f"where.{f} must be a list of strings, got {v!r}")
            object.__setattr__(self, f, tuple(v))

    @classmethod
    def coerce(cls, value: Any, owner: str = "") -> "Where":
        """Accept a Where, a component name, a list of component names or a dict."""
        if isinstance(value, Where):
            return value
        if value is None:
            return cls()
        if isinstance(value, (str, list, tuple)):
            return cls(components=value)  # type: ignore[arg-type]
        if isinstance(value, dict):
            unknown = set(value) - {"components", "include", "exclude"}
            if unknown:
                raise PassError(f"pass {owner!r}: unknown key(s) {sorted(unknown)} in where "
                                f"(known: components, include, exclude)")
            return cls(**value)
        raise PassError(f"pass {owner!r}: where must be a component name, a list or a mapping, got {value!r}")

    def to_dict(self) -> dict:
        return {"components": list(self.components), "include": list(self.include), "exclude": list(self.exclude)}


def _tupled(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_tupled(x) for x in v)
    return v


@dataclass(frozen=True, kw_only=True)
class PassConfig:
    """Base of every pass config. Subclasses set `name`, `version`, and override `validate()`,
    `needs()` and the component defaults. Every field has a default: a recipe names only what
    it changes."""

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    #: components scoped when `where.components` is empty (empty = every component)
    default_components: ClassVar[tuple[str, ...]] = ()
    #: components the pass can act on at all (empty = any)
    supported_components: ClassVar[tuple[str, ...]] = ()

    where: Where = field(default_factory=Where)

    def __post_init__(self) -> None:
        object.__setattr__(self, "where", Where.coerce(self.where, self.name))
        for f in fields(self):
            if f.name == "where":
                continue
            value = _tupled(getattr(self, f.name))
            object.__setattr__(self, f.name, value)
            self._check_type(f, value)
        bad = [c for c in self.where.components if self.supported_components and c not in self.supported_components]
        if bad:
            raise self.error("where.components", f"{bad} not supported by this pass "
                                                 f"(supported: {', '.join(self.supported_components)})")
        self.validate()

    def _check_type(self, f: dataclasses.Field, value: Any) -> None:
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        if default is None:
            return
        ok = {bool: lambda v: isinstance(v, bool),
              int: lambda v: isinstance(v, int) and not isinstance(v, bool),
              float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              str: lambda v: isinstance(v, str),
              tuple: lambda v: isinstance(v, tuple)}.get(type(default))
        if ok is not None and not ok(value):
            kind = {bool: "true/false", int: "an integer", float: "a number", str: "a string",
                    tuple: "a list"}[type(default)]
            raise self.error(f.name, f"must be {kind}, got {value!r}")
        if isinstance(default, float) and isinstance(value, int):
            object.__setattr__(self, f.name, float(value))

    # --- what subclasses override -----------------------------------------------------------------
    def validate(self) -> None:
        """Range checks; raise `self.error(key, problem)`."""

    def needs(self) -> frozenset[str]:
        """What the runner must put in the context: CALIBRATION, TEACHER, TRAINING."""
        return frozenset()

    # --- helpers ---------------------------------------------------------------------------------
    def error(self, key: str, problem: str) -> PassError:
        return PassError(f"pass {self.name!r}: {key}: {problem}")

    def check_range(self, key: str, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> None:
        v = getattr(self, key)
        if (v < lo or (lo_open and v == lo)) or (v > hi or (hi_open and v == hi)):
            raise self.error(key, f"must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}, got {v}")

    def check_choice(self, key: str, choices: Iterable[Any]) -> None:
        choices = tuple(choices)
        if getattr(self, key) not in choices:
            raise self.error(key, f"must be one of {', '.join(map(repr, choices))}, got {getattr(self, key)!r}")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"pass": self.name, "version": self.version}
        for f in fields(self):
            v = getattr(self, f.name)
            d[f.name] = v.to_dict() if isinstance(v, Where) else _listed(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PassConfig":
        if not isinstance(d, dict):
            raise PassError(f"pass {cls.name!r}: expected a mapping, got {type(d).__name__}")
        d = dict(d)
        name = d.pop("pass", cls.name)
        if name != cls.name:
            raise PassError(f"pass {cls.name!r}: config is for pass {name!r}")
        version = d.pop("version", cls.version)
        if not isinstance(version, int) or version > cls.version or version < 1:
            raise PassError(f"pass {cls.name!r}: version {version!r} is not supported (this vla-compress "
                            f"reads versions 1..{cls.version})")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise PassError(f"pass {cls.name!r}: unknown key(s) {unknown}; known: {', '.join(sorted(known))}")
        return cls(**d)


def _listed(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_listed(x) for x in v]
    return v


# --- scoping ------------------------------------------------------------------------------------------

def matches(pattern: str, name: str) -> bool:
    """A pattern selects a module by its name or by the name of any of its parents."""
    parts = name.split(".")
    return any(fnmatchcase(".".join(parts[:i]), pattern) for i in range(len(parts), 0, -1))


def scoped_components(vla: Any, config: PassConfig) -> dict[str, Any]:
    """The components the config's `where` selects, by name (an unknown name is an error)."""
    comps = vla.components()
    wanted = config.where.components or config.default_components or tuple(comps)
    unknown = [c for c in wanted if c not in comps]
    if unknown and config.where.components:
        raise config.error("where.components", f"unknown component(s) {unknown}; {type(vla).__name__} has "
                                               f"{', '.join(comps)}")
    if config.supported_components:
        wanted = tuple(c for c in wanted if c in config.supported_components)
    return {c: comps[c] for c in wanted if c in comps}


def scoped_modules(vla: Any, config: PassConfig, kinds: tuple[type, ...] | None = None,
                   candidates: dict[str, Any] | None = None) -> dict[str, Any]:
    """Canonical name -> module for the modules in scope (of `kinds`, or the given `candidates`),
    after `where.include` / `where.exclude`. Each pattern must match at least one candidate."""
    if candidates is None:
        candidates = {}
        for comp, mod in scoped_components(vla, config).items():
            for rel, m in mod.named_modules():
                if kinds is None or isinstance(m, kinds):
                    candidates[f"{comp}.{rel}" if rel else comp] = m
    selected = dict(candidates)
    w = config.where
    for key, patterns in (("where.include", w.include), ("where.exclude", w.exclude)):
        for p in patterns:
            if not any(matches(p, n) for n in candidates):
                sample = ", ".join(list(candidates)[:6])
                raise config.error(key, f"pattern {p!r} matches no module in scope (names look like: {sample} ...)")
    if w.include:
        selected = {n: m for n, m in selected.items() if any(matches(p, n) for p in w.include)}
    if w.exclude:
        selected = {n: m for n, m in selected.items() if not any(matches(p, n) for p in w.exclude)}
    return selected


# --- the context -------------------------------------------------------------------------------------

@dataclass
class PassContext:
    """What the runner gives a pass: calibration data, a teacher, training data, a seed; `notes`
    collects what a pass wants recorded in the compression log (its decisions: layers dropped, bits
    per layer...)."""

    calibration: Any = None  # a vla_compress.passes.calibration.Dataset
    teacher: Any = None  # the uncompressed model (distillation, sensitivity references)
    training: Any = None  # a LeRobot dataset (path or LeRobotDataset) whose frames passes train on
    seed: int = 0
    # held-out observations (never calibrated or trained on): the runner measures each pass's
    # action fidelity against the original model on them (runner.fidelity)
    held_out: Any = None
    notes: dict = field(default_factory=dict)

    def require(self, config: PassConfig) -> None:
        for need in sorted(config.needs()):
            if need == CALIBRATION and self.calibration is None:
                raise PassError(f"pass {config.name!r} needs calibration data: build the context with "
                                f"PassContext.from_lerobot(...) or calibration=Dataset(...)")
            if need == TEACHER and self.teacher is None:
                raise PassError(f"pass {config.name!r} needs a teacher model in the context")
            if need == TRAINING and self.training is None:
                raise PassError(f"pass {config.name!r} needs training data: build the context with "
                                f"PassContext.from_lerobot(...) or training=<LeRobot dataset directory>")

    @classmethod
    def from_lerobot(cls, vla: Any, dataset: Any, num_samples: int = 32, seed: int = 0, teacher: Any = None,
                     batch_size: int = 1) -> "PassContext":
        """Calibration observations sampled (seeded) from a LeRobot dataset, preprocessed by `vla`;
        the same dataset is the training data of passes that train (distill)."""
        from .calibration import calibration_dataset, observations_from_lerobot

        obs = observations_from_lerobot(dataset, num_samples, seed)
        return cls(calibration=calibration_dataset(vla, obs, batch_size), teacher=teacher, training=dataset,
                   seed=seed)
