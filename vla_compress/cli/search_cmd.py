"""`vla-compress search`: the recipe that loses the least closed-loop success within a latency budget.

Exit codes: 0 a winner passed its gate and the budget (its recipe written), 1 no candidate did,
3 the closest ones were inconclusive at the episode cap, 2 an error (bad input, a stage that raised).
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import click


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@click.command("search")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--hardware", "-H", required=True, help="Device profile the budget is for (see `vla-compress hardware list`).")
@click.option("--runtime", default=None, help="Runtime on the device (default: the profile's first for its precisions).")
@click.option("--latency-ms", type=float, default=None, help="Budget: p50 policy step on the device, in ms.")
@click.option("--control-hz", type=float, default=None, help="Budget: control rate on the device (actions per s).")
@click.option("--precisions", default=None, help="Comma-separated export precisions to try (default: all the runtime takes).")
@click.option("--max-cuts", default=3, show_default=True, help="Most structured cuts (from the sweep) in one candidate.")
@click.option("--shortlist", default=3, show_default=True, help="Candidates meeting the budget evaluated in closed loop.")
@click.option("--tasks", default=None, help="Comma-separated tasks of the suite (default: all of MT10).")
@click.option("--episodes", default=20, show_default=True, help="Cap on paired episodes per task (sequential gate).")
@click.option("--episodes-per-round", default=5, show_default=True, help="Episodes per task between two looks.")
@click.option("--max-drop", default=0.05, show_default=True, help="Success loss the winner may have (0.05 = 5 points).")
@click.option("--confidence", default=0.95, show_default=True)
@click.option("--max-steps", type=int, default=None, help="Episode length (default: the suite's).")
@click.option("--workers", default=2, show_default=True, help="Episode workers.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--ray-address", default=None, metavar="ADDR", help="Join this Ray cluster; implies --executor ray.")
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Run folder (resumed if it exists).")
@click.option("--recipe-out", type=click.Path(path_type=Path), default=None,
              help="Where to write the winning recipe (default OUT/recipe.yaml).")
@click.option("--allow-pickle", is_flag=True, help="Allow unpickling .pt/.bin files you trust.")
def search(checkpoint: Path, hardware: str, runtime: str | None, latency_ms: float | None, control_hz: float | None,
           precisions: str | None, max_cuts: int, shortlist: int, tasks: str | None, episodes: int,
           episodes_per_round: int, max_drop: float, confidence: float, max_steps: int | None, workers: int, executor: str,
           ray_address: str | None, out: Path, recipe_out: Path | None, allow_pickle: bool) -> None:
    """Find the recipe for CHECKPOINT with the least closed-loop success loss within a latency budget on a device."""
    import logging

    from rich.console import Console
    from rich.table import Table

    from ..pipeline.search import Search, SearchSpec
    from .pipeline_cmd import _RichHooks

    console = Console()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    spec = SearchSpec(hardware=hardware, runtime=runtime, max_latency_ms=latency_ms, min_control_hz=control_hz,
                      precisions=_csv(precisions), max_cuts=max_cuts, shortlist=shortlist, tasks=_csv(tasks),
                      episodes=episodes, episodes_per_round=episodes_per_round, max_drop=max_drop,
                      confidence=confidence, max_steps=max_steps, workers=workers, executor=executor, ray_address=ray_address)
    command = " ".join(shlex.quote(a) for a in ["vla-compress", *sys.argv[1:]])
    t0 = time.perf_counter()
    m = Search(checkpoint, spec, out, hooks=_RichHooks(console), allow_pickle=allow_pickle, command=command,
               recipe_out=recipe_out).run()
    s, v = m["search"], m["verdict"]
    t = Table("candidate", "|Δ| mean", "here ms", "device ms", "budget", "closed loop",
              title=f"search on {hardware} (cuts per level: see the report)")
    for r in s["candidates"]:
        g = v["gates"].get(r["name"])
        loop = f"{g['verdict']} {g['difference']:+.1%} ({g['episodes']} pairs)" if g else "-"
        t.add_row(r["name"], f"{r['fidelity']['action_l1']:.4f}" if r["fidelity"] else r["status"],
                  f"{r['measured_p50_ms']:.2f}" if r["measured_p50_ms"] else "-",
                  f"{r['estimated_p50_ms']:.2f}" if r["estimated_p50_ms"] is not None else "-",
                  "meets" if r["meets_budget"] else "over", loop)
    console.print(t)
    colour = {"pass": "green", "fail": "red", "inconclusive": "yellow"}[v["verdict"]]
    console.print(f"\n[bold {colour}]{v['verdict'].upper()}[/bold {colour}] — winner: {s['winner'] or 'none'}")
    for r in v["reasons"]:
        console.print(f"  • {r}")
    console.print(f"report: {out / 'report.html'}   manifest: {out / 'manifest.json'}   "
                  f"({time.perf_counter() - t0:.0f} s)")
    sys.exit(v["exit_code"])
