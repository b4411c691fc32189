"""`vla-compress` commands. Heavy imports (torch, simulator) happen inside each command so
that `vla-compress --help` stays instant."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..backends import known_runtimes
from ..errors import VLACompressError


class _Group(click.Group):
    """Turns VLACompressError into a one-line message and exit code 2 (no traceback)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VLACompressError as e:
            click.secho(f"error: {e}", fg="red", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vla-compress")
def main() -> None:
    """Compress, export, profile and verify Vision-Language-Action robot policies."""
    from ..notices import route_third_party_output

    route_third_party_output()  # third-party warnings and log lines go to a log file, not the terminal


def _console():
    from rich.console import Console

    return Console()


def _fmt_count(n: float, unit: str = "") -> str:
    for div, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suf}{unit}"
    return f"{n:.0f} {unit}".strip()


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--json-out", type=click.Path(path_type=Path), help="Also write the summary as JSON.")
@click.option("--allow-pickle", is_flag=True, help="Allow unpickling .pt/.bin files you trust.")
def inspect(checkpoint: Path, json_out: Path | None, allow_pickle: bool) -> None:
    """Family, components, FLOPs/bytes per policy step, token counts and action spec of CHECKPOINT."""
    from rich.table import Table

    from ..fileio import write_json
    from ..models import load_vla
    from ..profile.counting import count_policy_step

    vla = load_vla(checkpoint, allow_pickle=allow_pickle)
    count = count_policy_step(vla)
    tokens = vla.token_counts()
    console = _console()
    console.print(f"[bold]{checkpoint}[/]  family=[cyan]{vla.family}[/]  params={_fmt_count(count.params)}")
    table = Table(title="components (one policy step)")
    for col in ("component", "params", "calls/step", "FLOPs/step", "weight bytes read/step"):
        table.add_column(col, justify="right" if col != "component" else "left")
    for name, c in count.per_component.items():
        table.add_row(name, _fmt_count(c["params"]), str(c["calls"]), _fmt_count(c["flops"]), _fmt_count(c["weight_bytes_read"], "B"))
    table.add_row("[bold]total", _fmt_count(count.params), "", _fmt_count(count.flops), _fmt_count(count.weight_bytes, "B"))
    console.print(table)
    from ..evaluate.metaworld_env import cameras_read_by

    cams = cameras_read_by(vla)
    if cams:
        console.print(f"cameras: {', '.join(cams)}")
    console.print(f"tokens: {tokens.to_dict()}")
    console.print(f"action: {vla.action_spec.to_dict()}")
    if json_out:
        write_json(json_out, {"checkpoint": str(checkpoint), "family": vla.family, "count": count.to_dict(),
                              "tokens": tokens.to_dict(), "action_spec": vla.action_spec.to_dict(),
                              "cameras": list(cams) if cams else None})


@main.command("eval")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--suite", default="metaworld-mt10", show_default=True,
              help="metaworld-mt10 (the project's conventions: 128 px corner camera, 300 steps) or lerobot-metaworld "
                   "(LeRobot 0.6's MetaworldEnv: corner2 at 480 px rotated 180 degrees, 500 steps, seeds 1000+).")
@click.option("--tasks", default="", help="Comma-separated subset of the suite's tasks.")
@click.option("--episodes", default=10, show_default=True, help="Episodes per task (seeded, disjoint from demo seeds).")
@click.option("--workers", default=2, show_default=True, help="Parallel worker processes.")
@click.option("--first-episode", default=0, show_default=True,
              help="Index of the first evaluation episode per task: e.g. 50 after a 50-episode run gives fresh seeds.")
@click.option("--runtime", default="torch", show_default=True,
              help=f"Runtime that runs the checkpoint/artifact: {known_runtimes()}.")
@click.option("--execute-steps", type=int, default=None,
              help="Actions executed from each predicted chunk before the policy runs again (default: the whole chunk).")
@click.option("--max-steps", type=int, default=None, help="Episode step limit (default: the suite's: 300 for metaworld-mt10, 500 for lerobot-metaworld).")
@click.option("--out", type=click.Path(path_type=Path),
              help="Write the full result (per task, per episode) as JSON. Episodes are also appended to "
                   "OUT's .episodes.jsonl as they finish, so an interrupted run resumes from them.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default=None,
              help="Who runs the episodes: local worker processes (default) or Ray actors (pip install "
                   "'vla-compress[ray]'); --workers is the number of either.")
@click.option("--ray-address", default=None, metavar="ADDR",
              help="Join this Ray cluster (e.g. 10.0.0.5:6379, or auto) instead of starting a local one; "
                   "implies --executor ray.")
