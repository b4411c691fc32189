"""`vla-compress report RUN_DIR`: one self-contained HTML page rendered from the run manifest alone.

Self-contained means: CSS, the small sorting script and every chart (inline SVG) are in the file;
a Content-Security-Policy meta tag forbids the browser from fetching anything at all. Every string
that comes from a checkpoint, a recipe or a manifest goes through Jinja's autoescaping.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError
from ..fileio import read_json, write_text
from ..manifest import Variant, check_version, load_variants
from . import plots

REPORT = "report.html"
# torch policies time components; ONNX Runtime policies time their graphs (policy_step, or embed /
# prefill / decode / action_head for split artifacts) and the pre/post-processing around them
COMPONENT_ORDER = ("preprocess", "vision", "projector", "embed", "policy_step", "backbone", "prefill", "decode",
                   "action_head", "postprocess", "other")


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return str(n)


def _fmt_count(n: float | None) -> str:
    if n is None:
        return "–"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


def _fmt_ms(x: float | None) -> str:
    return "–" if x is None else f"{x:.3g}"


def _variant_size(v: Variant, m: dict, name: str, log: list) -> tuple[int | None, int | None, int | None]:
    """(parameters, bytes on disk, FLOPs per policy step) of a variant. Parameters are logical
    (a quantized weight counts as its elements), from the checkpoint stage or the last pass."""
    trace = (m.get("profile", {}).get("estimated", {}).get(name) or {}).get("trace") or {}
    flops = trace.get("flops")
    info = (m.get("checkpoint") or {}).get("info") or {}
    params = (info.get("counts") or {}).get("params_logical")
    if name != "baseline" and log:
        params = log[-1]["after"].get("params_logical", params)
    if v.kind == "artifact":
        size = sum(f.get("bytes", 0) for f in (v.files or {}).values()) or None
    elif name == "baseline":
        size = sum(f["bytes"] for k, f in m["checkpoint"]["files"].items() if k.endswith(".safetensors")) or None
    else:
        p = Path(v.path or "")
        size = sum(f.stat().st_size for f in p.glob("*.safetensors")) if p.is_dir() else None
    return params, size, flops


def build_view(m: dict) -> dict:
    """Everything the template shows, computed from the manifest (any version manifest.py reads)."""
    variants = load_variants(m)
    compressed = variants.get("compressed")
    log = (compressed.passes if compressed else None) or []
    evals = m.get("evaluations") or {}
    prof = m.get("profile") or {}
    verdict = m.get("verdict") or {}
    gates = verdict.get("gates") or {}
    names = list(variants)
    colours = {n: plots.colour(i) for i, n in enumerate(names)}
    rows, points = [], []
    for name in names:
        v = variants[name]
        ev = evals.get(name)
        meas = (prof.get("measured") or {}).get(name)
        est_rows = (prof.get("estimated") or {}).get(name, {}).get("rows", [])
        est = next((r for r in est_rows if not r.get("error")), None)
        params, size, flops = _variant_size(v, m, name, log)
        parity = v.parity or {}
        row = {
            "name": name, "colour": colours[name], "runtime": v.runtime, "kind": v.kind,
            "status": v.status or ("ok" if v.kind == "checkpoint" else "–"),
            "params": _fmt_count(params), "size": _fmt_bytes(size), "flops": _fmt_count(flops),
            "p50": _fmt_ms(meas["latency_ms"]["p50"]) if meas else "–",
            "p99": _fmt_ms(meas["latency_ms"]["p99"]) if meas else "–",
            "speedup": f"{meas['speedup_vs_baseline']:.2f}×" if meas and meas.get("speedup_vs_baseline") else "–",
            "hz": f"{meas['control_hz']:.1f}" if meas else "–",
            "memory": _fmt_bytes(meas["memory"].get("peak_rss_bytes")) if meas else "–",
            "est_p50": _fmt_ms(est["p50_ms"]) if est else "–",
            "est_hz": f"{est['control_hz']:.0f}" if est else "–",
            "est_mem": _fmt_bytes(est["memory_bytes"]) if est else "–",
            "est_precision": est["precision"] if est else "–",
            "est_calibrated": bool(est and est.get("calibrated")),
            "est_range": (f"{_fmt_ms(est['p50_ms_range'][0])}–{_fmt_ms(est['p50_ms_range'][1])}"
                          if est and est.get("p50_ms_range") else None),
            "parity_abs": f"{parity['max_abs']:.2e}" if parity.get("max_abs") is not None else "–",
            "parity_l1": (f"{parity.get('action_l1', parity.get('action_l1_mean')):.2e}"
                          if parity.get("action_l1", parity.get("action_l1_mean")) is not None else "–"),
            "success": f"{ev['mean_success']:.1%}" if ev else "–",
            "success_ci": (f"[{ev['pooled']['ci95'][0]:.0%}, {ev['pooled']['ci95'][1]:.0%}]" if ev else
                           v.eval_skipped or "not evaluated"),
            "gate": gates.get(name, {}).get("verdict", "baseline" if name == "baseline" else "–"),
            "diff": (f"{gates[name]['difference']:+.1%} [{gates[name]['ci'][0]:+.1%}, {gates[name]['ci'][1]:+.1%}]"
                     if name in gates else "–"),
            "error": v.error,
        }
        rows.append(row)
        if ev and meas:
            n_ep = ev["pooled"]["episodes"]
            k = ev["pooled"]["successes"]
            points.append({"label": name, "x": meas["latency_ms"]["p50"], "y": k / n_ep if n_ep else 0.0,
                           "lo": ev["pooled"]["ci95"][0], "hi": ev["pooled"]["ci95"][1], "colour": colours[name]})
    tasks = list((evals.get("baseline") or next(iter(evals.values()), {})).get("per_task", {}))
    task_series = [{"label": n, "colour": colours[n],
                    "values": [evals[n]["per_task"].get(t, {}).get("success_rate") for t in tasks]}
                   for n in names if n in evals]
    parts = [p for p in COMPONENT_ORDER if any(p in ((prof.get("measured") or {}).get(n, {}).get("breakdown_ms") or {})
                                               for n in names)]
    breakdown_here = [{"label": n, "values": (prof.get("measured") or {}).get(n, {}).get("breakdown_ms") or {}}
                      for n in names]
    est_all = [r | {"variant": n} for n in names for r in (prof.get("estimated") or {}).get(n, {}).get("rows", [])]
    est_parts = [p for p in COMPONENT_ORDER if any(p in (r.get("breakdown_ms") or {}) for r in est_all)]
    breakdown_est = [{"label": f"{r['variant']} ({r['precision']})", "values": r.get("breakdown_ms") or {}}
                     for r in est_all if not r.get("error")]
    # a stage an interrupted invocation left running (and this one did not need) has no cached/wall_s yet
    stages = [{"name": k, "cached": None, "wall_s": None, **v} for k, v in (m.get("stages") or {}).items()]
    target = (m.get("recipe") or {}).get("config", {}).get("target", {})
    deploy = verdict.get("deploy")
    summary = summary_card(m, rows, deploy, target)
    recipe = m.get("recipe") or {}
    return {
        "recipe_origin": origin(recipe.get("source"), "profiles", recipe.get("name")),
        "checkpoint_origin": origin((m.get("checkpoint") or {}).get("path"), "checkpoints"),
        "host": ((prof.get("measured") or {}).get("baseline") or {}).get("device") or "this machine",
        "m": m, "rows": rows, "summary": summary, "verdict": verdict, "target": target,
        "pareto": plots.scatter_pareto(points, "latency per policy step here (ms, p50)", "MetaWorld success"),
        "tasks_chart": plots.grouped_bars(tasks, task_series),
        "breakdown_here": plots.stacked_bars(breakdown_here, parts),
        "breakdown_est": plots.stacked_bars(breakdown_est, est_parts),
        "estimates": [{**r, "p50": _fmt_ms(r.get("p50_ms")), "hz": (f"{r['control_hz']:.0f}" if r.get("control_hz")
                                                                   else "–"),
                       "mem": _fmt_bytes(r.get("memory_bytes")), "dev_mem": _fmt_bytes(r.get("device_memory_bytes"))}
                      for r in est_all],
        "gates": gates, "stages": stages,
        "passes": [pass_row(p) for p in log],
        "manifest_json": json.dumps({k: v for k, v in m.items() if k not in ("evaluations",)}, indent=1,
                                    sort_keys=True, default=str),
        "tasks": tasks,
        "search": search_view(m, colours) if m.get("search") else None,
    }


def search_view(m: dict, colours: dict) -> dict:
    """The search section: every candidate (fidelity, latency here and on the device, budget, closed
    loop) and the frontier of closed-loop success vs estimated device latency, with the budget."""
    s, evals = m["search"], m.get("evaluations") or {}
    gates = (m.get("verdict") or {}).get("gates") or {}
    est = {n: next((r for r in e.get("rows", []) if not r.get("error")), None)
           for n, e in ((m.get("profile") or {}).get("estimated") or {}).items()}
    rows = []
    for r in s["candidates"]:
        g = gates.get(r["name"])
        rows.append({**r, "cuts_text": ", ".join(r["cuts"]) or "none",
                     "fid": f"{r['fidelity']['action_l1']:.4f}" if r.get("fidelity") else "–",
                     "here": _fmt_ms(r.get("measured_p50_ms")), "device": _fmt_ms(r.get("estimated_p50_ms")),
                     "range": "–" if not r.get("estimated_range_ms") else
                     f"{_fmt_ms(r['estimated_range_ms'][0])}–{_fmt_ms(r['estimated_range_ms'][1])}",
                     "loop": (f"{g['verdict']}: {g['variant_rate']:.1%} vs {g['baseline_rate']:.1%}, "
                              f"Δ {g['difference']:+.1%} after {g['episodes']} pairs") if g else "–",
                     "winner": r["name"] == s.get("winner")})
    points = []
    for name, ev in evals.items():
        e = est.get(name)
        if not e:
            continue
        lo, hi = ev["pooled"]["ci95"]
        points.append({"label": name, "x": e["p50_ms"], "y": ev["mean_success"], "lo": lo, "hi": hi,
                       "colour": colours.get(name, plots.colour(len(points)))})
    b = s["budget"]
    line = b.get("max_latency_ms")
    tgt = (m.get("profile") or {}).get("target") or {}
    return {**s, "rows": rows, "frontier": plots.scatter_pareto(
        points, f"estimated latency per policy step on {tgt.get('hardware')} (ms, p50)", "MetaWorld success",
        x_line=line, x_line_label=f"budget {line} ms" if line else "")}


def pass_row(entry: dict) -> dict:
    """A compression-log entry with its on-disk sizes and offline fidelity formatted for the table."""
    fid = entry.get("fidelity") or {}
    l1, agree = fid.get("action_l1"), fid.get("token_agreement")
    return {**entry, "disk_before": _fmt_bytes((entry.get("before") or {}).get("size_on_disk_bytes")),
            "disk_after": _fmt_bytes((entry.get("after") or {}).get("size_on_disk_bytes")),
            "action_l1": "–" if l1 is None else f"{l1:.4f}", "token_agreement": "–" if agree is None else f"{agree:.1%}"}


def origin(path: str | None, shipped_dir: str, name: str | None = None) -> dict:
    """How to show a recipe or checkpoint path: by name when it is a shipped one (wherever the run's
    machine kept it), else as the user's file, by its name (the absolute path stays in the manifest)."""
    from ..resources import shipped

    p = Path(path or "")
    stem = name or p.stem
    is_shipped = p.parent.name == shipped_dir and (shipped(shipped_dir) / p.name).exists()
    return {"name": stem if is_shipped else p.name or "–", "shipped": is_shipped,
            "label": f"shipped {'recipe' if shipped_dir == 'profiles' else 'checkpoint'} {stem}" if is_shipped
            else f"your {'recipe file' if shipped_dir == 'profiles' else 'checkpoint'} {p.name}"}


