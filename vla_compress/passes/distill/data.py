"""Frames to distil on as the BC trainer's tensors (train/bc.py: its loading, split and batches),
with the student's own normalisation (a distilled model keeps its checkpoint's statistics); and
the episode choice and held-out frames every loader shares.

The tensors loader (a family's load_data hook picks it as `loaders.frames`) needs what the BC
trainer's model has: a processor with images() and text(), `action_norm` and `state_norm`
(models.base.Normalizer); the batch inputs are {"pixel_values", "text_ids", "text_mask", "state"}.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DatasetError, PassError
from .config import DistillConfig

log = logging.getLogger(__name__)


@dataclass
class DistillData:
    frames: Any  # train.bc.FrameData
    train_idx: np.ndarray  # frame indices of the training episodes
    val_idx: np.ndarray  # frame indices of the held-out episodes
    norm_actions: np.ndarray  # (N, A) actions normalised with the student's statistics
    episodes: dict  # {"train": n, "val": n}

    def batch(self, vla: Any, idx: np.ndarray, shift_px: int = 0, rng: np.random.RandomState | None = None,
              device: Any = None) -> list:
        """[images, text_ids, text_mask, state, action chunk] for frames `idx` (bc.frame_batch)."""
        from ...train.bc import frame_batch

        return frame_batch(vla.processor, self.frames, self.norm_actions, vla.state_norm, idx,
                           vla.action_spec.chunk_size, shift_px, device, rng)

    def batch_dict(self, vla: Any, idx: np.ndarray, shift_px: int = 0, rng: np.random.RandomState | None = None,
                   device: Any = None) -> dict:
        """{"inputs": model inputs, "actions": action chunk} (the form objectives.py reads)."""
        imgs, ids, mask, state, act = self.batch(vla, idx, shift_px, rng, device)
        return {"inputs": {"pixel_values": imgs, "text_ids": ids, "text_mask": mask, "state": state}, "actions": act}

    def eval_indices(self, n: int) -> np.ndarray:
        return spread(self.val_idx, n)


def spread(val_idx: np.ndarray, n: int) -> np.ndarray:
    """Up to `n` held-out frames spread evenly over the held-out episodes."""
    if n == 0 or len(val_idx) == 0:
        return val_idx[:0]
    return val_idx[np.unique(np.linspace(0, len(val_idx) - 1, min(n, len(val_idx))).astype(int))]


def choose_episodes(dataset: Any, config: DistillConfig) -> tuple[Any, np.ndarray, np.ndarray]:
    """(the LeRobotDataset, training episode indices, held-out ones): all training episodes or
    `train_episodes` of them (seeded); held out, the last `val_episodes_per_task` of each task."""
    from ...data.lerobot import LeRobotDataset
    from ...train.bc import split_episodes

    ds = dataset if isinstance(dataset, LeRobotDataset) else LeRobotDataset(Path(dataset))
    meta = [{"index": e["episode_index"], "task": e["tasks"][0]} for e in ds.episodes]
    train_eps, val_eps = split_episodes(meta, config.val_episodes_per_task)
    if len(train_eps) == 0:
        raise PassError(f"pass {config.name!r}: {ds.root} has {len(meta)} episodes and all of them are held out "
                        f"(val_episodes_per_task={config.val_episodes_per_task}); lower it or add episodes")
    if config.train_episodes and config.train_episodes < len(train_eps):
        rng = np.random.default_rng(config.seed)
        train_eps = np.sort(rng.choice(train_eps, config.train_episodes, replace=False))
    return ds, train_eps, val_eps


def load_distill_data(vla: Any, dataset: Any, config: DistillConfig) -> DistillData:
    """Decode the training episodes and the held-out ones (choose_episodes), as the BC trainer."""
    from ...train.bc import load_frames, split_episodes

    ds, train_eps, val_eps = choose_episodes(dataset, config)
    chosen = sorted(int(i) for i in np.concatenate([train_eps, val_eps]))
    cameras = vla.cameras
    for camera in cameras:
        if f"observation.images.{camera}" not in ds.camera_keys and camera not in ds.camera_keys:
            raise DatasetError(ds.root, f"no images from camera {camera!r}, which the model reads "
                                        f"(dataset cameras: {ds.camera_keys})")
    frames, loaded = load_frames(ds.root, cameras, log.info, episodes=chosen)
    # the held-out episodes are the last ones of each task in the full dataset, hence in the subset too
    train_local, val_local = split_episodes(loaded, config.val_episodes_per_task)
    if len(train_local) != len(train_eps) or len(val_local) != len(val_eps):
        raise DatasetError(ds.root, f"loaded {len(loaded)} episodes, expected {len(chosen)}")
    action_dim, state_dim = vla.action_spec.dim, vla.state_dim
    if frames.actions.shape[1] != action_dim or frames.states.shape[1] != state_dim:
        raise DatasetError(ds.root, f"actions/states have {frames.actions.shape[1]}/{frames.states.shape[1]} "
                                    f"dimensions; the model expects {action_dim}/{state_dim}")
    return DistillData(frames=frames,
                       train_idx=np.nonzero(np.isin(frames.episode_of, train_local))[0],
                       val_idx=np.nonzero(np.isin(frames.episode_of, val_local))[0],
                       norm_actions=vla.action_norm.normalize(frames.actions),
                       episodes={"train": int(len(train_local)), "val": int(len(val_local))})
