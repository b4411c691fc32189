"""The sensitivity sweep scores every single cut against the original on held-out observations."""

from __future__ import annotations

import pytest

from vla_compress.errors import ConfigError
from vla_compress.passes.calibration import synthetic_observations
from vla_compress.passes.sweep import candidates, sweep


def test_sweep_scores_every_candidate(tiny_models):
    vla = tiny_models["regression"]
    obs = synthetic_observations(vla, 4, seed=0)
    rows = sweep(vla, obs[:2], obs[2:], kinds=("layer-drop", "int8"))
    labels = [r["candidate"] for r in rows]
    n_layers = len(vla.backbone.layers) + len(vla.vision_encoder.encoder.layers)
    assert sum(lab.startswith("layer-drop") for lab in labels) == n_layers
    assert any(lab == "int8-dynamic backbone" for lab in labels)
    scored = [r for r in rows if "error" not in r]
    assert all(r["action_l1"] > 0 for r in scored)  # every cut changes the actions
    assert [r["action_l1"] for r in scored] == sorted(r["action_l1"] for r in scored)
    drop = next(r for r in scored if r["candidate"].startswith("layer-drop backbone"))
    assert drop["params_fraction"] < 1 and drop["flops_fraction"] < 1
    int8 = next(r for r in scored if r["candidate"] == "int8-dynamic backbone")
    assert int8["state_dict_fraction"] < 1
    # the original is untouched
    assert len(vla.backbone.layers) + len(vla.vision_encoder.encoder.layers) == n_layers


def test_unknown_kind_is_an_error(tiny_models):
    with pytest.raises(ConfigError, match="unknown sweep kind"):
        candidates(tiny_models["regression"], ("layer-drop", "magic"))


def _rows_by_label(rows):
    return {r["candidate"]: {k: v for k, v in r.items() if k != "wall_s"} for r in rows}


@pytest.mark.parametrize("kind", ["local", "ray"])
def test_sweep_on_an_executor_scores_as_the_serial_sweep(tiny_checkpoints, kind):
    """The candidates scored on 2 workers (spawned processes or Ray tasks on a 2-CPU local cluster),
    each loading the checkpoint from its path, give the serial sweep's rows."""
    from vla_compress.evaluate.executor import get_executor
    from vla_compress.models import load_vla

    if kind == "ray":
        pytest.importorskip("ray", reason="ray is not installed (pip install 'vla-compress[ray]')")
    path = tiny_checkpoints["regression"]
    vla = load_vla(path)
    obs = synthetic_observations(vla, 4, seed=0)
    import torch

    torch.set_num_threads(1)
    serial = sweep(vla, obs[:2], obs[2:], kinds=("layer-drop", "width-prune"))
    ex = get_executor(kind, 2)
    try:
        seen = []
        parallel = sweep(vla, obs[:2], obs[2:], kinds=("layer-drop", "width-prune"), executor=ex,
                         checkpoint=str(path), progress=lambda label, n, total: seen.append(n))
    finally:
        ex.close()
    assert seen == list(range(1, len(serial) + 1))
    a, b = _rows_by_label(serial), _rows_by_label(parallel)
    assert a.keys() == b.keys()
    for label in a:
        assert a[label].keys() == b[label].keys()
        for k, v in a[label].items():
            assert b[label][k] == (pytest.approx(v, rel=1e-5, abs=1e-7) if isinstance(v, float) else v), (label, k)


def test_a_sweep_on_an_executor_needs_the_checkpoint_path(tiny_models):
    from vla_compress.evaluate.executor import LocalExecutor

    vla = tiny_models["regression"]
    obs = synthetic_observations(vla, 2, seed=0)
    with pytest.raises(ConfigError, match="needs the checkpoint's path"):
        sweep(vla, obs[:1], obs[1:], kinds=("layer-drop",), executor=LocalExecutor(2))
