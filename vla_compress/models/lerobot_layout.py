"""LeRobot's policy checkpoint layout, shared by the families that read it natively (SmolVLA, π0/π0.5):
the processor pipeline files and the statistics files they name, LeRobot's (un)normalizer step,
atomic writes of a checkpoint's side files, tiny statistics for fixtures, and the training draws
of a flow-matching head. Not a family (no spec): the families import it.

The normalizer step, written from LeRobot's processor definitions: per feature *type* a mode
(norm_map), per feature *key* statistics in `<pipeline>_step_<i>_<name>.safetensors` as
"<key>.<stat>":
    MEAN_STD   (x - mean) / (std + eps)        inverse x * std + mean
    MIN_MAX    2 (x - min) / (max - min) - 1   inverse (x + 1) / 2 (max - min) + min
    QUANTILES  / QUANTILE10: the same with q01/q99 / q10/q90 (a zero range becomes eps)
A feature without statistics passes through unchanged, as in LeRobot; `normalize_observation_keys`
(when the step has it) limits the observation features normalised to those keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, DatasetError
from ..fileio import atomic_path, read_json

EMPTY_CAMERA = "observation.images.empty_camera_"  # + i: LeRobot's placeholder features for empty_cameras
_STAT_KEYS = {"MEAN_STD": ("mean", "std"), "MIN_MAX": ("min", "max"), "QUANTILES": ("q01", "q99"),
              "QUANTILE10": ("q10", "q90")}


def processor_file_names(path: Path) -> list[str]:
    """The pipeline JSONs and the statistics files they name."""
    names = []
    for pipeline in ("policy_preprocessor.json", "policy_postprocessor.json"):
        if not (path / pipeline).is_file():
            continue
        names.append(pipeline)
        d = read_json(path / pipeline)
        for step in d.get("steps", []) if isinstance(d, dict) else []:
            if isinstance(step, dict) and isinstance(step.get("state_file"), str):
                names.append(Path(step["state_file"]).name)
    return names


def write_files(files: dict[str, bytes], root: Path) -> list[str]:
    """Write name -> bytes under `root` atomically (names may hold one sub-directory, e.g. vlm/)."""
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(root / name) as tmp:
            tmp.write_bytes(data)
    return sorted(files)


# --- the (un)normalizer step --------------------------------------------------------------------
@dataclass
class FeatureNormalizer:
    """One LeRobot (un)normalizer step: `features` key -> type, `norm_map` type -> mode, `stats` key ->
    {stat: tensor}, `eps`."""

    features: dict[str, str]
    norm_map: dict[str, str]
    stats: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    eps: float = 1e-8
    source: Path | None = None
    observation_keys: frozenset[str] | None = None  # normalize_observation_keys; None: every feature

    def kind(self, key: str) -> str:
        """The feature type; LeRobot (un)normalises "action" as ACTION whether or not it is listed."""
        return self.features.get(key) or ("ACTION" if key == "action" else "")

    def _skipped(self, key: str) -> bool:
        """An observation feature left out by normalize_observation_keys (actions never are)."""
        return self.observation_keys is not None and self.kind(key) != "ACTION" and key not in self.observation_keys

    def mode(self, key: str) -> str:
        mode = self.norm_map.get(self.kind(key), "IDENTITY")
        return mode if mode != "IDENTITY" and key in self.stats and not self._skipped(key) else "IDENTITY"

    def describe(self) -> dict[str, str]:
        """Feature -> the mode applied ("IDENTITY (no statistics)" when the file has none for it)."""
        out = {}
        for key, kind in self.features.items():
            wanted = self.norm_map.get(kind, "IDENTITY")
            if wanted != "IDENTITY" and self._skipped(key):
                out[key] = "IDENTITY (not in normalize_observation_keys)"
            else:
                out[key] = wanted if wanted == "IDENTITY" or key in self.stats else f"IDENTITY (no {wanted} statistics)"
        return out

    def _pair(self, key: str, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        names = _STAT_KEYS[mode]
        missing = [n for n in names if n not in self.stats[key]]
        if missing:
            raise CheckpointError(self.source or Path("."), f"{mode} normalisation of {key!r} needs statistics "
                                                            f"{missing}; the file has {sorted(self.stats[key])}")
        return self.stats[key][names[0]], self.stats[key][names[1]]

    def __call__(self, key: str, x: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        mode = self.mode(key)
        if mode == "IDENTITY":
            return x
        a, b = (s.to(x.dtype) for s in self._pair(key, mode))
        try:
            fits = torch.broadcast_shapes(a.shape, b.shape, x.shape) == x.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise CheckpointError(self.source or Path("."), f"{mode} statistics of {key!r} have shape {tuple(a.shape)}, "
                                                            f"which does not fit its values' shape {tuple(x.shape)}")
        if mode == "MEAN_STD":
            return x * b + a if inverse else (x - a) / (b + self.eps)
        span = b - a
        span = torch.where(span == 0, torch.tensor(self.eps, dtype=x.dtype), span)
        if mode == "MIN_MAX":
            return (x + 1) / 2 * span + a if inverse else 2 * (x - a) / span - 1
        return (x + 1.0) * span / 2.0 + a if inverse else 2.0 * (x - a) / span - 1.0


def normalizer_from_step(step: dict, root: Path, pipeline_file: Path) -> FeatureNormalizer:
    from ..fileio import load_safetensors

    cfg = step.get("config") or {}
    feats = cfg.get("features") or {}
    if not isinstance(feats, dict) or not all(isinstance(f, dict) and "type" in f for f in feats.values()):
        raise CheckpointError(pipeline_file, f"{step.get('registry_name')}: config.features must map key -> {{type, shape}}")
    keys = cfg.get("normalize_observation_keys")
    if keys is not None and (not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)):
        raise CheckpointError(pipeline_file, f"{step.get('registry_name')}: config.normalize_observation_keys must "
                                             f"be a list of feature names, got {keys!r}")
    stats: dict[str, dict[str, torch.Tensor]] = {}
    if step.get("state_file"):
        name = step["state_file"]
        if Path(name).name != name:
            raise CheckpointError(pipeline_file, f"state_file {name!r} must be a plain file name")
        for flat, t in load_safetensors(root / name).items():
            key, _, stat = flat.rpartition(".")
            t = t.to(torch.float32)
            if feats.get(key, {}).get("type") == "VISUAL" and t.ndim == 1:
                t = t.reshape(-1, 1, 1)  # per-channel image statistics (LeRobot's _reshape_visual_stats)
            stats.setdefault(key, {})[stat] = t
    return FeatureNormalizer({k: f["type"] for k, f in feats.items()}, dict(cfg.get("norm_map") or {}), stats,
                             float(cfg.get("eps", 1e-8)), root / step["state_file"] if step.get("state_file") else None,
                             None if keys is None else frozenset(keys))


# --- fixtures and training ----------------------------------------------------------------------
def stats_bytes(stats: dict) -> bytes:
    from safetensors.torch import save

    return save({f"{k}.{s}": torch.as_tensor(v, dtype=torch.float32).contiguous()
                 for k, d in stats.items() for s, v in d.items()})


def tiny_stats(policy: dict, seed: int) -> dict:
    """Dataset statistics for the tiny features (mean/std/min/max/q01/q99/q10/q90; images per
    channel, (3, 1, 1) as LeRobot's compute_stats writes them, of [0, 1] pixels). A dataset has
    none for LeRobot's empty-camera placeholders."""
    g = torch.Generator().manual_seed(seed + 17)
    pixels = torch.Generator().manual_seed(seed + 29)  # its own stream: the state/action draws stay put
    out = {}
    for key, f in {**policy["input_features"], **policy["output_features"]}.items():
        if key.startswith(EMPTY_CAMERA):
            continue
        if f["type"] == "VISUAL":  # pixel statistics: mean in [0.3, 0.7], std in [0.1, 0.3]
            torch.randn(3, 1, 1, generator=g), torch.rand(3, 1, 1, generator=g)  # the earlier draws: same action stats
            mean = 0.3 + 0.4 * torch.rand(3, 1, 1, generator=pixels)
            std = 0.1 + 0.2 * torch.rand(3, 1, 1, generator=pixels)
        else:
            mean = 0.5 * torch.randn(tuple(f["shape"]), generator=g)
            std = 0.2 + torch.rand(tuple(f["shape"]), generator=g)
        out[key] = {"mean": mean, "std": std, "min": mean - 2 * std, "max": mean + 2 * std,
                    "q01": mean - 1.8 * std, "q99": mean + 1.8 * std, "q10": mean - 1.2 * std,
                    "q90": mean + 1.3 * std, "count": torch.tensor([100.0])}
    return out


def draw_batch_noise(vla: Any, batch: dict, rng: np.random.RandomState) -> dict:
    """Add the training draws to a batch: "noise" (B, K, max_action_dim) ~ N(0, 1) and "time"
    t ~ Beta(1.5, 1) * 0.999 + 0.001 (LeRobot's sample_time)."""
    import torch

    b = batch["actions"].shape[0]
    shape = vla.noise_shape(b)
    batch["noise"] = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    batch["time"] = torch.from_numpy((rng.beta(1.5, 1.0, size=b) * 0.999 + 0.001).astype(np.float32))
    return batch


def dataset_cameras(vla: Any, available: list[str], root: Path) -> list[str]:
    """The model's cameras the dataset has, in config order (at least one: the processor fills
    missing ones with empty cameras)."""
    wanted = list(vla.processor.camera_names)
    cams = [c for c in wanted if c in available]
    if not cams:
        raise DatasetError(root, f"no dataset camera among those the model reads ({wanted}); "
                                 f"dataset cameras: {available}")
    return cams


def flow_objective_terms(objective: Any, batch: dict, velocity: Any) -> tuple[Any, Any]:
    """Flow-matching distillation terms as LeRobot trains it (x_t = t * noise + (1 - t) * actions):
    (MSE of the student's velocity to the teacher's at the same x_t and t, MSE to the target
    noise - actions or None), over the real action dimensions; `velocity(model, inputs, x_t, t)` is
    the family's velocity field."""
    import torch.nn.functional as F

    act = batch["actions"].float()
    noise, t = batch["noise"].to(act.device), batch["time"].to(act.device)
    a = F.pad(act, (0, noise.shape[-1] - act.shape[-1]))
    x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * a
    dim = act.shape[-1]
    with objective.teacher_pass():
        target = velocity(objective.t, batch["inputs"], x_t, t)[..., :dim]
    with objective.student_pass():
        v = velocity(objective.s, batch["inputs"], x_t, t)[..., :dim].float()
    label = F.mse_loss(v, (noise - a)[..., :dim]) if objective.config.label_weight > 0 else None
    return F.mse_loss(v, target.float()), label


def load_data(vla: Any, dataset: Any, config: Any, loaders: Any) -> Any:
    """Distillation frames of a LeRobot-layout family: observations of the chosen episodes through
    the processor, targets not clipped (its MEAN_STD / QUANTILES action spaces are unbounded)."""
    return loaders.observations(vla, dataset, config, cameras=dataset_cameras, clip=False)
