"""Backends: one record per runtime (and the export format its artifacts have), one registry.

A backend is everything the rest of the package needs to know about a format/runtime pair:
the name recipes, hardware profiles, `PolicySpec` and manifests use (`onnxruntime`), the other
spellings accepted for it (`onnx`), its export format, where its Exporter and its Policy factory
live (dotted paths, imported only when used: this module imports neither torch nor onnx), the
precisions it takes (each with the roofline estimator's name for it) and the modules that must
import for it to run here. The CLI, recipes, the pipeline, the runtime and export registries and
the profiler all read this table, so a new backend (say OpenVINO) is one folder with its exporter
and policy plus one `register_backend` line below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Mapping

from .errors import ConfigError


@dataclass(frozen=True, eq=False)
class Backend:
    """One runtime and the artifacts it runs (see the module docstring)."""

    name: str  # canonical: recipes (`target.runtime`), hardware/*.yaml `runtimes:`, PolicySpec, manifests
    policy: str  # "module:attr" of a callable PolicySpec -> Policy
    precisions: Mapping[str, str]  # precision it takes -> the roofline estimator's precision (profile/estimate.py)
    format: str | None = None  # export format of its artifacts (artifact.json `format`); None: runs checkpoints
    exporter: str | None = None  # "module:attr" of its Exporter class (None when it has no export format)
    aliases: tuple[str, ...] = ()  # other accepted spellings, normalised to `name`
    requires: tuple[str, ...] = ()  # modules whose import failure makes it unavailable here
    install: str = ""  # how to get them, for the "not available" message
    # export options a search passes with every precision for this runtime: the fastest form measured
    # for it that stays within parity (ONNX Runtime: graphs fused for its kernels, docs/results.md)
    export_options: Mapping[str, Any] = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        object.__setattr__(self, "export_options", dict(self.export_options or {}))

    @property
    def spellings(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    @property
    def short(self) -> str:
        """The shortest spelling (what error messages list first; `onnx` for ONNX Runtime)."""
        return min(self.spellings, key=len)

    def exporter_cls(self) -> Any:
        """The Exporter class (imported now)."""
        if self.exporter is None:
            raise ConfigError(f"the {self.name} runtime runs checkpoints: it has no exporter")
        return _load(self.exporter)

    def policy_factory(self) -> Any:
        """The callable that builds this runtime's Policy from a PolicySpec (imported now)."""
        return _load(self.policy)

    def missing(self) -> str | None:
        """Why this runtime cannot run on this machine (a required module does not import), or None."""
        for module in self.requires:
            try:
                importlib.import_module(module)
            except Exception as e:  # noqa: BLE001  (an ImportError or a broken native library)
                hint = f"; {self.install}" if self.install else ""
                return f"the {self.name} runtime is not available on this machine ({module}: {e}){hint}"
        return None

    def roofline_precision(self, precision: str | None) -> str | None:
        """The estimator's name for one of this backend's precisions (None when it has none)."""
        return self.precisions.get(precision) if precision is not None else None


_BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Add a backend; its spellings and export format must not collide with another's."""
    taken = {s: b.name for b in _BACKENDS.values() for s in b.spellings}
    for s in backend.spellings:
        if taken.get(s, backend.name) != backend.name:
            raise ConfigError(f"backend {backend.name!r}: the name {s!r} is already {taken[s]!r}'s")
    if backend.format is not None and any(b.format == backend.format and b.name != backend.name
                                          for b in _BACKENDS.values()):
        raise ConfigError(f"backend {backend.name!r}: export format {backend.format!r} is already registered")
    if (backend.format is None) != (backend.exporter is None):
        raise ConfigError(f"backend {backend.name!r}: give both an export format and an exporter, or neither")
    _BACKENDS[backend.name] = backend
    return backend


def backends() -> list[Backend]:
    """Every backend, in registration order."""
    return list(_BACKENDS.values())


def runtime_names() -> list[str]:
    """Canonical runtime names, in registration order."""
    return list(_BACKENDS)


def export_formats() -> list[str]:
    """Export formats, sorted."""
    return sorted(b.format for b in _BACKENDS.values() if b.format)


