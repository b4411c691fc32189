"""`vla-compress compress`, `report`, `demo` and `recipes`: the pipeline from the terminal.

Exit codes of compress/demo: 0 the deployed variant passed its gate and budgets, 1 the gate failed
(success regression beyond budget, failed parity, over the latency budget), 3 inconclusive (run more
episodes), 2 an error (bad input, a stage that raised).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import click

from ..resources import shipped

DEMO_CHECKPOINT = shipped("checkpoints") / "reference-small-chunk"  # shipped with the package (resources.py)
DEMO_RECIPE = "demo-cpu-onnx-int8"


class _RichHooks:
    """Stage lines and an episode progress bar on the terminal."""

    def __init__(self, console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("success {task.fields[rate]}"), TimeElapsedColumn(), console=console,
                                 transient=False)
        self.bars: dict[str, int] = {}

    def stage_start(self, name: str, what: str) -> None:
        self.console.print(f"[bold]▶ {name}[/bold]: {what}")

    def stage_done(self, name: str, cached: bool, wall_s: float) -> None:
        if cached:
            self.console.print(f"[dim]✓ {name}: cached (finished earlier, same inputs)[/dim]")
        else:
            self.console.print(f"[green]✓ {name}[/green] in {wall_s:.1f} s")

    def say(self, message: str) -> None:
        self.console.print(f"  {message}")

    def episodes(self, name: str, done: int, total: int, successes: int) -> None:
        if name not in self.bars:
            if not self.progress.live.is_started:
                self.progress.start()
            self.bars[name] = self.progress.add_task(f"  eval {name}", total=total, rate="-")
        self.progress.update(self.bars[name], completed=done, rate=f"{successes / done:.0%}")
        if done == total:  # variants evaluated together have a bar each: the display stops with the last
            self.progress.remove_task(self.bars.pop(name))
            if not self.bars:
                self.progress.stop()


def _run(checkpoint: Path, profile: str, out: Path, overrides: tuple[str, ...], allow_pickle: bool) -> None:
    import logging

    from rich.console import Console

    from ..pipeline.recipe import load_recipe
    from ..pipeline.run import Pipeline

    console = Console()
    # torch.onnx lists every torchvision op it skips registering at each export: noise, not news
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    recipe = load_recipe(profile, list(overrides))  # bad recipes fail here, before the run folder exists
    command = " ".join(shlex.quote(a) for a in ["vla-compress", *sys.argv[1:]])
    t0 = time.perf_counter()
    pipe = Pipeline(checkpoint, recipe, out, hooks=_RichHooks(console), allow_pickle=allow_pickle, command=command)
    m = pipe.run()
    v = m["verdict"]
    colour = {"pass": "green", "fail": "red", "inconclusive": "yellow"}[v["verdict"]]
    console.print(f"\n[bold {colour}]{v['verdict'].upper()}[/bold {colour}] — deploy variant {v['deploy']!r} on "
                  f"{recipe.target['hardware']}")
    for r in v["reasons"]:
        console.print(f"  • {r}")
    console.print(f"report: {out / 'report.html'}   manifest: {out / 'manifest.json'}   "
                  f"({time.perf_counter() - t0:.0f} s)")
    sys.exit(v["exit_code"])


@click.command("compress")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--profile", "-p", "profile", required=True,
              help="Recipe: a name from profiles/ (see `vla-compress recipes`) or a path to a YAML file.")
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True,
              help="Run folder (created; an existing run folder is resumed, finished stages are reused).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value, e.g. --set evaluation.episodes=20 --set passes.0.group_size=32.")
@click.option("--allow-pickle", is_flag=True, help="Allow unpickling .pt/.bin files you trust.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default=None,
              help="Who runs the evaluation episodes (overrides the recipe's evaluation.executor): local worker "
                   "processes or Ray actors (pip install 'vla-compress[ray]').")
@click.option("--ray-address", default=None, metavar="ADDR",
              help="Join this Ray cluster instead of starting a local one; implies --executor ray.")
def compress(checkpoint: Path, profile: str, out: Path, overrides: tuple[str, ...], allow_pickle: bool,
             executor: str | None, ray_address: str | None) -> None:
    """Run a recipe on CHECKPOINT: baseline eval, passes, exports, eval of every variant, profile, gate, report."""
    if executor or ray_address:  # a recipe override, validated (and recorded in the manifest) like any other
        kind = executor or "ray"
        overrides += (f"evaluation.executor={{kind: {kind}, address: {json.dumps(ray_address)}}}",)
    _run(checkpoint, profile, out, overrides, allow_pickle)


@click.command("demo")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True)
@click.option("--profile", "-p", "profile", default=DEMO_RECIPE, show_default=True)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe value.")
def demo(out: Path, profile: str, overrides: tuple[str, ...]) -> None:
    """The shipped reference-small checkpoint through a shipped recipe, end to end, with the report."""
    if not (DEMO_CHECKPOINT / "config.json").is_file():  # a wheel built without it, or a partial checkout
        from ..errors import CheckpointError

        raise CheckpointError(DEMO_CHECKPOINT, "the demo checkpoint is not installed with this copy of vla-compress; "
                                               f"run `vla-compress compress CHECKPOINT --profile {profile}` "
                                               "on a checkpoint of your own, or install from a source checkout")
    _run(DEMO_CHECKPOINT, profile, out, overrides, False)


@click.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Where to write the HTML (default RUN_DIR/report.html).")
def report(run_dir: Path, out: Path | None) -> None:
    """Render RUN_DIR's manifest as one self-contained HTML page."""
    from ..report.html import write_report

    click.echo(f"wrote {write_report(run_dir, out)}")


@click.command("recipes")
def recipes() -> None:
    """The shipped recipes (profiles/*.yaml): target, passes, exports, budget."""
    from rich.console import Console
    from rich.table import Table

    from ..pipeline.recipe import list_recipes, load_recipe

    t = Table("recipe", "target", "passes", "exports", "success budget", "latency budget")
    for name in list_recipes():
        r = load_recipe(name)
        t.add_row(name, f"{r.target['hardware']} ({r.target['runtime']}, {r.target['precision']})",
                  ", ".join(p.name for p in r.passes) or "-", ", ".join(r.variant_names()[1 if r.passes else 0:]) or "-",
                  f"-{r.budgets['max_success_drop']:.0%}",
                  f"{r.budgets['max_latency_ms']} ms" if r.budgets["max_latency_ms"] else "-")
    Console().print(t)