def summary_card(m: dict, rows: list[dict], deploy: str | None, target: dict) -> dict:
    verdict = (m.get("verdict") or {}).get("verdict", "unknown")
    row = next((r for r in rows if r["name"] == deploy), None)
    base = next((r for r in rows if r["name"] == "baseline"), None)
    headline = {"pass": "Deployable", "fail": "Not deployable", "inconclusive": "Inconclusive"}.get(verdict, verdict)
    return {"verdict": verdict, "headline": headline, "deploy": deploy, "row": row, "base": base,
            "device": target.get("hardware"), "runtime": target.get("runtime"), "precision": target.get("precision"),
            "reasons": (m.get("verdict") or {}).get("reasons", [])}


# click a column header to sort the table by it (numbers numerically). The page's only script: the
# Content-Security-Policy allows exactly this text (by its hash), so no script a manifest string could
# smuggle in (an instruction, a task or run name) would run even if escaping ever missed one.
SORT_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th, i) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var key = function (r) { var t = (r.cells[i] || {}).textContent || ""; var x = parseFloat(t.replace(/[^0-9.+-eE]/g, "")); return isNaN(x) ? t : x; };
    var dir = th.dataset.dir === "asc" ? -1 : 1; th.dataset.dir = dir === 1 ? "asc" : "desc";
    rows.sort(function (a, b) { var x = key(a), y = key(b); return (x > y ? 1 : x < y ? -1 : 0) * dir; });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def script_hash(script: str) -> str:
    """The CSP source that allows exactly `script` inline ('sha256-<base64>', CSP level 2)."""
    import base64
    import hashlib

    return "sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")


def render(m: dict) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("vla_compress.report", "templates"),
                             autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda x: "–" if x is None else f"{x:.1%}"
    return env.get_template("report.html.j2").render(**build_view(m), script=SORT_SCRIPT,
                                                    script_hash=script_hash(SORT_SCRIPT))


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Render RUN_DIR/manifest.json to RUN_DIR/report.html (or `out`), atomically."""
    run_dir = Path(run_dir)
    path = run_dir / "manifest.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no manifest.json — not a run folder written by `vla-compress compress`")
    m = read_json(path)
    check_version(m, str(path))
    if "variants" not in m:
        raise ConfigError(f"{path}: the run has not finished its stages yet (no variants); re-run "
                          f"`vla-compress compress` with the same --out to resume it")
    out = Path(out) if out else run_dir / REPORT
    write_text(out, render(m))
    return out

