"""`vla-compress export`: checkpoint -> validated artifacts in any registered format.

Formats and their precisions come from the backend records (vla_compress/backends.py: onnx,
tensorrt, gguf, ... as registered; a runtime's name also names its format, `-f onnxruntime`), so a
new exporter needs no change here. Every artifact is validated on
held-out observations (export/observations.py) with the exporter's own `validate()`, and the
command exits 1 when any artifact failed (its manifest says "failed"), 2 on bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..backends import backends, export_formats

_PARITY_COLS = ("max abs", "cosine", "action L1", "tokens")


@click.command("export")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--format", "-f", "fmt", required=True, help=f"Export format: {', '.join(export_formats())}.")
@click.option("--precision", "-p", "precisions", multiple=True,
              help="Precision(s) of the format (repeatable): " + "; ".join(
                  f"{b.format}: {', '.join(b.precisions)}" for b in backends() if b.format)
              + ". Default: the format's own (onnx fp32, tensorrt fp16).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Artifact directory; with several precisions, the parent of one <format>-<precision> directory each.")
@click.option("--dataset", type=click.Path(path_type=Path),
              help="LeRobot dataset: validate on held-out episodes, calibrate on others (default: the family's examples).")
@click.option("--samples", default=16, show_default=True, help="Held-out observations to validate on.")
@click.option("--calibration-samples", default=32, show_default=True, help="Observations to calibrate on (static quantization).")
@click.option("--base", type=click.Path(path_type=Path),
              help="An ONNX artifact of this checkpoint to start from (quantize it / build TensorRT engines from it).")
@click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE",
              help="Exporter config field (repeatable), e.g. opset=19, block_size=64, max_batch=4, build_engine=never.")
@click.option("--tolerance", "-t", "tolerances", multiple=True, metavar="KEY=VALUE",
              help="Override the parity gate (repeatable): max_abs, min_cosine, max_action_l1, min_token_match.")
@click.option("--seed", default=0, show_default=True, help="Seed of the observation sampling.")
@click.option("--threads", default=1, show_default=True, help="Threads for the runtimes during calibration/validation.")
@click.option("--json-out", type=click.Path(path_type=Path), help="Also write the summary as JSON.")
@click.option("--allow-pickle", is_flag=True, help="Allow unpickling .pt/.bin files you trust.")
def export(checkpoint: Path, fmt: str, precisions: tuple[str, ...], out: Path, dataset: Path | None, samples: int,
           calibration_samples: int, base: Path | None, options: tuple[str, ...], tolerances: tuple[str, ...],
           seed: int, threads: int, json_out: Path | None, allow_pickle: bool) -> None:
    """Export CHECKPOINT to --format at each --precision, validate parity against torch, print a summary."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from ..errors import ConfigError
    from ..export.artifact import Artifact
    from ..export.base import ExportInputs
    from ..export.observations import export_observations
    from ..export.registry import get_exporter
    from ..fileio import write_json
    from ..models import load_vla

    exporter = get_exporter(fmt)  # unknown format: a one-line error before anything heavy
    fmt = exporter.format  # `-f onnxruntime` is the onnx format
    configs = build_configs(exporter, precisions, options, tolerances)
    if samples < 1 or calibration_samples < 1:
        raise ConfigError("--samples and --calibration-samples must be >= 1")
    targets = {c.precision: (out if len(configs) == 1 else out / f"{fmt}-{c.precision}") for c in configs}
    console = Console() if Console().is_terminal else Console(width=160)
    rows: list[dict] = []
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        bar = progress.add_task(f"loading {checkpoint}", total=2 * len(configs) + 1)
        vla = load_vla(checkpoint, allow_pickle=allow_pickle)
        progress.update(bar, description="sampling observations")
        obs = export_observations(vla, checkpoint, dataset, samples, calibration_samples, seed)
        progress.advance(bar)
        base_art = Artifact.load(base) if base is not None else None
        for config in configs:
            target = targets[config.precision]
            row = {"format": fmt, "precision": config.precision, "path": str(target)}
            rows.append(row)
            progress.update(bar, description=f"export {fmt} {config.precision}")
            inputs = ExportInputs(calibration=obs.calibration, example=obs.calibration[:2], source=checkpoint,
                                  base=base_art, threads=threads)
            art = _attempt(row, lambda: exporter.export(vla, config, target, inputs))
            progress.advance(bar)
            if art is not None:
                progress.update(bar, description=f"validate {fmt} {config.precision} on {len(obs.validation)} observations")
                _attempt(row, lambda: exporter.validate(art, vla, obs.validation, threads=threads))
            progress.advance(bar)
            _fill_row(row, target)
            if base is None and art is not None and art.format == "onnx" and art.precision == "fp32" \
                    and row["status"] == "ok":
                base_art = art  # later precisions quantize this traced graph instead of tracing again
    console.print(f"validation observations: {obs.source}")
    print_summary(console, rows)
    if json_out:
        write_json(json_out, {"checkpoint": str(checkpoint), "format": fmt, "observations": obs.source, "artifacts": rows})
        console.print(f"wrote {json_out}")
    if any(r["status"] == "failed" for r in rows):
        raise SystemExit(1)


