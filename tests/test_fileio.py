"""Atomic writes and safe tensor loading (no unpickling without an explicit opt-in)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from vla_compress.errors import CheckpointError, UnsafeFileError
from vla_compress.fileio import (atomic_path, load_safetensors, load_torch_state_dict, read_json, save_safetensors,
                                 write_json)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left behind


def test_write_json_round_trip_with_numpy(tmp_path):
    path = tmp_path / "sub" / "m.json"
    write_json(path, {"b": np.float32(0.5), "a": np.arange(3), "p": tmp_path})
    assert read_json(path) == {"a": [0, 1, 2], "b": 0.5, "p": str(tmp_path)}
    assert path.read_text().index('"a"') < path.read_text().index('"b"')  # sorted keys


def test_safetensors_round_trip(tmp_path):
    t = {"w": torch.randn(3, 4)[:, :2], "b": torch.arange(5)}  # non-contiguous view is fine
    save_safetensors(t, tmp_path / "m.safetensors")
    back = load_safetensors(tmp_path / "m.safetensors")
    assert torch.equal(back["w"], t["w"]) and torch.equal(back["b"], t["b"])


def test_load_safetensors_missing_and_garbage(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        load_safetensors(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 3)
    with pytest.raises(CheckpointError, match="not a valid safetensors file") as e:
        load_safetensors(junk)
    assert e.value.path == junk


def test_plain_tensor_state_dict_loads_without_opt_in(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(2, 2)}, path)
    assert torch.equal(load_torch_state_dict(path)["w"], torch.ones(2, 2))


def test_pickled_object_refused_without_allow_pickle(tmp_path):
    path = tmp_path / "ckpt.pt"
    # old training scripts often pickled their argparse Namespace next to the weights
    torch.save({"w": torch.zeros(2), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(UnsafeFileError, match="refusing to unpickle") as e:
        load_torch_state_dict(path)
    assert e.value.path == path
    assert isinstance(e.value, CheckpointError)
    loaded = load_torch_state_dict(path, allow_pickle=True)
    assert loaded["args"].lr == 0.1 and torch.equal(loaded["w"], torch.zeros(2))


def test_load_torch_state_dict_missing_and_garbage(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        load_torch_state_dict(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip or pickle")
    with pytest.raises(CheckpointError) as e:
        load_torch_state_dict(junk)
    assert e.value.path == junk
