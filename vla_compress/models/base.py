"""The VLA adapter contract every model family implements.

A family (reference, OpenVLA, OpenVLA-OFT, SmolVLA, ...) maps its native checkpoint onto the
same four named components — `vision_encoder`, `projector`, `backbone`, `action_head` (plus
extras such as `proprio_projector`) — and the same observation/action interface, so passes,
exporters, the profiler and the evaluator never special-case a family.

Observation (one robot step): {"images": {camera: HxWx3 uint8}, "instruction": str,
"state": float32[S] (optional proprio)}. An action chunk is (K, A) in the robot's units.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

HeadType = Literal["tokens", "regression", "flow"]


@dataclass(frozen=True)
class ActionSpec:
    """What a policy step produces.

    head: "tokens" (autoregressive discrete action tokens, OpenVLA), "regression" (parallel
    decoded chunk with an L1 head, OpenVLA-OFT) or "flow" (flow-matching expert, SmolVLA/pi0).
    """

    dim: int
    chunk_size: int
    head: HeadType
    n_bins: int = 0  # tokens head: bins per dimension
    tokens_per_step: int = 0  # tokens head: decode steps per policy step (chunk_size * dim)
    integration_steps: int = 0  # flow head: Euler steps

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TokenCounts:
    """Sequence the backbone processes in one policy step."""

    visual: int
    text: int  # prompt tokens incl. BOS (typical instruction)
    proprio: int
    action: int  # action queries (parallel) or decoded tokens (autoregressive)

    @property
    def prefill(self) -> int:
        return self.visual + self.text + self.proprio

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prefill"] = self.prefill
        return d


@dataclass
class Normalizer:
    """Affine map between robot units and the model's [-1, 1] space, per dimension.

    OpenVLA's BOUNDS_Q99: x_norm = 2 (x - q01) / (q99 - q01) - 1, clipped, with a mask of the
    dimensions that are normalised (the gripper often is not).
    """

    low: np.ndarray
    high: np.ndarray
    mask: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.low = np.asarray(self.low, dtype=np.float32)
        self.high = np.asarray(self.high, dtype=np.float32)
        self.mask = np.ones_like(self.low, dtype=bool) if self.mask is None else np.asarray(self.mask, dtype=bool)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        span = np.maximum(self.high - self.low, 1e-8)
        y = np.clip(2.0 * (x - self.low) / span - 1.0, -1.0, 1.0)
        return np.where(self.mask, y, x).astype(np.float32)

    def unnormalize(self, y: np.ndarray) -> np.ndarray:
        x = 0.5 * (np.asarray(y) + 1.0) * (self.high - self.low) + self.low
        return np.where(self.mask, x, y).astype(np.float32)

    def to_dict(self) -> dict:
        return {"q01": self.low.tolist(), "q99": self.high.tolist(), "mask": self.mask.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Normalizer":
        return cls(np.asarray(d["q01"]), np.asarray(d["q99"]), np.asarray(d.get("mask", [True] * len(d["q01"]))))


class VLAAdapter:
    """Mixin protocol for a VLA `torch.nn.Module`.

    Subclasses set `family`, own the named components as attributes, and implement the
    methods below. Everything downstream (passes, exporters, evaluator) uses only these.
    """

    family: ClassVar[str] = ""
    COMPONENTS: ClassVar[tuple[str, ...]] = ("vision_encoder", "projector", "backbone", "action_head")
    # Every adapter also has `visual_keep`: a LongTensor of the visual-token indices the model keeps
    # (empty: all of them), set by visual-token-prune and saved in token_reduction.json, and
    # `compression_log`: one entry per pass applied (saved in compression.json).

    @property
    def preset(self) -> str | None:
        """The named shape the model was built from (a family preset), if it records one."""
        return getattr(getattr(self, "cfg", None), "preset", None)

    @property
    def model_name(self) -> str:
        """A short name of the model's shape (its preset, else "custom"), for artifact metadata."""
        return f"{self.family}-{self.preset or 'custom'}"

    # --- identity ----------------------------------------------------------------------
    @property
    def action_spec(self) -> ActionSpec:
        raise NotImplementedError

    def token_counts(self, instruction: str | None = None) -> TokenCounts:
        raise NotImplementedError

    def components(self) -> dict[str, Any]:
        """Named components (the scoping unit of passes); extras follow the four core ones."""
        return {n: getattr(self, n) for n in self.COMPONENTS if getattr(self, n, None) is not None}

    # --- I/O ----------------------------------------------------------------------------
    def dummy_observation(self, instruction: str | None = None) -> dict:
        """A valid all-zero observation with every camera the model reads at its size, and a state
        when the model reads one (FLOP counting, example inputs, smoke tests)."""
        raise NotImplementedError

    @property
    def cameras(self) -> tuple[str, ...]:
        """The camera names an observation must hold, in the model's order."""
        return tuple(self.dummy_observation()["images"])

    @property
    def state_dim(self) -> int:
        """Size of the proprio state an observation must hold (0: the model reads none)."""
        obs = self.dummy_observation()
        return int(np.asarray(obs["state"]).shape[0]) if "state" in obs else 0

    def preprocess(self, observations: list[dict]) -> dict:
        """Batch raw observations into model inputs (tensors)."""
        raise NotImplementedError

    def predict_chunk(self, inputs: dict) -> Any:
        """Normalised action chunk (B, K, A) from preprocessed inputs."""
        raise NotImplementedError

    def unnormalize_actions(self, chunk: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def act(self, observation: dict) -> np.ndarray:
        """One policy step: observation -> action chunk (K, A) in robot units."""
        import torch

        with torch.inference_mode():
            chunk = self.predict_chunk(self.preprocess([observation]))[0]
        return self.unnormalize_actions(chunk.float().cpu().numpy())

    # --- persistence ----------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> Path:
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> "VLAAdapter":
        raise NotImplementedError

    @classmethod
    def tiny(cls, seed: int = 0, **kwargs: Any) -> "VLAAdapter":
        """A tiny random copy of this family for tests."""
        raise NotImplementedError


# --- canonical module names ("backbone.layers.0.mlp.up_proj": component, then its path) ----------
def get_module(vla: Any, name: str) -> Any:
    comp, _, rel = name.partition(".")
    mod = vla.components()[comp]
    for part in rel.split(".") if rel else ():
        mod = getattr(mod, part)
    return mod


def set_module(vla: Any, name: str, new: Any) -> None:
    """Replace the module at a canonical name (a whole component goes through the adapter, which
    knows where the checkpoint keeps it)."""
    comp, _, rel = name.partition(".")
    if not rel:
        setattr(vla, comp, new)
        return
    parent_name, _, leaf = rel.rpartition(".")
    parent = get_module(vla, f"{comp}.{parent_name}" if parent_name else comp)
    setattr(parent, leaf, new)
