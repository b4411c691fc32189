"""`vla-compress sweep`: offline sensitivity of a checkpoint to each pruning/quantization step."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("sweep")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--dataset", type=click.Path(path_type=Path),
              help="LeRobot dataset to draw calibration and held-out frames from (default: collect one scripted-expert "
                   "episode per MT10 task into a temporary folder).")
@click.option("--kinds", default="layer-drop,width-prune,visual-token-prune,int8,int4", show_default=True)
@click.option("--samples", default=16, show_default=True, help="Held-out frames the action error is measured on.")
@click.option("--calibration-samples", default=16, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="Write the rows as JSON.")
@click.option("--allow-pickle", is_flag=True, help="Allow unpickling .pt/.bin files you trust.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Who scores the candidates: local worker processes or Ray (pip install 'vla-compress[ray]').")
@click.option("--workers", default=1, show_default=True, help="Workers scoring candidates (each loads the checkpoint).")
@click.option("--ray-address", default=None, metavar="ADDR", help="Join this Ray cluster; implies --executor ray.")
def sweep(checkpoint: Path, dataset: Path | None, kinds: str, samples: int, calibration_samples: int,
          out: Path | None, allow_pickle: bool, executor: str, workers: int, ray_address: str | None) -> None:
    """Action error vs the original, parameters and FLOPs left, for every single cut: what is safe to prune?"""
    import tempfile

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from ..evaluate.executor import get_executor
    from ..fileio import write_json
    from ..models import load_vla
    from ..passes.calibration import observations_from_lerobot
    from ..passes.sweep import sweep as run_sweep

    ex = get_executor("ray" if ray_address else executor, workers, ray_address)  # Ray missing: a clear error first
    vla = load_vla(checkpoint, allow_pickle=allow_pickle)
    kind_list = tuple(k.strip() for k in kinds.split(",") if k.strip())
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        if dataset is None:
            from ..data.collect import collect
            from ..evaluate.metaworld_env import CameraSpec, cameras_read_by

            console.print("collecting 1 scripted-expert episode per MT10 task for held-out frames")
            cams = cameras_read_by(vla)
            dataset = collect(Path(tmp) / "frames", episodes_per_task=1,
                              camera=tuple(CameraSpec(c) for c in cams) if cams else CameraSpec(),
                              workers=2, start_index=950)
        held_out = observations_from_lerobot(dataset, samples, seed=1)
        calibration = observations_from_lerobot(dataset, calibration_samples, seed=2)
        with Progress(console=console, transient=True) as progress:
            bar = progress.add_task("sweep", total=None)
            parallel = ex.kind != "local" or ex.workers > 1
            rows = run_sweep(vla, calibration, held_out, kind_list,
                             progress=lambda label, n, total: progress.update(bar, description=label, completed=n - 1,
                                                                              total=total),
                             executor=ex if parallel else None, checkpoint=str(checkpoint), allow_pickle=allow_pickle)
        ex.close()
    t = Table("candidate", "action L1 vs original", "max |Δ|", "params", "FLOPs", "state dict",
              title=f"sensitivity of {checkpoint} ({samples} held-out frames)")
    for r in rows:
        if "error" in r:
            t.add_row(r["candidate"], f"[dim]{r['error']}[/dim]", "", "", "", "")
        else:
            t.add_row(r["candidate"], f"{r['action_l1']:.4f}", f"{r['max_abs']:.3f}", f"{r['params_fraction']:.0%}",
                      f"{r['flops_fraction']:.0%}", f"{r['state_dict_fraction']:.0%}")
    console.print(t)
    if out:
        write_json(out, {"checkpoint": str(checkpoint), "samples": samples, "rows": rows})
        console.print(f"wrote {out}")
