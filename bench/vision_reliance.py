"""Does a policy look? Its first action across placements, against the scripted expert's.

    python bench/vision_reliance.py CKPT [CKPT ...] [--episodes 10] [--out bench/results/vision_reliance.json]

At the first step of a MetaWorld episode the arm always starts in the same pose, so the proprio
input is identical across placements: only the image says where the object and the goal are.
For each task and the first N evaluation seeds this takes the first observation, asks MetaWorld's
scripted expert (which reads the simulator state) and each checkpoint for the first action, and
reports, over the xyz part of the action:

- spread: mean absolute deviation of the first action across placements (the expert's spread
  is how much the image *should* change the action; a policy that ignores the image has ~0);
- error: mean L1 between the policy's first action and the expert's.

It is a diagnostic, not a success rate: the closed-loop number comes from `vla-compress eval`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np


def first_observations(tasks: tuple[str, ...], episodes: int, cameras: tuple[str, ...]) -> dict:
    from metaworld.policies import ENV_POLICY_MAP

    from vla_compress.evaluate.metaworld_env import CameraSpec, MetaWorldEnv
    from vla_compress.evaluate.seeds import eval_seed

    out = {}
    for task in tasks:
        env = MetaWorldEnv(task, tuple(CameraSpec(c, 128) for c in cameras))
        expert = ENV_POLICY_MAP[task]()
        obs_list, expert_actions = [], []
        for i in range(episodes):
            obs, raw = env.reset(eval_seed(task, i))
            obs_list.append(obs)
            expert_actions.append(np.clip(expert.get_action(raw), -1.0, 1.0)[:3])
        env.close()
        out[task] = (obs_list, np.array(expert_actions))
    return out


def spread(a: np.ndarray) -> float:
    return float(np.abs(a - a.mean(0)).mean())


def main() -> None:
    import warnings

    import torch

    from vla_compress.evaluate.metaworld_env import MT10_TASKS, cameras_read_by
    from vla_compress.fileio import write_json
    from vla_compress.models import load_vla

    warnings.filterwarnings("ignore", module="gymnasium")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    vlas = {str(c): load_vla(c).eval() for c in args.checkpoints}
    cams = {cameras_read_by(v) or ("corner",) for v in vlas.values()}
    if len(cams) != 1:
        raise SystemExit("error: the checkpoints read different cameras; compare them in separate runs")
    obs = first_observations(MT10_TASKS, args.episodes, next(iter(cams)))
    rows = []
    for task, (obs_list, expert) in obs.items():
        row = {"task": task, "expert_spread": spread(expert), "policies": {}}
        for name, vla in vlas.items():
            with torch.no_grad():
                acts = np.array([vla.act(o)[0][:3] for o in obs_list])
            row["policies"][name] = {"spread": spread(acts), "error": float(np.abs(acts - expert).mean())}
        rows.append(row)
    names = list(vlas)
    head = "| task | expert spread | " + " | ".join(f"{Path(n).name} spread / error" for n in names) + " |"
    print(head + "\n|" + "---|" * (2 + len(names)))
    for r in rows:
        cells = " | ".join(f"{r['policies'][n]['spread']:.3f} / {r['policies'][n]['error']:.3f}" for n in names)
        print(f"| {r['task']} | {r['expert_spread']:.3f} | {cells} |")
    mean = {n: {k: float(np.mean([r["policies"][n][k] for r in rows])) for k in ("spread", "error")} for n in names}
    print(f"| mean | {np.mean([r['expert_spread'] for r in rows]):.3f} | "
          + " | ".join(f"{mean[n]['spread']:.3f} / {mean[n]['error']:.3f}" for n in names) + " |")
    if args.out:
        write_json(args.out, {"episodes": args.episodes, "rows": rows, "mean": mean})


if __name__ == "__main__":
    main()