def known_runtimes() -> str:
    """`llama.cpp, onnx, tensorrt, torch (onnx is also written onnxruntime)`: for error messages and help."""
    bs = sorted(_BACKENDS.values(), key=lambda b: b.short)
    also = "; ".join(f"{b.short} is also written {', '.join(s for s in b.spellings if s != b.short)}"
                     for b in bs if len(b.spellings) > 1)
    return ", ".join(b.short for b in bs) + (f" ({also})" if also else "")


def get_backend(runtime: str) -> Backend:
    """The backend of a runtime name or alias (ConfigError naming the known ones otherwise)."""
    for b in _BACKENDS.values():
        if runtime in b.spellings:
            return b
    raise ConfigError(f"unknown runtime {runtime!r}; known: {known_runtimes()}")


def runtime_name(runtime: str) -> str:
    """The canonical name of a runtime name or alias (`onnx` -> `onnxruntime`)."""
    return get_backend(runtime).name


def canonical_or_same(runtime: str) -> str:
    """`runtime_name(runtime)` when it names a backend, else `runtime` unchanged (old or foreign
    manifests, hardware files naming a runtime this version does not know)."""
    try:
        return runtime_name(runtime)
    except ConfigError:
        return runtime


def format_backend(fmt: str) -> Backend:
    """The backend whose artifacts have export format `fmt` (a runtime name or alias also works:
    `-f onnxruntime` is the onnx format)."""
    for b in _BACKENDS.values():
        if b.format is not None and fmt in (b.format, *b.spellings):
            return b
    raise ConfigError(f"unknown export format {fmt!r}; known: {', '.join(export_formats())}")


def export_format(fmt: str) -> str:
    """The canonical export format of a format name or of its runtime's name/alias."""
    return format_backend(fmt).format  # type: ignore[return-value]


def _load(path: str) -> Any:
    module, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


# --- the backends -----------------------------------------------------------------------------------
# One line each. Precisions are documented in each format's config.py; the roofline names are
# profile/estimate.py's (int4-weight is W4A16; llama.cpp's q8_0 runs q8 x q8 dot products and its
# 4-bit types store int4). Registration order is the order hardware profiles list runtimes in.
register_backend(Backend(
    "torch", policy="vla_compress.runtime.policy:TorchPolicy.from_spec",
    precisions={"fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}))
register_backend(Backend(
    "onnxruntime", aliases=("onnx",), format="onnx", exporter="vla_compress.export.onnx.exporter:OnnxExporter",
    policy="vla_compress.runtime.onnxruntime_policy:OnnxRuntimePolicy.from_spec",
    precisions={"fp32": "fp32", "int8-dynamic": "int8", "int8-static": "int8", "int4-weight": "w4a16"},
    requires=("onnxruntime",), install="pip install onnxruntime", export_options={"optimize": "ort"}))
register_backend(Backend(
    "tensorrt", format="tensorrt", exporter="vla_compress.export.tensorrt.exporter:TensorRTExporter",
    policy="vla_compress.runtime.tensorrt_policy:TensorRTPolicy.from_spec",
    precisions={"fp32": "fp32", "fp16": "fp16", "int8": "int8", "fp8": "fp8"},
    requires=("tensorrt",), install="TensorRT needs a CUDA GPU: pip install tensorrt (on Jetson: JetPack's)"))
register_backend(Backend(
    "llama.cpp", format="gguf", exporter="vla_compress.export.gguf.exporter:GgufExporter",
    policy="vla_compress.runtime.llamacpp_policy:LlamaCppPolicy.from_spec",
    precisions={"f32": "fp32", "f16": "fp16", "q8_0": "int8", "q4_k_m": "int4", "q4_0": "int4"},
    requires=("llama_cpp",), install="./install.sh builds llama-cpp-python"))
register_backend(Backend(
    "openvino", aliases=("ov",), format="openvino", exporter="vla_compress.export.openvino.exporter:OpenVinoExporter",
    policy="vla_compress.runtime.openvino_policy:OpenVinoPolicy.from_spec",
    precisions={"fp32": "fp32", "int8": "int8", "int4-weight": "w4a16", "int8-weight": "w8a16"},
    requires=("openvino", "nncf"), install="pip install 'vla-compress[openvino]'"))
