"""Calibration data, NNCF-style: `Dataset(source, transform_fn)`, and running it through a model.

The source is a sequence of items (here: batches of raw observations); `transform_fn` turns an
item into model inputs (here: the adapter's `preprocess`). Passes iterate the dataset and call
`vla.predict_chunk(inputs)` with hooks on the modules whose activations they measure, so the
statistics come from exactly the computation a policy step does (prefill and, for a tokens head,
every decode step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ..errors import PassError


class Dataset:
    """An iterable of model inputs: `transform_fn(item)` for each item of `source`
    (the identity when no transform is given), re-iterable, as `nncf.Dataset`."""

    def __init__(self, source: Iterable, transform_fn: Callable[[Any], Any] | None = None):
        self.source = list(source)
        if not self.source:
            raise PassError("calibration dataset is empty")
        self.transform_fn = transform_fn or (lambda x: x)

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self) -> Iterator[Any]:
        for item in self.source:
            yield self.transform_fn(item)

    def get_inference_data(self, indices: Iterable[int] | None = None) -> Iterator[Any]:
        for i in indices if indices is not None else range(len(self.source)):
            yield self.transform_fn(self.source[i])


def calibration_dataset(vla: Any, observations: list[dict], batch_size: int = 1) -> Dataset:
    """Observations grouped in batches, preprocessed by the adapter when iterated.

    Batch size 1 by default: batches of different instructions are left-padded, and padded
    positions would enter the statistics (hooks see every position)."""
    if batch_size < 1:
        raise PassError(f"calibration batch_size must be >= 1, got {batch_size}")
    batches = [observations[i:i + batch_size] for i in range(0, len(observations), batch_size)]
    return Dataset(batches, lambda batch: vla.preprocess(batch))


def observations_from_lerobot(dataset: Any, num_samples: int = 32, seed: int = 0) -> list[dict]:
    """`num_samples` frames (seeded, spread over episodes) as adapter observations:
    {"images": {camera: HxWx3}, "state": ..., "instruction": task}."""
    from ..data.lerobot import LeRobotDataset

    if num_samples < 1:
        raise PassError(f"num_samples must be >= 1, got {num_samples}")
    ds = dataset if isinstance(dataset, LeRobotDataset) else LeRobotDataset(Path(dataset))
    rng = np.random.default_rng(seed)
    n_eps = len(ds)
    episodes = sorted(rng.choice(n_eps, size=min(n_eps, num_samples), replace=False).tolist())
    per_ep = [num_samples // len(episodes) + (i < num_samples % len(episodes)) for i in range(len(episodes))]
    obs: list[dict] = []
    for ep, k in zip(ds.iter_episodes(episodes), per_ep):
        frames = sorted(rng.choice(len(ep), size=min(k, len(ep)), replace=False).tolist())
        for t in frames:
            obs.append({"images": {cam: imgs[t] for cam, imgs in ep.images.items()},
                        "state": ep.state[t], "instruction": ep.task})
    return obs


def synthetic_observations(vla: Any, num_samples: int = 8, seed: int = 0,
                           instructions: tuple[str, ...] = ("reach to the target location", "open the door")
                           ) -> list[dict]:
    """Random-image observations shaped for `vla` (tests and smoke runs; not for real calibration)."""
    from ..profile.counting import dummy_observation

    rng = np.random.default_rng(seed)
    out = []
    for i in range(num_samples):
        obs = dummy_observation(vla, instructions[i % len(instructions)])
        obs["images"] = {c: rng.integers(0, 256, im.shape, dtype=np.uint8) for c, im in obs["images"].items()}
        if "state" in obs:
            obs["state"] = rng.uniform(-1, 1, np.shape(obs["state"])).astype(np.float32)
        out.append(obs)
    return out


def run(vla: Any, dataset: Dataset, hooks: dict[Any, Callable] | None = None, pre: bool = True,
        limit: int | None = None) -> list[Any]:
    """Run every calibration batch through `vla.predict_chunk` with forward (pre-)hooks
    `module -> fn(module, args[, output])`; returns the predicted chunks."""
    import torch

    handles = []
    for mod, fn in (hooks or {}).items():
        handles.append(mod.register_forward_pre_hook(fn) if pre else mod.register_forward_hook(fn))
    outs = []
    try:
        with torch.no_grad():
            for i, inputs in enumerate(dataset):
                if limit is not None and i >= limit:
                    break
                outs.append(vla.predict_chunk(inputs).float())
    finally:
        for h in handles:
            h.remove()
    return outs


class InputStats:
    """Per-input-channel statistics of a module's input over calibration tokens:
    sum of squares (Wanda's ||X_j||), sum of |x| (AWQ's activation magnitude), a row sample."""

    def __init__(self, max_rows: int = 512, seed: int = 0):
        self.sq = None
        self.abs = None
        self.tokens = 0
        self.rows: list = []
        self.max_rows = max_rows
        self._g = None
        self.seed = seed

    def __call__(self, module: Any, args: tuple) -> None:
        import torch

        x = args[0].detach().float().reshape(-1, args[0].shape[-1])
        sq, ab = (x * x).sum(0), x.abs().sum(0)
        self.sq = sq if self.sq is None else self.sq + sq
        self.abs = ab if self.abs is None else self.abs + ab
        self.tokens += x.shape[0]
        if self.max_rows:
            have = sum(r.shape[0] for r in self.rows)
            if have < self.max_rows:
                if self._g is None:
                    self._g = torch.Generator().manual_seed(self.seed)
                take = min(self.max_rows - have, x.shape[0])
                idx = torch.randperm(x.shape[0], generator=self._g)[:take]
                self.rows.append(x[idx])

    @property
    def norm(self):
        return self.sq.sqrt()

    @property
    def mean_abs(self):
        return self.abs / max(self.tokens, 1)

    def sample(self):
        import torch

        return torch.cat(self.rows) if self.rows else None


def collect_input_stats(vla: Any, dataset: Dataset, modules: dict[str, Any], max_rows: int = 0,
                        seed: int = 0, allow_unused: bool = False) -> dict[str, InputStats]:
    """InputStats for each named module, from one pass over the calibration data. A module that is
    never called (the reference tokens head reads its weight rows directly) is an error unless
    `allow_unused`; then it is left out of the result."""
    stats = {name: InputStats(max_rows, seed) for name in modules}
    run(vla, dataset, {m: stats[n] for n, m in modules.items()})
    missing = [n for n, s in stats.items() if s.tokens == 0]
    if missing and not allow_unused:
        raise PassError(f"modules {missing[:4]} never ran on the calibration data (not used by a policy step?)")
    return {n: s for n, s in stats.items() if s.tokens}
