"""Frames to distil on as observations through the model's own processor (`loaders.observations`).

A batch here is a list of observations (the cameras the family's hook chooses, the raw state when
the model reads one, the episode's task) preprocessed by the student, plus the target: the next
`chunk` actions normalised as the model predicts them. The normaliser is the inverse of the
model's own `unnormalize_actions`, which is affine per dimension for every family (bounds such as
q01/q99, mean/std or min/max): probing it at -1 and +1 gives offset and scale, so no family's
statistics format is read here. Whether targets are clipped to [-1, 1] is the family's call
(a bounds normalisation clips in training; a mean/std space is unbounded).

Held-out split: the last `val_episodes_per_task` episodes of every task, as the BC trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...errors import DatasetError, PassError
from .config import DistillConfig


@dataclass
class ObservationData:
    """Decoded frames (every camera the model reads) and the train / held-out split."""

    images: dict[str, np.ndarray]  # camera -> (N, H, W, 3) uint8
    states: np.ndarray  # (N, S) raw
    norm_actions: np.ndarray  # (N, A) normalised as the model predicts
    instructions: list[str]
    episode_end: np.ndarray  # (N,) one past the frame's episode end
    train_idx: np.ndarray
    val_idx: np.ndarray
    episodes: dict
    chunk: int
    uses_state: bool

    def eval_indices(self, n: int) -> np.ndarray:
        from .data import spread

        return spread(self.val_idx, n)

    def observations(self, idx: np.ndarray, shift_px: int = 0, rng: np.random.RandomState | None = None) -> list:
        """Adapter observations of frames `idx`, images randomly shifted by up to `shift_px` pixels
        (replicate padding, then a random crop back to size; DrQ's augmentation)."""
        out = []
        for i in idx:
            images = {}
            for cam, frames in self.images.items():
                img = frames[i]
                if shift_px:
                    p, (h, w) = shift_px, img.shape[:2]
                    padded = np.pad(img, ((p, p), (p, p), (0, 0)), mode="edge")
                    oy, ox = (np.random if rng is None else rng).randint(0, 2 * p + 1, size=2)
                    img = padded[oy:oy + h, ox:ox + w]
                images[cam] = img
            obs = {"images": images, "instruction": self.instructions[i]}
            if self.uses_state:
                obs["state"] = self.states[i]
            out.append(obs)
        return out

    def batch_dict(self, vla: Any, idx: np.ndarray, shift_px: int = 0, rng: np.random.RandomState | None = None,
                   device: Any = None) -> dict:
        """{"inputs": the student's preprocessed inputs, "actions": (B, chunk, A) normalised targets}."""
        import torch

        offs = np.minimum(np.arange(self.chunk)[None, :] + idx[:, None], self.episode_end[idx][:, None] - 1)
        inputs = vla.preprocess(self.observations(idx, shift_px, rng))
        acts = torch.from_numpy(self.norm_actions[offs])
        return {"inputs": {k: v.to(device) if device is not None else v for k, v in inputs.items()},
                "actions": acts.to(device) if device is not None else acts}


def action_normalizer(vla: Any, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(offset, scale) with normalised = (raw - offset) / scale, from the model's unnormaliser."""
    probe = np.stack([-np.ones(dim, np.float32), np.ones(dim, np.float32)])[None]  # (1, 2, A)
    lo, hi = np.asarray(vla.unnormalize_actions(probe), np.float64)[0]
    scale = (hi - lo) / 2.0
    if np.any(scale == 0):
        raise PassError(f"pass 'distill': the model's action statistics have a zero range in dimension(s) "
                        f"{np.nonzero(scale == 0)[0].tolist()}")
    return (lo + hi) / 2.0, scale


def load_observation_data(vla: Any, dataset: Any, config: DistillConfig,
                          cameras: Callable[[Any, list[str], Path], list[str]], clip: bool) -> ObservationData:
    """Decode the training and held-out episodes (data.choose_episodes): the images of the dataset
    cameras `cameras(vla, available, root)` chooses (a DatasetError when the model's are missing),
    targets clipped to [-1, 1] when `clip`."""
    from .data import choose_episodes

    ds, train_eps, val_eps = choose_episodes(dataset, config)
    val_set = {int(i) for i in val_eps}
    chosen = sorted(int(i) for i in np.concatenate([train_eps, val_eps]))
    available = [k.removeprefix("observation.images.") for k in ds.camera_keys]
    cams = cameras(vla, available, ds.root)
    spec = vla.action_spec
    images: dict[str, list] = {c: [] for c in cams}
    states, actions, instr, ends, is_val = [], [], [], [], []
    n = 0
    loaded = list(ds.iter_episodes(chosen))  # in index order (files are written in episode order)
    if len(loaded) != len(chosen):
        raise DatasetError(ds.root, f"loaded {len(loaded)} episodes, expected {len(chosen)}")
    for ep_index, ep in zip(chosen, loaded):
        t = len(ep)
        for c in cams:
            images[c].append(ep.images[c])
        states.append(ep.state)
        actions.append(ep.action)
        instr += [ep.task] * t
        ends.append(np.full(t, n + t))
        is_val.append(np.full(t, ep_index in val_set))
        n += t
    acts = np.concatenate(actions)
    if acts.shape[1] != spec.dim:
        raise DatasetError(ds.root, f"actions have {acts.shape[1]} dimensions; the model predicts {spec.dim}")
    offset, scale = action_normalizer(vla, spec.dim)
    norm = (acts - offset) / scale
    if clip:
        norm = np.clip(norm, -1.0, 1.0)
    val_mask = np.concatenate(is_val)
    return ObservationData(images={c: np.concatenate(v) for c, v in images.items()}, states=np.concatenate(states),
                           norm_actions=norm.astype(np.float32), instructions=instr,
                           episode_end=np.concatenate(ends), train_idx=np.nonzero(~val_mask)[0],
                           val_idx=np.nonzero(val_mask)[0],
                           episodes={"train": int(len(train_eps)), "val": int(len(val_eps))},
                           chunk=spec.chunk_size, uses_state=vla.state_dim > 0)
