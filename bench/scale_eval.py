"""The same closed-loop evaluation on each executor: wall time, episodes/s, identical outcomes.

    python bench/scale_eval.py --tasks reach-v3,push-v3,window-open-v3,drawer-open-v3,button-press-topdown-v3 \\
        --episodes 20 --workers 2 --max-steps 100

Runs reference-small-chunk (torch, one thread per worker) on the same tasks and seeds with:
  local-serial   the local executor in this process (--serial; the 1-worker reference)
  local-pool     the local executor, `--workers` spawned processes
  ray-local      Ray actors on a local cluster started by the executor (ray.init(num_cpus=workers))
  ray-2-nodes    Ray actors on a two-node cluster on this host: `ray start --head --num-cpus 1` and
                 `ray start --address HEAD --num-cpus 1`, joined with --ray-address (the multi-node
                 path: actors are placed on both raylets); both nodes are stopped at the end by
                 their process ids
and checks that every configuration's per-episode outcomes (task, seed, success, steps, inferences)
equal the first one's. Writes bench/results/scale_eval.json.

What a 2-core machine can show: that Ray's scheduling, the multi-node join and the outcomes work,
and Ray's fixed costs (cluster start, actor start) next to the local pool; not a speed-up beyond
2 workers. The load average before and after each run is recorded: other jobs share these cores.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(args: list[str], log: Path) -> subprocess.Popen:
    """`ray start ... --block` in its own process group, so that stopping it (by its id) ends every
    process it started and nothing else (never `ray stop`, which ends every Ray on the host)."""
    return subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--block", *args],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def stop_node(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


def wait_nodes(ray, n: int, timeout: float = 120) -> list[dict]:
    t0 = time.time()
    while time.time() - t0 < timeout:
        alive = [x for x in ray.nodes() if x["Alive"]]
        if len(alive) >= n:
            return alive
        time.sleep(1)
    raise SystemExit(f"the Ray cluster has {len(alive)} node(s) after {timeout:.0f} s, expected {n}")


def outcomes(result: dict) -> list[list]:
    return [[e["task"], e["seed"], e["success"], e["steps"], e["inferences"]] for e in result["episodes"]]


def run_one(name: str, spec, args, tasks, executor) -> dict:
    from vla_compress.evaluate.rollout import evaluate

    first = []
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    result = evaluate(spec, "metaworld-mt10", tasks, args.episodes, executor.workers, threads_per_worker=1,
                      executor=executor, max_steps=args.max_steps,
                      on_episode=lambda r, d, n: first.append(time.perf_counter() - t0) if not first else None)
    wall = time.perf_counter() - t0
    n = len(result["episodes"])
    row = {"config": name, "executor": executor.kind, "workers": executor.workers, "episodes": n,
           "wall_s": round(wall, 2), "episodes_per_s": round(n / wall, 3),
           "first_episode_s": round(first[0], 2) if first else None,
           "steady_episodes_per_s": round((n - 1) / (wall - first[0]), 3) if first and n > 1 else None,
           "successes": result["pooled"]["successes"], "mean_infer_ms": result["latency_ms"]["mean_per_inference"],
           "load_avg_1m": [round(load0[0], 2), round(os.getloadavg()[0], 2)], "outcomes": outcomes(result)}
    print(f"{name:<13} {n} episodes in {wall:7.1f} s = {n / wall:.3f} episodes/s  (first after {row['first_episode_s']} s,"
          f" successes {row['successes']}, load {row['load_avg_1m']})", flush=True)
    return row


def main() -> None:
    from vla_compress.evaluate.executor import get_executor
    from vla_compress.evaluate.rollout import PolicySpec
    from vla_compress.fileio import write_json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="checkpoints/reference-small-chunk")
    ap.add_argument("--tasks", default="reach-v3,push-v3,window-open-v3,drawer-open-v3,button-press-topdown-v3")
    ap.add_argument("--episodes", type=int, default=20, help="per task")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=100)
    ap.add_argument("--serial", action="store_true", help="also the 1-worker in-process reference")
    ap.add_argument("--configs", default="local-pool,ray-local,ray-2-nodes")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/scale_eval.json")
    args = ap.parse_args()

    # One auth mode for the `ray start` nodes and this driver, set before Ray is imported (it reads the
    # mode once): Ray 2.60 turns token auth on for a `ray start` when ~/.ray/auth_token exists (a
    # local ray.init() writes it) and refused a driver left in another mode ("InvalidAuthToken").
    # Token auth, Ray's default for new clusters, with that token file.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    # the code measured: HEAD when the run starts (others may commit while it runs)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    tasks = args.tasks.split(",")
    spec = PolicySpec("torch", str(ROOT / args.checkpoint))
    configs = (["local-serial"] if args.serial else []) + args.configs.split(",")
    rows, nodes_info = [], None
    for name in configs:
        if name == "local-serial":
            rows.append(run_one(name, spec, args, tasks, get_executor("local", 1)))
        elif name == "local-pool":
            rows.append(run_one(name, spec, args, tasks, get_executor("local", args.workers)))
        elif name == "ray-local":
            ex = get_executor("ray", args.workers)
            t0 = time.perf_counter()
            ex._ray()  # the cluster's start, timed apart from the evaluation
            start = time.perf_counter() - t0
            try:
                rows.append({**run_one(name, spec, args, tasks, ex), "cluster_start_s": round(start, 2)})
            finally:
                ex.close()
        elif name == "ray-2-nodes":
            port, logs = free_port(), Path(tempfile.mkdtemp(prefix="scale-eval-ray-"))  # the nodes' own output
            addr = f"127.0.0.1:{port}"
            procs = []
            t0 = time.perf_counter()
            try:
                procs.append(start_node(["--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                                         "--num-cpus", "1", "--include-dashboard", "false",
                                         "--disable-usage-stats"], logs / "head.log"))
                time.sleep(5)
                procs.append(start_node(["--address", addr, "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                                         "--disable-usage-stats"], logs / "worker.log"))
                ex = get_executor("ray", args.workers, address=addr)
                ex._ray()
                alive = wait_nodes(ray, 2)
                start = time.perf_counter() - t0
                try:
                    row = run_one(name, spec, args, tasks, ex)
                    placed = ray.get([a.where.remote() for a in ex.actors])
                    nodes_info = {"nodes": len(alive), "cpus_per_node": [x["Resources"].get("CPU") for x in alive],
                                  "nodes_with_actors": len({p["node"] for p in placed})}
                    rows.append({**row, "cluster_start_s": round(start, 2), **nodes_info})
                finally:
                    ex.close()
                    ray.shutdown()
            finally:
                for p in reversed(procs):
                    stop_node(p)
        else:
            raise SystemExit(f"unknown config {name!r}")
        # what is measured so far, kept if a later configuration fails
        write_json(args.out.with_suffix(".partial.json"), {"commit": commit, "runs": rows})

    ref = rows[0]["outcomes"]
    for r in rows:
        r["outcomes_identical_to_first"] = r["outcomes"] == ref
    out = {"checkpoint": args.checkpoint, "tasks": tasks, "episodes_per_task": args.episodes,
           "max_steps": args.max_steps, "threads_per_worker": 1, "host_cpus": os.cpu_count(),
           "ray": ray.__version__, "commit": commit, "runs": rows, "outcomes": ref,
           "note": "2 CPU cores shared with other jobs (see load_avg_1m): this shows correctness and Ray's fixed "
                   "costs next to the local pool, not scaling beyond 2 workers"}
    for r in rows:
        del r["outcomes"]
    write_json(args.out, out)
    args.out.with_suffix(".partial.json").unlink(missing_ok=True)
    print("\n| config | workers | episodes | wall (s) | episodes/s | first episode (s) | cluster start (s) | "
          "identical outcomes |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['workers']} | {r['episodes']} | {r['wall_s']:.1f} | {r['episodes_per_s']:.3f} | "
              f"{r['first_episode_s']} | {r.get('cluster_start_s', '-')} | {r['outcomes_identical_to_first']} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
