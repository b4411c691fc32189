"""`vla-compress hardware list|show`: the device profiles in hardware/*.yaml, with their sources.

rich and yaml are imported inside the commands so that `vla-compress --help` stays instant.
"""

from __future__ import annotations

import click

# Units shown beside a value, by the last part of its key.
_UNITS = {"memory_gb": "GB", "bandwidth_gbs": "GB/s", "clock_mhz": "MHz", "watts": "W", "launch_overhead_us": "µs"}


@click.group("hardware")
def hardware() -> None:
    """Device profiles (hardware/*.yaml) used by the latency estimator."""


@hardware.command("list")
def list_cmd() -> None:
    """All device profiles: memory, bandwidth, dense FP16/INT8 peaks and runtimes."""
    from rich.table import Table

    from ..hardware import hardware_dir, list_hardware, load_hardware

    table = Table(title=f"hardware profiles ({hardware_dir()})")
    for col in ("name", "kind", "memory GB", "BW GB/s", "fp16 TFLOPS", "int8 TOPS"):
        table.add_column(col, justify="left" if col in ("name", "kind") else "right", no_wrap=True)
    table.add_column("runtimes", min_width=16)
    for name in list_hardware():
        p = load_hardware(name)
        table.add_row(p.name, p.kind, _num(p.memory_gb), _num(p.bandwidth()), _peak(p, "fp16"), _peak(p, "int8"),
                      ", ".join(p.runtimes))
    console = _console()
    console.print(table)
    console.print("dense peaks at each device's default power mode; `vla-compress hardware show NAME` for the rest")


@hardware.command("show")
@click.argument("name")
def show_cmd(name: str) -> None:
    """Every field of profile NAME (a name from `hardware list`, or a path to a YAML file), with its source."""
    from rich.table import Table

    from ..hardware import load_hardware

    p = load_hardware(name)
    console = _console()
    console.print(f"[bold]{p.display_name}[/]  ({p.name}, {p.kind}"
                  f"{f', compute capability {p.compute_capability}' if p.compute_capability else ''})")
    console.print(f"file: {p.path}")
    console.print(f"calibration: {p.calibration_path or 'none (defaults below)'}")
    console.print("peaks are dense (no 2:4 sparsity): TFLOPS for floating point, TOPS for integer")

    table = Table(title="sourced figures", show_lines=False)
    table.add_column("field", overflow="fold")
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("source", overflow="fold")
    for key, fact in p.facts.items():
        table.add_row(key, f"{_num(fact.value)} {_unit(key)}".strip(), fact.source)
    console.print(table)

    modes = Table(title=f"power modes (default: {p.default_power_mode})")
    for col in ("mode", "watts", "bandwidth GB/s", "fp16", "int8", "notes"):
        modes.add_column(col, justify="left" if col in ("mode", "notes") else "right", overflow="fold")
    for mode in p.power_modes.values():
        modes.add_row(mode.name, _num(mode.watts) if mode.watts else "-", _num(p.bandwidth(mode.name)),
                      _peak(p, "fp16", mode.name), _peak(p, "int8", mode.name), mode.notes)
    console.print(modes)

    runtimes = Table(title="runtimes")
    for col in ("runtime", "computes in", "weight-only formats", "notes"):
        runtimes.add_column(col, overflow="fold")
    for rt in p.runtimes.values():
        acc = " (fp16 accumulate)" if rt.fp16_accumulate else ""
        runtimes.add_row(rt.name, ", ".join(rt.precisions) + acc, ", ".join(rt.weight_only) or "-", rt.notes)
    console.print(runtimes)
    if p.dla:
        console.print(f"DLA: {p.dla.count} engines, {', '.join(p.dla.precisions)}")
    for note in p.notes:
        console.print(f"note: {note}")


def _console():
    """A rich console; piped output (files, tests) gets 140 columns instead of rich's 80 so tables stay readable."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=140)


def _num(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _unit(key: str) -> str:
    last = key.rsplit(".", 1)[-1]
    if key.startswith(("peak_tflops", "fp16_accumulate_peak_tflops")) or ".peak_tflops." in key or "peak_tops" in key:
        return "TOPS" if last.startswith("int") else "TFLOPS"
    return _UNITS.get(last, "")


def _peak(profile, precision: str, power_mode: str | None = None) -> str:
    if precision not in profile.peak_tflops:
        return "-"
    return _num(profile.peak(precision, power_mode))