def build_configs(exporter: Any, precisions: tuple[str, ...], options: tuple[str, ...],
                  tolerances: tuple[str, ...]) -> list:
    """One validated config per precision (unknown precisions/keys raise ConfigError naming the known ones)."""
    import dataclasses

    from ..errors import ConfigError

    cls = exporter.config_cls
    fields = _pairs(options, "--option")
    tolerance = _pairs(tolerances, "--tolerance") or None
    if "precision" in fields or "tolerance" in fields:
        raise ConfigError("set precision with --precision and tolerances with --tolerance, not --option")
    default = next(f.default for f in dataclasses.fields(cls) if f.name == "precision")
    chosen = list(dict.fromkeys(precisions)) or [default]
    chosen.sort(key=lambda p: p != "fp32")  # fp32 first: an fp32 ONNX graph is the base of the others
    return [cls.from_dict({"format": cls.format, "precision": p, "tolerance": tolerance, **fields}) for p in chosen]


def _pairs(items: tuple[str, ...], flag: str) -> dict:
    import yaml

    from ..errors import ConfigError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"{flag} {item!r}: value is not valid YAML ({getattr(e, 'problem', None) or e})") from None
    return out


def _attempt(row: dict, fn: Any) -> Any:
    """Run an export/validate step; an ExportError marks the row failed instead of stopping the command."""
    from ..errors import ExportError

    try:
        return fn()
    except ExportError as e:
        row["error"] = str(e)
        return None


def _fill_row(row: dict, path: Path) -> None:
    from ..export.artifact import Artifact

    try:
        art = Artifact.load(path)
    except Exception:
        row.update(status="failed", files=[], bytes=0, parity=None)
        return
    m = art.manifest
    parity = m.get("parity") or m.get("graph_parity")
    row.update(status=art.status, files=sorted(art.files), bytes=sum(f["bytes"] for f in art.files.values()),
               parity=parity, parity_of="artifact" if m.get("parity") else ("graph (ONNX Runtime)" if parity else None),
               note=m.get("validation_note") or m.get("engine_note"), failures=art.failures,
               readiness={n: r["ok"] for n, r in (m.get("readiness") or {}).items()} or None)


def print_summary(console: Any, rows: list[dict]) -> None:
    from rich.table import Table

    table = Table(title="export summary")
    for col in ("format", "precision", "files", "size", *_PARITY_COLS, "status"):
        table.add_column(col, justify="right" if col in ("size", *_PARITY_COLS) else "left", overflow="fold")
    for r in rows:
        p = r.get("parity") or {}
        cells = ["-"] * 4
        if p:
            cells = [f"{p['max_abs']:.3g}", f"{p['cosine']:.6f}", f"{p['action_l1_mean']:.3g}",
                     "-" if p.get("token_match") is None else f"{p['token_match']:.3f}"]
            if r.get("parity_of") != "artifact":
                cells[0] += " (graph)"
        colour = {"ok": "green", "failed": "red"}.get(r["status"], "yellow")
        table.add_row(r["format"], r["precision"], f"{len(r['files'])}: {r['path']}", f"{r['bytes'] / 1e6:.2f} MB",
                      *cells, f"[{colour}]{r['status']}")
    console.print(table)
    for r in rows:
        for line in filter(None, [r.get("error"), *(r.get("failures") or []), r.get("note")]):
            console.print(f"{r['format']} {r['precision']}: {line}", markup=False)
