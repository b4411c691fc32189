"""The ONNX side graphs of a GGUF artifact: what llama.cpp cannot run.

llama.cpp runs the family's Llama backbone from the GGUF; everything else in a policy step (the
vision encoder, projector and embeddings: "embed", and a regression head: "action_head") is ONNX,
declared by the family (its ExportFamily.gguf, models/contracts.py GgufFamily) and traced with
the ONNX exporter's machinery (GraphSpec, dynamic shapes, checks).
"""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError
from ...models.contracts import GgufFamily
from ..family import get_export_family


def get_gguf_family(name: str) -> GgufFamily:
    """The GGUF parts of family `name`; a clear error when the family has none (or refuses GGUF)."""
    from ...models.registry import get_family

    family = get_export_family(name, "GGUF export")
    if family.gguf is None:
        why = get_family(name).refused.get("gguf", "no vision/head side graphs for it")
        raise ConfigError(f"GGUF export does not support model family {name!r} ({why})")
    return family.gguf


def vocab_of(vla: Any) -> Any:
    """The family's vocabulary as the GGUF writer's GgufVocab."""
    from .writer import vocab_from_tokenizer

    return vocab_from_tokenizer(*get_gguf_family(vla.family).vocab(vla))
