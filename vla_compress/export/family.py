"""What exporters need from a model family, beyond the adapter contract, behind one registry.

Every format (ONNX, GGUF, TensorRT) needs the same three family-specific things:
- the processor pieces copied into the artifact (`save_processor`) and a way to load them back
  *without building the torch model* (`load_processor`), so a runtime needs only the artifact;
- the torch reference outputs that parity is measured against (`torch_outputs`);
- what a runtime needs to drive the graphs (`head_meta`: head, chunk, bins, token ids).
Only the graph wrappers are format-specific (see export/onnx/graphs.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ConfigError


class ArtifactProcessor:
    """Observation <-> arrays for a runtime: `__call__(observations) -> {name: np.ndarray}` and
    `unnormalize(chunk)` back to robot units."""

    def __call__(self, observations: list[dict]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def unnormalize(self, chunk: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True)
class ExportFamily:
    save_processor: Callable[[Any, Path], list[str]]
    load_processor: Callable[[Path], ArtifactProcessor]
    torch_outputs: Callable[[Any, list[dict]], dict[str, np.ndarray]]
    head_meta: Callable[[Any], dict]
    example_observations: Callable[[Any, int], list[dict]]


_FAMILIES: dict[str, Callable[[], ExportFamily]] = {}


def register_export_family(name: str):
    def deco(fn: Callable[[], ExportFamily]) -> Callable[[], ExportFamily]:
        _FAMILIES[name] = fn
        return fn

    return deco


def get_export_family(name: str) -> ExportFamily:
    if name not in _FAMILIES:
        raise ConfigError(f"no exporter support for model family {name!r}; supported: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[name]()


# --- the reference family ---------------------------------------------------------------------
class ReferenceArtifactProcessor(ArtifactProcessor):
    """The reference family's processor rebuilt from config.json, tokenizer.json and
    dataset_statistics.json alone (torch is imported for resizing, no model is built)."""

    def __init__(self, root: Path):
        from ..models.reference.adapter import read_processor_files
        from ..models.reference.processor_reference import ReferenceProcessor

        self.cfg, tokenizer, self.action_norm, state_norm, _ = read_processor_files(root)
        self.processor = ReferenceProcessor(self.cfg, tokenizer, state_norm)

    def __call__(self, observations: list[dict]) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self.processor(observations).items()}

    def unnormalize(self, chunk: np.ndarray) -> np.ndarray:
        return self.action_norm.unnormalize(chunk)


def _reference_save_processor(vla: Any, root: Path) -> list[str]:
    # Written from the in-memory model, not copied from its source checkpoint: a compression
    # pass may have changed the config (e.g. visual_token_budget) since the checkpoint was read.
    from ..models.reference.adapter import write_processor_files

    return write_processor_files(vla, root)


def _reference_torch_outputs(vla: Any, observations: list[dict]) -> dict[str, np.ndarray]:
    import torch

    x = vla.preprocess(observations)
    args = (x["pixel_values"], x["text_ids"], x["text_mask"], x["state"])
    with torch.inference_mode():
        if vla.cfg.head == "regression":
            return {"actions": vla.forward_regression(*args).float().numpy()}
        bins = vla.generate_action_tokens(*args)
        start = vla.cfg.backbone.vocab_size - vla.cfg.n_bins
        logits = vla.forward_tokens_teacher(*args, action_ids=bins + start)[..., -vla.cfg.n_bins:]
        return {"actions": vla.bins_to_actions(bins).float().numpy(), "bins": bins.numpy(),
                "bin_logits": logits.float().numpy()}


def _reference_head_meta(vla: Any) -> dict:
    c = vla.cfg
    meta = {"family": vla.family, "head": c.head, "chunk_size": c.chunk_size, "action_dim": c.action_dim,
            "num_layers": c.backbone.num_layers}
    if c.head == "tokens":
        meta.update(n_bins=c.n_bins, action_tokens=c.action_tokens, action_token_start=c.backbone.vocab_size - c.n_bins)
    return meta


def _reference_examples(vla: Any, n: int = 2) -> list[dict]:
    """Synthetic observations (for tracing when none are given): random images, two different
    instructions so a batch has left padding, in-range state."""
    rng = np.random.default_rng(0)
    cfg = vla.cfg
    size = cfg.vision.image_size
    texts = ["pick up the object and place it at the goal", "open the door"]
    return [{"images": {cam: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for cam in cfg.vision.cameras},
             "state": rng.uniform(-1, 1, cfg.proprio_dim).astype(np.float32), "instruction": texts[i % 2]}
            for i in range(n)]


@register_export_family("reference")
def _reference() -> ExportFamily:
    return ExportFamily(_reference_save_processor, ReferenceArtifactProcessor, _reference_torch_outputs,
                        _reference_head_meta, _reference_examples)


@register_export_family("smolvla")
def _smolvla() -> ExportFamily:
    # importing the family's export module also registers its ONNX graph ("policy_step")
    from ..models.smolvla.export_smolvla import smolvla_export_family

    return smolvla_export_family()


def _openvla() -> ExportFamily:
    # importing the family's export module also registers its ONNX graphs (prefill/decode, policy_step)
    from ..models.openvla.export_openvla import openvla_export_family

    return openvla_export_family()


register_export_family("openvla")(_openvla)
register_export_family("openvla-oft")(_openvla)


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


def weights_fingerprint(module: Any) -> str:
    """sha256 over every state-dict tensor's name, dtype, shape and bytes: identifies the exact
    weights an artifact came from (an export reusing a base, a validation against a model)."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def bins_to_actions(bins: np.ndarray, meta: dict) -> np.ndarray:
    """Bin index -> bin centre in [-1, 1], (B, K*A) -> (B, K, A); the same map as the torch model.
    `token_map: "openvla"`: the "bins" are vocabulary ids, de-tokenised as OpenVLA does."""
    if meta.get("token_map") == "openvla":
        from ..models.openvla.export_openvla import openvla_tokens_to_actions

        return openvla_tokens_to_actions(bins, meta)
    centers = -1.0 + (bins.astype(np.float32) + 0.5) * np.float32(2.0 / meta["n_bins"])
    return centers.reshape(bins.shape[0], meta["chunk_size"], meta["action_dim"]).astype(np.float32)
