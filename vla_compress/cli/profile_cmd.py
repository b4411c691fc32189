"""`vla-compress profile`: measured latency here and roofline estimates on device profiles.

torch, rich and the profiler are imported inside the command so that `vla-compress --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..backends import runtime_names

_GROUP_COLUMNS = ("vision", "projector", "prefill", "decode", "action_head", "other")


@click.command("profile")
@click.argument("targets", nargs=-1, required=True)
@click.option("--hardware", "-H", "hardware", multiple=True,
              help="Device profile to estimate on (repeatable); see `vla-compress hardware list`.")
@click.option("--precision", "-p", "precisions", multiple=True,
              help="Deployment precision for estimates (repeatable): fp32, fp16, bf16, int8, int4 (weight-only W4A16), "
                   "w8a16, ... Default: the artifact's own, else fp16 where the device computes in it.")
@click.option("--runtime", default=None, help=f"Runtime for estimates ({', '.join(runtime_names())}, or an alias: "
                                              "onnx); default: the first of tensorrt, onnxruntime, torch, llama.cpp "
                                              "that runs the precision on the device.")
@click.option("--power-mode", default=None, help="Power mode for estimates (default: the profile's default).")
@click.option("--steps", default=20, show_default=True, help="Timed policy steps when measuring here.")
@click.option("--warmup", default=3, show_default=True, help="Untimed steps before them.")
@click.option("--threads", type=int, default=None, help="Threads for the local runtime (default: torch's / 1 for ONNX).")
@click.option("--no-measure", is_flag=True, help="Estimate only (presets are always estimate-only).")
@click.option("--calibrate", is_flag=True,
              help="Fit the estimator's efficiency factors to this run's measurements and store them beside the "
                   "calibration profile (local-host is regenerated from a quick measurement of this machine).")
@click.option("--calibration-profile", default="local-host", show_default=True,
              help="Profile that describes this machine, for --calibrate.")
@click.option("--out", type=click.Path(path_type=Path), help="Write the full result as JSON.")
@click.option("--allow-pickle", is_flag=True, help="Allow unpickling .pt/.bin files you trust.")
def profile(targets: tuple[str, ...], hardware: tuple[str, ...], precisions: tuple[str, ...], runtime: str | None,
            power_mode: str | None, steps: int, warmup: int, threads: int | None, no_measure: bool, calibrate: bool,
            calibration_profile: str, out: Path | None, allow_pickle: bool) -> None:
    """Latency, control rate and memory of each TARGET: measured on this machine and estimated on --hardware.

    TARGET is a checkpoint directory, an exported artifact directory (artifact.json) or preset:NAME
    (e.g. preset:reference-100m, preset:openvla-7b-shape, preset:openvla-7b; meta device, estimate only).
    """
    from ..backends import runtime_name
    from ..errors import ConfigError
    from ..fileio import write_json
    from ..profile.runner import profile_targets

    if steps < 1 or warmup < 0:
        raise ConfigError("--steps must be >= 1 and --warmup >= 0")
    runtime = runtime_name(runtime) if runtime else None  # `onnx` is `onnxruntime`, as hardware profiles name it
    from ..profile.estimate import check_precision_name

    for p in precisions:
        check_precision_name(p)  # an unknown --precision is an error, not a table row "not estimated"
    console = _console()
    with console.status("profiling") as status:
        result = profile_targets(list(targets), list(hardware), list(precisions), runtime=runtime,
                                 power_mode=power_mode, steps=steps, warmup=warmup, measure=not no_measure,
                                 calibrate=calibrate, calibration_profile=calibration_profile, threads=threads,
                                 allow_pickle=allow_pickle, progress=lambda msg: status.update(msg))
    _print(console, result)
    if out:
        write_json(out, result)
        console.print(f"wrote {out}")


def _console():
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=160)


def _ms(v) -> str:
    return "-" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")


def _bytes(v) -> str:
    if v is None:
        return "-"
    for div, suf in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if v >= div:
            return f"{v / div:.2f} {suf}"
    return f"{v:.0f} B"


def _print(console, result: dict) -> None:
    from rich.table import Table

    table = Table(title="policy step: measured here / estimated on device profiles")
    for col in ("target", "device", "precision", "runtime", "p50 ms", "p99 ms", "Hz (chunk)", "memory", "fits", "source"):
        table.add_column(col, justify="right" if col in ("p50 ms", "p99 ms", "Hz (chunk)", "memory") else "left",
                         overflow="fold")
    for r in result["rows"]:
        if r["error"]:
            table.add_row(r["target"], r["device"], r["precision"] or "-", r["runtime"] or "-", "-", "-", "-", "-", "-",
                          f"[red]not estimated: {r['error']}")
            continue
        hz = f"{r['control_hz']:.1f}" + (f" (K={r['chunk_size']})" if r.get("chunk_size", 1) != 1 else "")
        fits = "-" if r["fits"] is None else ("[green]yes" if r["fits"] else
                                              f"[red]no: needs {_bytes(r['memory_bytes'])} of "
                                              f"{_bytes(r.get('device_memory_bytes'))}")
        source = "[bold]measured" if r["kind"] == "measured" else \
            ("estimated (calibrated)" if r["calibrated"] else "estimated (default etas)")
        prec = (r["precision"] or "-") + (" (weight-only)" if r.get("weight_only") else "")
        table.add_row(r["target"], r["device"], prec, r["runtime"] or "-", _ms(r["p50_ms"]),
                      _ms(r["p99_ms"]), hz, _bytes(r["memory_bytes"]), fits, source)
    console.print(table)
    keys = [g for g in _GROUP_COLUMNS if any(g in r["breakdown_ms"] for r in result["rows"])]
    keys += sorted({k for r in result["rows"] for k in r["breakdown_ms"]} - set(keys))
    if keys:
        bd = Table(title="breakdown per component (ms)")
        for col in ("target", "device", "precision", *keys):
            bd.add_column(col, justify="left" if col in ("target", "device", "precision") else "right", overflow="fold")
        for r in result["rows"]:
            if not r["error"]:
                bd.add_row(r["target"], r["device"], r["precision"] or "-", *[_ms(r["breakdown_ms"].get(k)) for k in keys])
        console.print(bd)
    console.print("Hz = actions per second executing the whole chunk (chunk / latency); memory: measured = peak process "
                  "RSS during the timed steps, estimated = weights + KV cache + activations at the precision")
    for t in result["targets"]:
        for note in t["notes"]:
            console.print(f"note ({t['target']}): {note}")
    cal = result.get("calibration")
    if cal:
        for rt, fit in cal["fits"].items():
            console.print(f"calibration {cal['profile']} / {rt}: eta_compute={fit['eta_compute']:.3f} "
                          f"eta_memory={fit['eta_memory']:.3f} launch={fit['launch_overhead_us']:.2f} µs "
                          f"(fitted {', '.join(fit['fitted']) or 'nothing'}; rms error {fit['rms_relative_error']:.1%}) "
                          f"-> {fit['saved_to'] or 'not saved'}")
