"""LeRobot v3.0 dataset writer/reader: exact round trip, metadata, atomic completion, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vla_compress.data import Episode, LeRobotDataset, LeRobotWriter
from vla_compress.errors import DatasetError

TASKS = ["reach to the target location", "open the door", "reach to the target location"]
LENGTHS = [5, 3, 4]


def synthetic_episodes() -> list[Episode]:
    rng = np.random.default_rng(0)
    eps = []
    for i, (task, n) in enumerate(zip(TASKS, LENGTHS)):
        eps.append(Episode(
            task=task,
            images={"corner": rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8),
                    "topview": rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)},
            state=rng.normal(size=(n, 4)).astype(np.float32),
            action=rng.uniform(-1, 1, size=(n, 4)).astype(np.float32),
            extras={"env_task": "reach-v3", "seed": i, "success": bool(i % 2)},
        ))
    return eps


def write(root, episodes, **kw):
    writer = LeRobotWriter(root, fps=80, robot_type="sawyer", **kw)
    for ep in episodes:
        writer.add(ep)
    return writer.close()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds") / "demos"
    eps = synthetic_episodes()
    assert write(root, eps) == root
    return root, eps


def test_round_trip_identical_arrays(written):
    root, eps = written
    ds = LeRobotDataset(root)
    assert len(ds) == 3 and ds.num_frames == sum(LENGTHS)
    back = list(ds.iter_episodes())
    assert len(back) == 3
    for a, b in zip(eps, back):
        assert b.task == a.task
        assert set(b.images) == {"corner", "topview"}
        for cam in a.images:
            assert b.images[cam].dtype == np.uint8
            assert np.array_equal(b.images[cam], a.images[cam])
        assert b.state.dtype == np.float32 and np.array_equal(b.state, a.state)
        assert b.action.dtype == np.float32 and np.array_equal(b.action, a.action)
        assert b.extras == a.extras


def test_iter_selected_episodes_without_images(written):
    root, eps = written
    (only,) = LeRobotDataset(root).iter_episodes([1], decode_images=False)
    assert np.array_equal(only.action, eps[1].action)
    assert only.images["corner"].shape == (3, 0, 0, 3)


def test_info_json(written):
    root, _ = written
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["total_episodes"] == 3
    assert info["total_frames"] == 12
    assert info["total_tasks"] == 2
    assert info["fps"] == 80 and info["robot_type"] == "sawyer"
    assert info["splits"] == {"train": "0:3"}
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    feats = info["features"]
    assert feats["observation.images.corner"] == {"dtype": "image", "shape": [16, 16, 3],
                                                  "names": ["height", "width", "channel"]}
    assert feats["observation.state"]["shape"] == [4] and feats["observation.state"]["dtype"] == "float32"
    assert feats["action"]["shape"] == [4]
    for k in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert k in feats
    assert (root / "data" / "chunk-000" / "file-000.parquet").is_file()
    assert (root / "meta" / "episodes" / "chunk-000" / "file-000.parquet").is_file()


def test_tasks_and_episode_index(written):
    root, _ = written
    ds = LeRobotDataset(root)
    assert ds.tasks == {0: "reach to the target location", 1: "open the door"}
    assert ds.camera_keys == ["observation.images.corner", "observation.images.topview"]
    assert [e["length"] for e in ds.episodes] == LENGTHS
    assert [(e["dataset_from_index"], e["dataset_to_index"]) for e in ds.episodes] == [(0, 5), (5, 8), (8, 12)]


def test_frame_columns(written):
    import pyarrow.parquet as pq

    root, _ = written
    t = pq.read_table(root / "data" / "chunk-000" / "file-000.parquet")
    assert t.column("index").to_pylist() == list(range(12))
    assert t.column("frame_index").to_pylist() == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3]
    assert t.column("task_index").to_pylist() == [0] * 5 + [1] * 3 + [0] * 4
    assert np.allclose(t.column("timestamp").to_pylist()[:2], [0.0, 1 / 80])


def test_stats(written):
    root, eps = written
    stats = LeRobotDataset(root).stats
    for key, attr in (("action", "action"), ("observation.state", "state")):
        x = np.concatenate([getattr(e, attr) for e in eps])
        s = stats[key]
        assert s["count"] == [12]
        for name, fn in (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max)):
            assert np.allclose(s[name], fn(x, axis=0), atol=1e-6), (key, name)
        assert np.allclose(s["q01"], np.quantile(x, 0.01, axis=0), atol=1e-6)
        assert np.allclose(s["q99"], np.quantile(x, 0.99, axis=0), atol=1e-6)


def test_writer_refuses_existing_dir(written, tmp_path):
    root, _ = written
    with pytest.raises(DatasetError, match="already exists") as e:
        LeRobotWriter(root, fps=80)
    assert e.value.path == root
    assert not root.with_name(root.name + ".partial").exists()  # refused before touching anything


def test_overwrite_replaces_dataset(tmp_path):
    root = tmp_path / "ds"
    eps = synthetic_episodes()
    write(root, eps)
    write(root, eps[:1], overwrite=True)
    ds = LeRobotDataset(root)
    assert len(ds) == 1 and ds.num_frames == LENGTHS[0]


def test_interrupted_write_leaves_no_dataset(tmp_path):
    root = tmp_path / "ds"
    writer = LeRobotWriter(root, fps=80)
    for ep in synthetic_episodes():
        writer.add(ep)
    del writer  # "crash": close() never runs
    assert not root.exists()
    assert (tmp_path / "ds.partial").is_dir()
    with pytest.raises(DatasetError):
        LeRobotDataset(root)
    # a new collection into the same place starts clean
    assert write(root, synthetic_episodes()[:2]) == root
    assert len(LeRobotDataset(root)) == 2
    assert not (tmp_path / "ds.partial").exists()


def test_close_without_episodes_and_empty_episode(tmp_path):
    root = tmp_path / "ds"
    writer = LeRobotWriter(root, fps=80)
    empty = Episode("t", {"corner": np.zeros((0, 16, 16, 3), np.uint8)}, np.zeros((0, 4), np.float32),
                    np.zeros((0, 4), np.float32))
    with pytest.raises(DatasetError, match="empty episode"):
        writer.add(empty)
    with pytest.raises(DatasetError, match="no episodes") as e:
        writer.close()
    assert e.value.path == root
    assert not root.exists() and not (tmp_path / "ds.partial").exists()


def test_reader_missing_info_json(tmp_path):
    (tmp_path / "notads" / "meta").mkdir(parents=True)
    with pytest.raises(DatasetError, match="meta/info.json not found") as e:
        LeRobotDataset(tmp_path / "notads")
    assert e.value.path == tmp_path / "notads"
    assert str(tmp_path / "notads") in str(e.value)


def _copy_with_info(src, dst, **changes):
    import shutil

    shutil.copytree(src, dst)
    info_path = dst / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info.update(changes)
    info_path.write_text(json.dumps(info))
    return info_path


def test_reader_wrong_codebase_version(written, tmp_path):
    info_path = _copy_with_info(written[0], tmp_path / "old", codebase_version="v2.1")
    with pytest.raises(DatasetError, match="codebase_version 'v2.1' is not supported") as e:
        LeRobotDataset(tmp_path / "old")
    assert e.value.path == info_path
    assert str(info_path) in str(e.value)


def test_reader_invalid_info_json(written, tmp_path):
    import shutil

    shutil.copytree(written[0], tmp_path / "bad")
    info_path = tmp_path / "bad" / "meta" / "info.json"
    info_path.write_text("{")
    with pytest.raises(DatasetError, match="invalid JSON") as e:
        LeRobotDataset(tmp_path / "bad")
    assert e.value.path == info_path


def test_reader_video_features_unsupported(written, tmp_path):
    info = json.loads((written[0] / "meta" / "info.json").read_text())
    feats = {k: ({**v, "dtype": "video"} if v["dtype"] == "image" else v) for k, v in info["features"].items()}
    _copy_with_info(written[0], tmp_path / "video", features=feats)
    with pytest.raises(DatasetError, match="video features"):
        LeRobotDataset(tmp_path / "video")


def test_reader_missing_data_file(written, tmp_path):
    import shutil

    shutil.copytree(written[0], tmp_path / "nodata")
    (tmp_path / "nodata" / "data" / "chunk-000" / "file-000.parquet").unlink()
    ds = LeRobotDataset(tmp_path / "nodata")  # metadata alone is readable
    with pytest.raises(DatasetError, match="data file data/chunk-000/file-000.parquet not found"):
        list(ds.iter_episodes())
