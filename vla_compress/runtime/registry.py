"""Runtime registry: PolicySpec.runtime -> a function that builds the Policy."""

from __future__ import annotations

from typing import Callable

from ..errors import ConfigError

_BUILDERS: dict[str, Callable] = {}


def register_runtime(name: str):
    def deco(fn: Callable) -> Callable:
        _BUILDERS[name] = fn
        return fn

    return deco


def build_policy(spec):
    if spec.runtime not in _BUILDERS:
        raise ConfigError(f"unknown runtime {spec.runtime!r}; known: {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[spec.runtime](spec)


@register_runtime("torch")
def _torch(spec):
    from ..models import load_vla
    from .policy import TorchPolicy

    return TorchPolicy(load_vla(spec.path, allow_pickle=spec.options.get("allow_pickle", False)),
                       execute_steps=spec.options.get("execute_steps"), name=spec.options.get("name", "torch"))


@register_runtime("onnx")
def _onnx(spec):
    from .onnxruntime_policy import OnnxRuntimePolicy

    o = spec.options
    return OnnxRuntimePolicy(spec.path, threads=o.get("threads", 1), providers=o.get("providers"),
                             execute_steps=o.get("execute_steps"), allow_failed=o.get("allow_failed", False),
                             verify=o.get("verify", False), name=o.get("name", "onnx"))


@register_runtime("llama.cpp")
def _llamacpp(spec):
    from .llamacpp_policy import LlamaCppPolicy

    o = spec.options
    return LlamaCppPolicy(spec.path, threads=o.get("threads", 1), kv_cache=o.get("kv_cache"),
                          gpu_layers=o.get("gpu_layers", 0), flash_attn=o.get("flash_attn"),
                          execute_steps=o.get("execute_steps"),
                          allow_failed=o.get("allow_failed", False), verify=o.get("verify", False),
                          name=o.get("name", "llama.cpp"))


@register_runtime("tensorrt")
def _tensorrt(spec):
    from .tensorrt_policy import TensorRTPolicy

    o = spec.options
    return TensorRTPolicy(spec.path, device=o.get("device", 0), execute_steps=o.get("execute_steps"),
                          allow_failed=o.get("allow_failed", False), verify=o.get("verify", False),
                          name=o.get("name", "tensorrt"))
