"""Roll LeRobot's own MetaworldEnv (lerobot.envs.metaworld, as `lerobot-eval` builds it) with given
actions and write what it observes, for the comparison in tests/lerobot/test_lerobot_side.py. Run
by LeRobot's interpreter (a venv with lerobot[metaworld]==0.6.1), never imported by vla-compress:

    $LEROBOT_PYTHON tests/lerobot/metaworld_in_lerobot.py JOB.json

JOB.json: {"task": NAME, "seeds": [S...], "actions": IN.npz (`actions` (T, 4)), "record": [step...],
"out": OUT.npz}. OUT.npz gets, per seed s, `pixels.<s>.<step>` (H, W, 3) uint8 at the recorded steps
(0 = after reset), `agent_pos.<s>` (T + 1, 4) and `success.<s>` (T,).
"""

from __future__ import annotations

import json
import sys

import numpy as np


def main(job_path: str) -> None:
    from lerobot.envs.metaworld import MetaworldEnv

    job = json.loads(open(job_path).read())
    actions = np.load(job["actions"])["actions"]
    record = set(job["record"])
    out = {}
    for seed in job["seeds"]:
        env = MetaworldEnv(task=job["task"], obs_type="pixels_agent_pos")
        obs, _ = env.reset(seed=int(seed))
        pos, success = [obs["agent_pos"]], []
        if 0 in record:
            out[f"pixels.{seed}.0"] = obs["pixels"]
        for t, a in enumerate(actions, start=1):
            obs, _, _, _, info = env.step(a)
            pos.append(obs["agent_pos"])
            success.append(bool(info.get("is_success", False)))
            if t in record:
                out[f"pixels.{seed}.{t}"] = obs["pixels"]
        out[f"agent_pos.{seed}"] = np.asarray(pos, dtype=np.float64)
        out[f"success.{seed}"] = np.asarray(success)
        env.close()
    np.savez(job["out"], **out)


if __name__ == "__main__":
    main(sys.argv[1])