def eval_cmd(checkpoint: Path, suite: str, tasks: str, episodes: int, workers: int, first_episode: int, runtime: str,
             execute_steps: int | None, max_steps: int | None, out: Path | None, executor: str | None,
             ray_address: str | None) -> None:
    """Closed-loop success of CHECKPOINT in simulation, per task with Wilson 95% intervals."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ..backends import runtime_name
    from ..errors import ConfigError
    from ..evaluate.executor import EpisodeJournal, get_executor
    from ..evaluate.rollout import PolicySpec, evaluate
    from ..fileio import write_json
    from ..models import detect_family

    if episodes < 1 or workers < 1:
        raise ConfigError("--episodes and --workers must be >= 1")
    if first_episode < 0:
        raise ConfigError("--first-episode must be >= 0")
    if (execute_steps is not None and execute_steps < 1) or (max_steps is not None and max_steps < 1):
        raise ConfigError("--execute-steps and --max-steps must be >= 1")
    runtime = runtime_name(runtime)  # an unknown runtime fails here, before any worker starts
    if runtime == "torch":
        detect_family(checkpoint)  # fail fast with a clear message before starting workers
    pool = get_executor(executor or ("ray" if ray_address else "local"), workers, ray_address)  # no ray: exit 2
    spec = PolicySpec(runtime, str(checkpoint), {"execute_steps": execute_steps} if execute_steps else {})
    suite_kwargs = {"max_steps": max_steps} if max_steps else {}
    task_list = [t.strip() for t in tasks.split(",") if t.strip()] or None
    console = _console()
    journal = EpisodeJournal.beside(out, spec, suite, task_list, suite_kwargs) if out else None
    completed = journal.load() if journal else []
    if completed:
        console.print(f"resuming: {len(completed)} episode(s) already recorded in {journal.path}")
    succ = [0]
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("success {task.fields[rate]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console) as progress:
        bar = progress.add_task(f"eval {checkpoint.name}", total=None, rate="-")

        def on_episode(r, done, total):
            if journal:
                journal.append(r)
            succ[0] += r.success
            progress.update(bar, completed=done, total=total, rate=f"{succ[0] / done:.0%}")

        succ[0] = sum(r.success for r in completed)
        try:
            result = evaluate(spec, suite, task_list, episodes, workers, on_episode=on_episode,
                              first_episode=first_episode, executor=pool, completed=completed, **suite_kwargs)
        finally:
            pool.close()
    result["checkpoint"] = str(checkpoint)
    print_eval_table(console, result)
    if out:
        write_json(out, result)
        journal.remove()  # the result holds every episode now; a later run with this --out starts afresh
        console.print(f"wrote {out}")


def print_eval_table(console, result: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{result['suite']}: {result['episodes_per_task']} episodes/task")
    for col in ("task", "success", "95% CI (Wilson)", "mean steps"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for task, r in result["per_task"].items():
        lo, hi = r["ci95"]
        table.add_row(task, f"{r['successes']}/{r['episodes']} ({r['success_rate']:.0%})", f"[{lo:.0%}, {hi:.0%}]", f"{r['mean_steps']:.0f}")
    lo, hi = result["pooled"]["ci95"]
    table.add_row("[bold]mean", f"[bold]{result['mean_success']:.1%}", f"[{lo:.0%}, {hi:.0%}]", "")
    console.print(table)
    lat = result["latency_ms"]
    if lat["mean_per_inference"] is not None:
        console.print(f"policy step latency: mean {lat['mean_per_inference']:.1f} ms, p50 {lat['p50']:.1f} ms "
                      f"(per inference, in the rollout workers); wall {result['wall_s']:.0f} s with {result['workers']} workers")


@main.command("collect-demos")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--episodes-per-task", default=50, show_default=True)
@click.option("--extra-hard", default=0, show_default=True, help="Extra episodes for reach, push, pick-place and peg-insert-side.")
@click.option("--camera", default="corner", show_default=True,
              help="Comma-separated MetaWorld camera names, e.g. corner,gripperPOV (third person and wrist).")
@click.option("--image-size", default=128, show_default=True)
@click.option("--workers", default=2, show_default=True)
@click.option("--overwrite", is_flag=True)
def collect_demos(out: Path, episodes_per_task: int, extra_hard: int, camera: str, image_size: int, workers: int, overwrite: bool) -> None:
    """Collect MetaWorld MT10 scripted-expert demos into a LeRobot v3 dataset at OUT."""
    from rich.progress import Progress

    from ..data.collect import collect
    from ..evaluate.metaworld_env import MT10_TASKS, CameraSpec

    want = {t: episodes_per_task + (extra_hard if t in HARD_TASKS else 0) for t in MT10_TASKS}
    with Progress(console=_console()) as progress:
        bar = progress.add_task("expert episodes", total=sum(want.values()))
        cams = tuple(CameraSpec(c.strip(), image_size) for c in camera.split(",") if c.strip())
        collect(out, MT10_TASKS, want, cams, workers, overwrite=overwrite,
                on_episode=lambda ep: progress.advance(bar) if ep.extras["success"] else None)
    click.echo(f"wrote {out}")


HARD_TASKS = ("reach-v3", "push-v3", "pick-place-v3", "peg-insert-side-v3")


@main.command("train-reference")
@click.option("--dataset", required=True, multiple=True, type=click.Path(path_type=Path),
              help="LeRobot v3 dataset (collect-demos); repeat to add e.g. collect-dagger episodes (training only; "
                   "validation comes from the first).")
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--head", type=click.Choice(["regression", "tokens"]), default="regression", show_default=True)
@click.option("--steps", default=4000, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--lr", default=3e-4, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=2, show_default=True)
@click.option("--init-from", default="", help="Start vision/projector/backbone from this checkpoint.")
@click.option("--save-every", default=0, show_default=True, help="Also save snapshots every N steps.")
@click.option("--cameras", default="", help="Comma-separated cameras the model reads (default: the preset's, "
                                            "corner), e.g. corner,gripperPOV.")
@click.option("--warmup", default=200, show_default=True, help="Linear learning-rate warm-up steps.")
@click.option("--aux-scene", default=0.0, show_default=True,
              help="Weight of an auxiliary loss that predicts object and goal positions from the visual tokens "
                   "(targets replayed from the demonstrations; never a model input, not saved). 0 = off.")
@click.option("--state-noise", default=0.0, show_default=True,
              help="Std of Gaussian noise on the normalised proprio input during training (0 = off).")
def train_reference(dataset: tuple[Path, ...], out: Path, head: str, steps: int, batch_size: int, lr: float, seed: int, threads: int,
                    init_from: str, save_every: int, cameras: str, warmup: int, aux_scene: float, state_noise: float) -> None:
    """Train reference-small by behaviour cloning (seeded, reproducible; CPU or GPU)."""
    from ..train.bc import TrainConfig, train

    cfg = TrainConfig(head=head, steps=steps, batch_size=batch_size, lr=lr, seed=seed, threads=threads, init_from=init_from,
                      save_every=save_every, warmup=warmup, aux_scene=aux_scene, state_noise=state_noise,
                      cameras=tuple(c.strip() for c in cameras.split(",") if c.strip()))
    path = train(list(dataset), out, cfg, log=lambda m: click.echo(m))
    click.echo(f"wrote {path}")


@main.command("collect-dagger")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--episodes-per-task", default=10, show_default=True)
@click.option("--tasks", default="", help="Comma-separated MT10 tasks (default: all ten).")
@click.option("--beta", default=0.0, show_default=True, help="Probability of executing the expert's action at a step.")
@click.option("--start-index", default=500, show_default=True, help="First demo seed index (training demos use 0..).")
@click.option("--workers", default=2, show_default=True)
@click.option("--runtime", default="torch", show_default=True, help=f"Runtime that runs CHECKPOINT: {known_runtimes()}.")
@click.option("--overwrite", is_flag=True)
def collect_dagger_cmd(checkpoint: Path, out: Path, episodes_per_task: int, tasks: str, beta: float, start_index: int,
                       workers: int, runtime: str, overwrite: bool) -> None:
    """Roll out CHECKPOINT in MetaWorld and label every state it reaches with the scripted expert's
    action (DAgger); writes a LeRobot v3 dataset at OUT for train-reference --dataset."""
    from rich.progress import Progress

    from ..backends import runtime_name
    from ..data.dagger import collect_dagger
    from ..evaluate.rollout import PolicySpec
    from ..evaluate.suites import get_suite

    task_list = get_suite("metaworld-mt10", [t.strip() for t in tasks.split(",") if t.strip()] or None).tasks
    successes = [0]

    def seen(ep) -> None:
        successes[0] += ep.extras["success"]
        progress.advance(bar)

    with Progress(console=_console()) as progress:
        bar = progress.add_task("policy episodes", total=episodes_per_task * len(task_list))
        collect_dagger(PolicySpec(runtime_name(runtime), str(checkpoint)), out, task_list, episodes_per_task, beta, workers,
                       start_index, overwrite=overwrite, on_episode=seen)
    click.echo(f"wrote {out} ({successes[0]}/{episodes_per_task * len(task_list)} episodes succeeded)")


from .hardware_cmd import hardware  # noqa: E402
main.add_command(hardware)

from .profile_cmd import profile  # noqa: E402
main.add_command(profile)

from .export_cmd import export  # noqa: E402
main.add_command(export)

from .sweep_cmd import sweep  # noqa: E402
main.add_command(sweep)

from .search_cmd import search  # noqa: E402
main.add_command(search)

from .pipeline_cmd import compress, demo, recipes, report  # noqa: E402
for _cmd in (compress, demo, report, recipes):
    main.add_command(_cmd)


if __name__ == "__main__":
    main()
