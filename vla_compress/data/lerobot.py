"""Write and read datasets in the LeRobot v3.0 on-disk layout.

    meta/info.json                         features, fps, counts, path templates
    meta/tasks.parquet                     task string -> task_index
    meta/episodes/chunk-000/file-000.parquet   one row per episode (length, data file, index range)
    meta/stats.json                        per-feature statistics (mean/std/min/max/q01/q99)
    data/chunk-000/file-000.parquet        one row per frame; images as {bytes: PNG, path}

Images are stored in the parquet files (LeRobot's `dtype: image`), not as videos: decoding
AV1/H.264 needs codecs this project does not want to depend on, and PNG is lossless.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import DatasetError
from ..fileio import write_json

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
# Rotate data files at about this many bytes of PNG payload, as LeRobot does (100 MB files).
FILE_BYTES = 100 * 1024 * 1024
CHUNK_FILES = 1000


@dataclass
class Episode:
    """One demonstration: T frames of images/state/action plus its task and provenance."""

    task: str  # the instruction string (LeRobot's "task")
    images: dict[str, np.ndarray]  # camera -> (T, H, W, 3) uint8
    state: np.ndarray  # (T, S) float32
    action: np.ndarray  # (T, A) float32
    extras: dict = field(default_factory=dict)  # e.g. {"env_task": "reach-v3", "seed": 3, "success": True}

    def __len__(self) -> int:
        return len(self.action)


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _unpng(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


class LeRobotWriter:
    """Append episodes, then `close()` to write metadata. Writes into `<root>.partial` and renames
    at the end, so an interrupted collection never leaves a dataset that looks complete."""

    def __init__(self, root: str | Path, fps: int, robot_type: str = "unknown", overwrite: bool = False):
        self.root = Path(root)
        if self.root.exists() and not overwrite:
            raise DatasetError(self.root, "already exists (pass overwrite=True / --overwrite to replace it)")
        self.tmp = self.root.with_name(self.root.name + ".partial")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.fps, self.robot_type = fps, robot_type
        self.tasks: dict[str, int] = {}
        self.episode_rows: list[dict] = []
        self._rows: list[dict] = []
        self._rows_bytes = 0
        self._file_index = 0
        self._n_frames = 0
        self._features: dict | None = None
        self._stats_acc: dict[str, list[np.ndarray]] = {"observation.state": [], "action": []}

    def add(self, ep: Episode) -> None:
        if len(ep) == 0:
            raise DatasetError(self.root, "refusing to write an empty episode")
        if self._features is None:
            self._features = self._make_features(ep)
        task_index = self.tasks.setdefault(ep.task, len(self.tasks))
        ep_index = len(self.episode_rows)
        start = self._n_frames
        for t in range(len(ep)):
            row = {
                f"observation.images.{cam}": {"bytes": _png(frames[t]), "path": None}
                for cam, frames in ep.images.items()
            }
            row.update(
                {
                    "observation.state": ep.state[t].astype(np.float32).tolist(),
                    "action": ep.action[t].astype(np.float32).tolist(),
                    "timestamp": float(t) / self.fps,
                    "frame_index": t,
                    "episode_index": ep_index,
                    "index": self._n_frames,
                    "task_index": task_index,
                }
            )
            self._rows_bytes += sum(len(v["bytes"]) for k, v in row.items() if k.startswith("observation.images."))
            self._rows.append(row)
            self._n_frames += 1
        self._stats_acc["observation.state"].append(ep.state.astype(np.float32))
        self._stats_acc["action"].append(ep.action.astype(np.float32))
        self.episode_rows.append(
            {
                "episode_index": ep_index,
                "tasks": [ep.task],
                "length": len(ep),
                "data/chunk_index": self._file_index // CHUNK_FILES,
                "data/file_index": self._file_index % CHUNK_FILES,
                "dataset_from_index": start,
                "dataset_to_index": self._n_frames,
                "meta/extras": json.dumps(ep.extras, sort_keys=True),
            }
        )
        if self._rows_bytes >= FILE_BYTES:
            self._flush()

    def _make_features(self, ep: Episode) -> dict:
        feats = {}
        for cam, frames in ep.images.items():
            h, w, c = frames.shape[1:]
            feats[f"observation.images.{cam}"] = {"dtype": "image", "shape": [h, w, c], "names": ["height", "width", "channel"]}
        feats["observation.state"] = {"dtype": "float32", "shape": [ep.state.shape[1]], "names": None}
        feats["action"] = {"dtype": "float32", "shape": [ep.action.shape[1]], "names": None}
        for k, dt in [("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"), ("index", "int64"), ("task_index", "int64")]:
            feats[k] = {"dtype": dt, "shape": [1], "names": None}
        return feats

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._rows:
            return
        path = self.tmp / DATA_PATH.format(chunk_index=self._file_index // CHUNK_FILES, file_index=self._file_index % CHUNK_FILES)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self._rows), path)
        self._rows, self._rows_bytes = [], 0
        self._file_index += 1

    def close(self) -> Path:
        """Write remaining frames and all metadata, then move the dataset into place."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.episode_rows:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise DatasetError(self.root, "no episodes were added")
        self._flush()
        meta = self.tmp / "meta"
        ep_path = self.tmp / EPISODES_PATH.format(chunk_index=0, file_index=0)
        ep_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self.episode_rows), ep_path)
        tasks = sorted(self.tasks.items(), key=lambda kv: kv[1])
        pq.write_table(pa.table({"task": [t for t, _ in tasks], "task_index": [i for _, i in tasks]}), meta / "tasks.parquet")
        stats = {k: _stats(np.concatenate(v)) for k, v in self._stats_acc.items()}
        write_json(meta / "stats.json", stats)
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self.episode_rows),
            "total_frames": self._n_frames,
            "total_tasks": len(self.tasks),
            "chunks_size": CHUNK_FILES,
            "data_files_size_in_mb": FILE_BYTES // (1024 * 1024),
            "video_files_size_in_mb": 0,
            "fps": self.fps,
            "splits": {"train": f"0:{len(self.episode_rows)}"},
            "data_path": DATA_PATH,
            "video_path": None,
            "features": self._features,
        }
        write_json(meta / "info.json", info)
        if self.root.exists():
            shutil.rmtree(self.root)
        self.tmp.rename(self.root)
        return self.root


