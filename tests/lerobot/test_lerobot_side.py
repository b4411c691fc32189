"""LeRobot itself against vla-compress on the same checkpoints: the tiny π0, π0.5 and SmolVLA fixtures
(written in LeRobot's layout) are loaded by LeRobot 0.6.1's own policy classes and processor
pipelines, given the same observation and noise, and must predict the same action chunk as
vla-compress's loaders, through the same tokens; and LeRobot's MetaworldEnv must observe what the
`lerobot-metaworld` suite observes.

LeRobot 0.6.1 needs Python >= 3.12 and torch < 2.12, so it cannot live in this environment: it runs in
its own venv, named by $VLA_COMPRESS_LEROBOT_PYTHON, e.g.

    python3.12 -m venv /opt/lerobot && /opt/lerobot/bin/pip install "lerobot[smolvla,pi,metaworld]==0.6.1" \
        "torch<2.12" "mujoco==3.3.0"   # MuJoCo 4 breaks LeRobot's metaworld 3.0.0
    VLA_COMPRESS_LEROBOT_PYTHON=/opt/lerobot/bin/python python3 -m pytest -m slow tests/lerobot

Slow (each case starts LeRobot in a fresh interpreter, ~15 s); skipped with the reason when no
LeRobot interpreter is given.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from vla_compress.models import load_vla

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
LEROBOT_PYTHON = os.environ.get("VLA_COMPRESS_LEROBOT_PYTHON")


def lerobot_python() -> str:
    if not LEROBOT_PYTHON:
        pytest.skip("LeRobot is not importable here (it needs Python >= 3.12 and torch < 2.12): set "
                    "VLA_COMPRESS_LEROBOT_PYTHON to the python of a venv with "
                    "lerobot[smolvla,pi,metaworld]==0.6.1 and mujoco==3.3.0")
    if not Path(LEROBOT_PYTHON).is_file():
        pytest.fail(f"VLA_COMPRESS_LEROBOT_PYTHON={LEROBOT_PYTHON}: no such file")
    return LEROBOT_PYTHON


def run_in_lerobot(script: str, job: dict, tmp_path: Path, **env) -> np.lib.npyio.NpzFile:
    """`script` (beside this file) run by LeRobot's interpreter on `job` (written as job.json, with
    `out` set to tmp_path/out.npz); returns what it wrote there."""
    python = lerobot_python()
    job = {**job, "out": str(tmp_path / "out.npz")}
    (tmp_path / "job.json").write_text(json.dumps(job))
    p = subprocess.run([python, str(HERE / script), str(tmp_path / "job.json")], capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", **env}, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    return np.load(tmp_path / "out.npz")


def pi0_case(tmp, kind, dtype, **overrides):
    from vla_compress.models.pi0.fixtures import write_tiny_pi0

    from ..models.pi0.conftest import make_obs
    return write_tiny_pi0(tmp / f"{kind}-{dtype}", seed=3, kind=kind, dtype=dtype, **overrides), make_obs(0)


def smolvla_case(tmp, name, **kw):
    from vla_compress.models.smolvla.fixtures import write_tiny_smolvla

    from ..models.smolvla.conftest import make_obs
    return write_tiny_smolvla(tmp / name, seed=2, **kw), make_obs(0)


def lerobot_defaults():
    from vla_compress.models.smolvla.fixtures import LEROBOT_DEFAULTS
    return dict(LEROBOT_DEFAULTS)


CASES = {
    "pi0-bf16": lambda t: pi0_case(t, "pi0", "mixed"),
    "pi0-fp32": lambda t: pi0_case(t, "pi0", "float32"),
    "pi0-relative-actions": lambda t: pi0_case(t, "pi0", "mixed", use_relative_actions=True,
                                               action_feature_names=["x", "y", "z", "gripper"]),
    "pi05-bf16": lambda t: pi0_case(t, "pi05", "mixed"),
    "pi05-fp32": lambda t: pi0_case(t, "pi05", "float32"),
    "smolvla-bf16": lambda t: smolvla_case(t, "smolvla-bf16"),
    "smolvla-fp32": lambda t: smolvla_case(t, "smolvla-fp32", dtype="float32"),
    "smolvla-lerobot-defaults": lambda t: smolvla_case(t, "smolvla-defaults", empty_cameras=1, **lerobot_defaults()),
    "smolvla-mean-std-images": lambda t: smolvla_case(t, "smolvla-mean-std", normalization="MEAN_STD"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_lerobot_predicts_what_vla_compress_predicts(case, tmp_path):
    lerobot_python()  # skip before building anything when LeRobot is absent
    path, obs = CASES[case](tmp_path)
    vla = load_vla(path)
    x = vla.preprocess([obs])
    noise = torch.randn(vla.noise_shape(1), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        chunk_norm = vla.predict_chunk({**x, "noise": noise}).numpy()
    chunk = vla.unnormalize_actions(chunk_norm)

    np.savez(tmp_path / "in.npz", state=obs["state"][None], noise=noise.numpy(),
             instruction=np.array(obs["instruction"]),
             **{f"image.{k}": v[None] for k, v in obs["images"].items()})
    lr = run_in_lerobot("predict_in_lerobot.py", {"checkpoint": str(path), "inputs": str(tmp_path / "in.npz")},
                        tmp_path, TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")

    assert list(lr["missing_keys"]) in ([], ["model.paligemma_with_expert.paligemma.model.language_model"
                                             ".embed_tokens.weight"])  # π0: tied to lm_head, as LeRobot saves it
    assert list(lr["unexpected_keys"]) == []
    if "lang_tokens" in x:  # the same prompt tokens through LeRobot's tokenizer step (transformers' GemmaTokenizer)
        np.testing.assert_array_equal(x["lang_tokens"].numpy(), lr["pre.observation.language.tokens"])
        np.testing.assert_array_equal(x["lang_masks"].numpy().astype(bool),
                                      lr["pre.observation.language.attention_mask"].astype(bool))
    assert lr["chunk"].shape == chunk.shape
    np.testing.assert_allclose(chunk_norm, lr["chunk_normalized"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(chunk, lr["chunk"], atol=1e-5 * max(1.0, float(np.abs(chunk).max())), rtol=0)


# --------------------------------------------------------------------------- lerobot-metaworld suite
@pytest.mark.parametrize("task", ["reach-v3", "drawer-open-v3"])
def test_lerobot_metaworld_suite_observes_what_lerobots_env_observes(task, tmp_path):
    """The `lerobot-metaworld` suite against LeRobot's own MetaworldEnv: the same seeds, the same 30
    actions, the same frames (bit for bit), agent_pos and success flags."""
    lerobot_python()  # skip before rolling anything when LeRobot is absent
    from vla_compress.evaluate.lerobot_metaworld import LeRobotMetaWorldEnv, seed_for

    seeds = [seed_for(task, 0), seed_for(task, 1)]
    actions = np.random.default_rng(0).uniform(-1, 1, (30, 4)).astype(np.float32)
    record = [0, 10, 30]
    np.savez(tmp_path / "actions.npz", actions=actions)
    job = {"task": task, "seeds": seeds, "actions": str(tmp_path / "actions.npz"), "record": record}
    lr = run_in_lerobot("metaworld_in_lerobot.py", job, tmp_path, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))

    for seed in seeds:
        ours = LeRobotMetaWorldEnv(task)
        obs, _ = ours.reset(seed)
        pos, success = [obs["state"]], []
        frames = {0: ours.render()}
        for t, a in enumerate(actions, start=1):
            obs, _, ok, _ = ours.step(a)
            pos.append(obs["state"])
            success.append(ok)
            if t in record:
                frames[t] = ours.render()
        ours.close()
        n = len(success) if True not in success else success.index(True) + 1  # LeRobot resets after a success
        np.testing.assert_array_equal(np.asarray(success[:n]), lr[f"success.{seed}"][:n])
        np.testing.assert_allclose(np.asarray(pos[:n + 1], dtype=np.float64), lr[f"agent_pos.{seed}"][:n + 1],
                                   atol=1e-6, rtol=0)
        for t in record:
            if t <= n:
                assert frames[t].shape == lr[f"pixels.{seed}.{t}"].shape == (480, 480, 3)
                np.testing.assert_array_equal(frames[t], lr[f"pixels.{seed}.{t}"],
                                              err_msg=f"{task} seed {seed} step {t}")
