"""Observations an export is calibrated and validated on: held-out frames of a demo dataset, or
the model family's synthetic examples when no dataset is given.

With a dataset, episodes are split the way the trainer split them (train/bc.py: the last
`val_episodes_per_task` episodes of every task are held out; the number is read from the
checkpoint's training.json when present). Validation frames come from the held-out episodes
only, calibration frames from the others, so parity is measured on observations neither the
training nor the calibration saw. Frames are drawn seeded and spread over episodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DatasetError

DEFAULT_HELD_OUT_PER_TASK = 2  # the trainer's default (TrainConfig.val_episodes_per_task)


@dataclass
class ExportObservations:
    calibration: list[dict]
    validation: list[dict]
    source: str  # where they came from, for the summary and the JSON output


def export_observations(vla: Any, checkpoint: str | Path, dataset: str | Path | None, n_validation: int,
                        n_calibration: int, seed: int = 0) -> ExportObservations:
    """Calibration and held-out validation observations for exporting `vla` (see module docstring)."""
    if n_validation < 1 or n_calibration < 1:
        raise ConfigError("the numbers of validation and calibration observations must be >= 1")
    if dataset is None:
        from .family import get_export_family

        obs = get_export_family(vla.family).example_observations(vla, n_calibration + n_validation)
        return ExportObservations(obs[:n_calibration], obs[n_calibration:],
                                  f"{n_validation} synthetic observations (the family's examples; no --dataset)")
    from ..data.lerobot import LeRobotDataset
    from ..train.bc import split_episodes

    ds = LeRobotDataset(dataset)
    per_task, known = held_out_per_task(checkpoint, dataset)
    meta = [{"task": ep["tasks"][0], "index": int(ep["episode_index"])} for ep in ds.episodes]
    train_eps, val_eps = split_episodes(meta, per_task)
    if len(val_eps) == 0 or len(train_eps) == 0:
        raise DatasetError(dataset, f"cannot split {len(meta)} episodes into calibration and held-out episodes "
                                    f"({per_task} held out per task)")
    rng = np.random.default_rng(seed)
    validation = sample_frames(ds, val_eps.tolist(), n_validation, rng)
    calibration = sample_frames(ds, train_eps.tolist(), n_calibration, rng)
    how = "the checkpoint's own validation split" if known else f"the last {per_task} episodes of each task"
    return ExportObservations(calibration, validation,
                              f"{len(validation)} frames of {len(val_eps)} held-out episodes of {dataset} ({how})")


def held_out_per_task(checkpoint: str | Path, dataset: str | Path) -> tuple[int, bool]:
    """(episodes held out per task, whether the checkpoint's training.json says so for this dataset)."""
    import json

    info = Path(checkpoint) / "training.json"
    if info.is_file():
        try:
            training = json.loads(info.read_text())
            same = Path(training.get("dataset", "")).resolve() == Path(dataset).resolve()
            per_task = training.get("config", {}).get("val_episodes_per_task")
            if same and isinstance(per_task, int) and per_task > 0:
                return per_task, True
        except (json.JSONDecodeError, OSError, AttributeError):
            pass
    return DEFAULT_HELD_OUT_PER_TASK, False


def sample_frames(ds: Any, episodes: list[int], n: int, rng: np.random.Generator) -> list[dict]:
    """`n` frames from `episodes`, round-robin over a seeded choice of episodes, as observations."""
    chosen = rng.choice(episodes, size=min(n, len(episodes)), replace=False).tolist()
    # the order iter_episodes yields them in: by data file, then as listed in the episodes table
    where = {int(e["episode_index"]): (e["data/chunk_index"], e["data/file_index"], i) for i, e in enumerate(ds.episodes)}
    chosen.sort(key=where.__getitem__)
    counts = {ep: n // len(chosen) + (i < n % len(chosen)) for i, ep in enumerate(chosen)}
    out: list[dict] = []
    for ep_index, ep in zip(chosen, ds.iter_episodes(chosen)):
        for t in sorted(rng.choice(len(ep), size=min(counts[ep_index], len(ep)), replace=False).tolist()):
            out.append({"images": {cam: frames[t] for cam, frames in ep.images.items()},
                        "state": ep.state[t], "instruction": ep.task})
    return out
