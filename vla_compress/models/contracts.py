"""What a family gives the exporters and runtimes (its `export` capability), as plain records.

Every format (ONNX, GGUF, TensorRT) needs the same family-specific things:
- the processor pieces copied into the artifact (`save_processor`) and a way to load them back
  *without building the torch model* (`load_processor`), so a runtime needs only the artifact;
- the torch reference outputs that parity is measured against (`torch_outputs`);
- what a runtime needs to drive the graphs (`head_meta`: head, chunk, bins, token ids);
- the graphs: `onnx_graphs` (wrapper modules around the unchanged model, with their I/O contract)
  and, where llama.cpp can run the backbone, the GGUF parts (`gguf`).
The family's folder builds an `ExportFamily` (models/<family>/export_<family>.py); export/ only
reads it. Torch is imported lazily by the helpers that need it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

KV = ("key", "value")


class ArtifactProcessor:
    """Observation <-> arrays for a runtime: `__call__(observations) -> {name: np.ndarray}` and
    `unnormalize(chunk)` back to robot units."""

    def __call__(self, observations: list[dict]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def unnormalize(self, chunk: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@dataclass
class GraphSpec:
    """One graph to trace: the wrapper module, example inputs and the ONNX I/O contract."""

    name: str
    module: Any  # torch.nn.Module
    args: tuple
    input_names: list[str]
    output_names: list[str]
    dynamic_shapes: dict
    weight_bytes: int = 0
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class GgufFamily:
    """What a family gives the GGUF exporter: its side graphs (what llama.cpp cannot run), its Llama
    and the pieces of its vocabulary."""

    side_graphs: Callable[[Any, dict], list[GraphSpec]]  # (vla, preprocessed example batch) -> specs
    backbone: Callable[[Any], tuple[Any, Any]]  # vla -> (HF LlamaModel, LM head weight or None)
    vocab: Callable[[Any], tuple[Any, int, int, int | None]]  # vla -> (tokenizers.Tokenizer, bos, eos, pad)


@dataclass(frozen=True)
class ExportFamily:
    save_processor: Callable[[Any, Any], list[str]]
    load_processor: Callable[[Any], ArtifactProcessor]
    torch_outputs: Callable[[Any, list[dict]], dict[str, np.ndarray]]
    head_meta: Callable[[Any], dict]
    example_observations: Callable[[Any, int], list[dict]]
    onnx_graphs: Callable[[Any, dict], list[GraphSpec]] | None = None  # (vla, preprocessed example batch)
    gguf: GgufFamily | None = None
    # the artifact's pre/post-processing as data (artifact.json `processor`, PROCESSOR_VERSION): enough
    # for an integrator to feed the graphs with nothing but numpy, a tokenizer and an ONNX runtime
    describe: Callable[[Any], dict] | None = None


PROCESSOR_VERSION = 1


def bounds_normalization(low: Any, high: Any, mask: Any, floor_in: float = 0.0, add_in: float = 0.0,
                         add_out: float = 0.0) -> dict:
    """A bounds normaliser as data: normalise y = clip(2 (x - low) / max(high - low + add_in, floor_in) - 1,
    -1, 1) where mask (else x); un-normalise x = 0.5 (y + 1) (high - low + add_out) + low where mask."""
    return {"kind": "bounds", "low": [float(v) for v in np.asarray(low).ravel()],
            "high": [float(v) for v in np.asarray(high).ravel()],
            "mask": [bool(v) for v in np.asarray(mask).ravel()], "floor_in": float(floor_in),
            "add_in": float(add_in), "add_out": float(add_out),
            "normalize": "clip(2 (x - low) / max(high - low + add_in, floor_in) - 1, -1, 1) where mask, else x",
            "unnormalize": "0.5 (y + 1) (high - low + add_out) + low where mask, else y"}


def weight_bytes(module: Any) -> int:
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def flat_cache(cache: Any) -> list:
    """A transformers Cache as [layer0 keys, layer0 values, layer1 keys, ...] (the present.* outputs)."""
    out = []
    for layer in cache.layers:
        out += [layer.keys, layer.values]
    return out


def randomized_examples(vla: Any, n: int, texts: list[str], state: Callable[[Any], np.ndarray] | None = None,
                        seed: int = 0) -> list[dict]:
    """`n` of the adapter's `dummy_observation`s with random images (every camera), instructions cycling
    through `texts` (different lengths: a batch has left padding) and, where the observation has a
    state, `state(rng)` (default uniform in [-1, 1])."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        obs = vla.dummy_observation(texts[i % len(texts)])
        obs["images"] = {c: rng.integers(0, 256, im.shape, dtype=np.uint8) for c, im in obs["images"].items()}
        if "state" in obs:
            obs["state"] = (state(rng) if state else rng.uniform(-1, 1, obs["state"].shape)).astype(np.float32)
        out.append(obs)
    return out


def lerobot_normalization(normalizer: Any, key: str) -> dict:
    """One feature of a LeRobot (un)normalizer step as data (models/lerobot_layout.FeatureNormalizer):
    MEAN_STD normalise (x - mean) / (std + eps), un-normalise x * std + mean; MIN_MAX / QUANTILES /
    QUANTILE10 over [a, b] = (min, max) / (q01, q99) / (q10, q90), a zero span becoming eps:
    normalise 2 (x - a) / span - 1, un-normalise (y + 1) / 2 span + a; IDENTITY: unchanged."""
    mode = normalizer.mode(key)
    if mode == "IDENTITY":
        return {"kind": "identity"}
    a, b = normalizer._pair(key, mode)
    return {"kind": "mean_std" if mode == "MEAN_STD" else "range", "mode": mode, "a": np.asarray(a).tolist(),
            "b": np.asarray(b).tolist(), "eps": float(normalizer.eps),
            "normalize": "(x - a) / (b + eps)" if mode == "MEAN_STD" else "2 (x - a) / span - 1, span = b - a (eps where 0)",
            "unnormalize": "x * b + a" if mode == "MEAN_STD" else "(y + 1) / 2 span + a"}