def _stats(x: np.ndarray) -> dict:
    return {
        "mean": x.mean(0).tolist(), "std": x.std(0).tolist(), "min": x.min(0).tolist(), "max": x.max(0).tolist(),
        "q01": np.quantile(x, 0.01, axis=0).tolist(), "q99": np.quantile(x, 0.99, axis=0).tolist(), "count": [len(x)],
    }


class LeRobotDataset:
    """Read a LeRobot v3.0 dataset (ours or a user's) with images stored in parquet."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        info_path = self.root / "meta" / "info.json"
        if not info_path.is_file():
            raise DatasetError(self.root, "meta/info.json not found: not a LeRobot dataset")
        try:
            self.info = json.loads(info_path.read_text())
        except json.JSONDecodeError as e:
            raise DatasetError(info_path, f"invalid JSON at line {e.lineno}: {e.msg}") from None
        version = str(self.info.get("codebase_version", ""))
        if not version.startswith("v3"):
            raise DatasetError(info_path, f"codebase_version {version!r} is not supported (need v3.x)")
        self.features: dict = self.info.get("features", {})
        for key in ("action", "observation.state"):
            if key not in self.features:
                raise DatasetError(info_path, f"feature {key!r} missing from features")
        self.camera_keys = [k for k, v in self.features.items() if v.get("dtype") == "image"]
        if not self.camera_keys:
            video = [k for k, v in self.features.items() if v.get("dtype") == "video"]
            raise DatasetError(info_path, f"no image features stored in parquet (video features {video} are not supported)")
        self.episodes = self._read_table(self.root / "meta" / "episodes").to_pylist()
        tasks = self._read_table(self.root / "meta" / "tasks.parquet")
        cols = tasks.column_names
        names = tasks.column("task").to_pylist() if "task" in cols else tasks.column(cols[-1]).to_pylist()
        self.tasks = dict(zip(tasks.column("task_index").to_pylist(), names))
        stats_path = self.root / "meta" / "stats.json"
        self.stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}

    def _read_table(self, path: Path):
        import pyarrow.parquet as pq

        if not path.exists():
            raise DatasetError(self.root, f"{path.relative_to(self.root)} not found")
        try:
            if path.is_dir():
                import pyarrow as pa

                files = sorted(path.rglob("*.parquet"))
                if not files:
                    raise DatasetError(self.root, f"{path.relative_to(self.root)} holds no parquet files")
                return pa.concat_tables([pq.read_table(f) for f in files])
            return pq.read_table(path)
        except DatasetError:
            raise
        except Exception as e:
            raise DatasetError(path, f"cannot read parquet: {e}") from None

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def num_frames(self) -> int:
        return int(self.info["total_frames"])

    def iter_episodes(self, indices: list[int] | None = None, decode_images: bool = True) -> Iterator[Episode]:
        """Yield episodes in order, reading each data file once."""
        import pyarrow.parquet as pq

        wanted = set(range(len(self.episodes)) if indices is None else indices)
        by_file: dict[tuple[int, int], list[dict]] = {}
        for ep in self.episodes:
            if ep["episode_index"] in wanted:
                by_file.setdefault((ep["data/chunk_index"], ep["data/file_index"]), []).append(ep)
        for (chunk, fidx), eps in sorted(by_file.items()):
            path = self.root / self.info["data_path"].format(chunk_index=chunk, file_index=fidx)
            if not path.is_file():
                raise DatasetError(self.root, f"data file {path.relative_to(self.root)} not found")
            table = pq.read_table(path)
            ep_col = np.asarray(table.column("episode_index").to_numpy())
            for ep in eps:
                rows = np.nonzero(ep_col == ep["episode_index"])[0]
                sub = table.take(rows)
                images = {}
                for key in self.camera_keys:
                    cam = key.removeprefix("observation.images.")
                    cells = sub.column(key).to_pylist()
                    images[cam] = np.stack([_unpng(c["bytes"]) for c in cells]) if decode_images else np.empty((len(cells), 0, 0, 3), np.uint8)
                extras = json.loads(ep.get("meta/extras") or "{}")
                yield Episode(
                    task=ep["tasks"][0],
                    images=images,
                    state=np.asarray(sub.column("observation.state").to_pylist(), dtype=np.float32),
                    action=np.asarray(sub.column("action").to_pylist(), dtype=np.float32),
                    extras=extras,
                )
