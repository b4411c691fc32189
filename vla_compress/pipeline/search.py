"""`vla-compress search CKPT -H DEVICE --latency-ms X`: the recipe that loses the least closed-loop
success within a latency budget on a device.

    checkpoint → calibration data → sweep (offline action error of every single cut)
    → cut levels (0..max_cuts cuts, cheapest first) × the runtime's precisions = candidates
    → passes and export of every candidate (parity validated)
    → candidates stage: fidelity vs the baseline on held-out frames, latency measured here (side by
      side, one process) and estimated on DEVICE (the hardware profile's roofline)
    → shortlist: the candidates whose device estimate meets the budget, most faithful first
    → closed loop: the baseline and the shortlist in rounds with the sequential gate (evaluation.py)
    → winner: the shortlisted candidate whose gate passed with the smallest success loss (ties: the
      lowest estimated latency), written out as a recipe (`vla-compress compress CKPT -p recipe.yaml`
      reproduces it)

Cuts come from the sweep (passes/sweep.py): every single structured cut is scored by its action error
per FLOP removed, `action_l1 / (1 - flops_fraction)`, and levels take the best cuts greedily, at most
one per (pass, component, dimension), so that level k is level k-1 plus the next cut. The budget is
checked on the device estimate, as compress's gate does; the measurement here is shown beside it.
Every stage is cached in the run folder like compress's (an interrupted search resumes).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..manifest import Variant, dump_variants
from .recipe import export_variant_name, validate_recipe
from .run import Pipeline, _eval_summary
from .stages import Hooks

SWEEP_KINDS = ("layer-drop", "width-prune", "visual-token-prune")


@dataclass
class SearchSpec:
    """What `vla-compress search` was asked (validated by `base_recipe`)."""

    hardware: str
    runtime: str | None = None
    max_latency_ms: float | None = None
    min_control_hz: float | None = None
    precisions: list[str] | None = None  # the runtime's export precisions to try (default: all it takes here)
    max_cuts: int = 3
    shortlist: int = 3
    suite: str = "metaworld-mt10"
    tasks: list[str] | None = None
    episodes: int = 20  # cap per task of the sequential evaluation
    episodes_per_round: int = 5
    max_drop: float = 0.05
    confidence: float = 0.95
    workers: int = 2
    executor: str = "local"
    ray_address: str | None = None
    samples: int = 16  # calibration frames
    validation_samples: int = 8  # held-out frames for the sweep and the candidates' fidelity
    max_steps: int | None = None  # episode length (default: the suite's)

    def base_recipe(self, checkpoint: Path) -> dict:
        if (self.max_latency_ms is None) == (self.min_control_hz is None):
            raise ConfigError("search needs one latency budget: --latency-ms X (policy step, p50) or --control-hz Y")
        for name, v, lo in (("--max-cuts", self.max_cuts, 0), ("--shortlist", self.shortlist, 1)):
            if not isinstance(v, int) or v < lo:
                raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")
        ev: dict[str, Any] = {"suite": self.suite, "tasks": self.tasks, "episodes": self.episodes,
                              "workers": self.workers, "threads_per_worker": 1, "max_steps": self.max_steps,
                              "sequential": {"episodes_per_round": self.episodes_per_round}}
        if self.executor != "local" or self.ray_address:
            ev["executor"] = {"kind": "ray" if self.ray_address else self.executor, "address": self.ray_address}
        target: dict[str, Any] = {"hardware": self.hardware, "precision": "fp32"}
        if self.runtime:
            target["runtime"] = self.runtime
        return {"name": f"search-{Path(checkpoint).name}-{self.hardware}", "target": target,
                "calibration": {"episodes_per_task": 1, "samples": self.samples,
                                "validation_samples": self.validation_samples},
                "evaluation": ev,
                "budgets": {"max_success_drop": self.max_drop, "confidence": self.confidence,
                            "max_latency_ms": self.max_latency_ms, "min_control_hz": self.min_control_hz},
                "profiling": {"steps": 20, "warmup": 3, "threads": 1}}


def cut_group(configs: list[dict]) -> tuple:
    """What a sweep cut removes: at most one cut per group goes into a level (a second layer drop on
    the same stack would address layers the first renumbered)."""
    c = configs[0]
    where = c.get("where")
    comp = where if isinstance(where, str) else tuple((where or {}).get("components") or ())
    dim = "mlp" if c.get("mlp_ratio") else "heads" if c.get("heads_ratio") else None
    return c["pass"], comp, dim


def choose_cuts(rows: list[dict], max_cuts: int) -> list[dict]:
    """The sweep rows that make levels 1..max_cuts, cheapest action error per FLOP removed first."""
    ok = [r for r in rows if "error" not in r and r["flops_fraction"] < 0.999]
    chosen, seen = [], set()
    for r in sorted(ok, key=lambda r: r["action_l1"] / max(1e-9, 1.0 - r["flops_fraction"])):
        if len(chosen) >= max_cuts:
            break
        g = cut_group(r["configs"])
        if g not in seen:
            seen.add(g)
            chosen.append(r)
    return chosen


def meets(est: dict | None, budgets: dict) -> bool:
    if not est or est.get("error") or est.get("fits") is False:
        return False
    if budgets["max_latency_ms"] is not None and est["p50_ms"] > budgets["max_latency_ms"]:
        return False
    return budgets["min_control_hz"] is None or est["control_hz"] >= budgets["min_control_hz"]


class Search(Pipeline):
    """One search run: construct (validates the budget, device and runtime first), then `run()`."""

    def __init__(self, checkpoint: str | Path, spec: SearchSpec, out: str | Path, hooks: Hooks | None = None,
                 allow_pickle: bool = False, command: str | None = None, recipe_out: str | Path | None = None):
        from ..backends import get_backend
        from ..hardware import load_hardware
        from ..profile.estimate import resolve_precision

        raw = spec.base_recipe(Path(checkpoint))
        recipe = validate_recipe(raw, source="vla-compress search")
        self.spec = spec
        self.backend = get_backend(recipe.target["runtime"])
        hw = load_hardware(recipe.target["hardware"])
        takes = list(self.backend.precisions)
        if self.backend.format is None:  # a checkpoint runtime (torch): the model as it is, fp32
            takes = ["fp32"]
        asked = spec.precisions or takes
        bad = [p for p in asked if p not in takes]
        if bad:
            raise ConfigError(f"--precisions: {self.backend.name} does not take {', '.join(bad)}; it takes "
                              f"{', '.join(takes)}")
        self.forms: list[tuple[str, str]] = []  # (export precision, roofline precision on the device)
        skipped = {}
        for p in asked:
            roof = self.backend.roofline_precision(p) or p
            try:
                resolve_precision(roof, hw, self.backend.name)
            except ConfigError as e:
                skipped[p] = str(e)
                continue
            self.forms.append((p, roof))
        if not self.forms:
            raise ConfigError(f"none of the precisions {asked} runs on {hw.name} with {self.backend.name}: "
                              + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
        super().__init__(checkpoint, recipe, out, hooks, allow_pickle, command)
        self.recipe_out = Path(recipe_out) if recipe_out else self.run_.root / "recipe.yaml"
        self.raw = raw
        self.skipped_forms = skipped

    # --- stages ---------------------------------------------------------------------------------
    def _stage_sweep(self, cal_key: str) -> list[dict]:
        def fn(work: Path) -> dict:
            from ..passes.sweep import sweep

            rows = sweep(self.baseline_vla(), self.observations("calibration"), self.observations("validation"),
                         SWEEP_KINDS, executor=self._executor(), checkpoint=str(self.checkpoint),
                         allow_pickle=self.allow_pickle)
            return {"rows": rows}

        material = {"checkpoint": self.ckpt_key, "calibration": cal_key, "kinds": list(SWEEP_KINDS)}
        return self.run_.stage("sweep", "offline sensitivity of every single cut (no simulation)", material, fn)["rows"]

    def _candidates(self, cuts: list[dict], cal_key: str) -> dict[str, dict]:
        """Passes and export of every candidate: {name: record with its Variant}."""
        from ..export.registry import config_from_dict as export_config
        from ..passes.registry import config_from_dict as pass_config

        out: dict[str, dict] = {}
        for level in range(len(cuts) + 1):
            configs = [c for r in cuts[:level] for c in r["configs"]]
            labels = [r["candidate"] for r in cuts[:level]]
            source_path, source_key = self.checkpoint, self.run_.stage_key("checkpoint")
            error = None
            if level:
                try:
                    res = self._stage_passes(cal_key, [pass_config(c) for c in configs], stage=f"passes-cut{level}")
                    source_path = self.run_.stage_dir(f"passes-cut{level}") / res["checkpoint"]
                    source_key = self.run_.stage_key(f"passes-cut{level}")
                except ConfigError as e:  # the cuts do not compose on this model: recorded, not fatal
                    error = str(e)
            for precision, roof in self.forms:
                base = {"level": level, "cuts": labels, "passes": configs, "precision": roof}
                if self.backend.format is None:
                    name = f"cut{level}-{self.backend.short}"
                    v = Variant("checkpoint", self.backend.name, str(source_path), path=str(source_path),
                                key=source_key, status="error" if error else None, error=error)
                    out[name] = {**base, "export": None, "variant": v}
                    continue
                cfg = export_config({"format": self.backend.format, "precision": precision, **self.backend.export_options})
                name = f"cut{level}-{export_variant_name(cfg)}"
                rec = {**base, "export": cfg.to_dict()}
                if error:
                    out[name] = {**rec, "variant": Variant("artifact", self.backend.name, str(source_path),
                                                           format=cfg.format, precision=precision, status="error",
                                                           error=error)}
                    continue
                try:
                    res = self._stage_export(cfg, source_path, source_key, cal_key, name=name)
                    v = Variant("artifact", self.backend.name, str(source_path), format=cfg.format, precision=precision,
                                path=str(self.run_.stage_dir(f"export-{name}") / res["artifact"]),
                                key=self.run_.stage_key(f"export-{name}"), status=res["status"], parity=res["parity"],
                                files=res["files"])
                except ConfigError as e:
                    v = Variant("artifact", self.backend.name, str(source_path), format=cfg.format,
                                precision=precision, status="error", error=str(e))
                out[name] = {**rec, "variant": v}
        return out

    def _stage_measure(self, cands: dict[str, dict], baseline: Variant) -> dict:
        """Fidelity, latency here and the device estimate of every runnable candidate (and the baseline),
        one after another in this process."""
        prof, tgt = self.recipe.profiling, self.recipe.target

        def fn(work: Path) -> dict:
            import numpy as np
            import torch

            from ..evaluate.rollout import PolicySpec
            from ..profile.measure import measure_policy
            from ..profile.runner import profile_targets
            from ..runtime.policy import TorchPolicy
            from .run import format_of

            obs = self.observations("validation")
            torch.set_num_threads(prof["threads"] or 1)
            ref = TorchPolicy(self.baseline_vla())
            ref_actions = [np.asarray(ref.infer(o), dtype=np.float64) for o in obs]
            out: dict[str, Any] = {}
            todo = [("baseline", baseline, None)] + [(n, c["variant"], c["precision"]) for n, c in cands.items()
                                                      if c["variant"].runnable]
            for name, v, precision in todo:
                self.hooks.say(f"measuring {name} here and estimating it on {tgt['hardware']}")
                opts = {"threads": prof["threads"] or 1} if format_of(v.runtime) else {}
                policy = PolicySpec(v.runtime, v.path, opts).build()
                acts = [np.asarray(policy.infer(o), dtype=np.float64) for o in obs]
                fid = {"action_l1": float(np.mean([np.abs(a - b).mean() for a, b in zip(acts, ref_actions)])),
                       "max_abs": float(max(np.abs(a - b).max() for a, b in zip(acts, ref_actions)))}
                measured = measure_policy(policy, obs, prof["steps"], prof["warmup"]).to_dict()
                del policy
                res = profile_targets([v.source], [tgt["hardware"]], [precision] if precision else [],
                                      runtime=tgt["runtime"] if precision else None, measure=False)
                rows = [r for r in res["rows"] if r["kind"] == "estimated"]
                trace = res["targets"][0].get("trace") if res["targets"] else None
                out[name] = {"fidelity": fid, "measured": measured, "rows": rows, "trace": trace}
            return out

        material = {"candidates": {n: c["variant"].key for n, c in cands.items()}, "baseline": baseline.key,
                    "profiling": prof, "target": tgt}
        return self.run_.stage("candidates", "fidelity, latency here and on the device for every candidate",
                               material, fn)

    # --- the whole search -----------------------------------------------------------------------
    def run(self) -> dict:
        from ..evaluate.gate import EXIT, decide
        from ..report.html import write_report

        t0, info, cal_key = self._begin()
        m = self.run_.manifest
        rows = self._stage_sweep(cal_key)
        cuts = choose_cuts(rows, self.spec.max_cuts)
        cands = self._candidates(cuts, cal_key)
        baseline = Variant("checkpoint", "torch", str(self.checkpoint), path=str(self.checkpoint),
                           key=self.run_.stage_key("checkpoint"))
        measured = self._stage_measure(cands, baseline)
        budgets, tgt = self.recipe.budgets, self.recipe.target

        table = []
        for name, c in cands.items():
            v, meas = c["variant"], measured.get(name)
            est = next((r for r in (meas or {}).get("rows", []) if not r.get("error")), None)
            row = {"name": name, "level": c["level"], "cuts": c["cuts"], "precision": c["precision"],
                   "export": c["export"], "status": v.status or "ok", "error": v.error,
                   "fidelity": meas["fidelity"] if meas else None,
                   "measured_p50_ms": meas["measured"]["latency_ms"]["p50"] if meas else None,
                   "estimated_p50_ms": est["p50_ms"] if est else None,
                   "estimated_range_ms": est.get("p50_ms_range") if est else None,
                   "estimated_control_hz": est["control_hz"] if est else None,
                   "flops_fraction": None, "meets_budget": bool(v.runnable and meets(est, budgets))}
            if c["level"]:
                row["flops_fraction"] = next((r["flops_fraction"] for r in rows if r["candidate"] == c["cuts"][-1]),
                                             None)
            table.append(row)
        base_meas = measured["baseline"]["measured"]["latency_ms"]["p50"]
        for row in table:
            if row["measured_p50_ms"]:
                row["measured_speedup_vs_torch"] = base_meas / row["measured_p50_ms"]
        fitting = sorted((r for r in table if r["meets_budget"]), key=lambda r: r["fidelity"]["action_l1"])
        shortlist = [r["name"] for r in fitting[:self.spec.shortlist]]
        variants = {"baseline": baseline, **{n: cands[n]["variant"] for n in shortlist}}
        for n, c in cands.items():
            if n not in shortlist:
                why = "not shortlisted: " + ("over the latency budget on the device" if c["variant"].runnable
                                             else f"artifact {c['variant'].status}")
                variants[n] = c["variant"].skipped(why)
        if shortlist:
            self.hooks.say(f"shortlist ({len(shortlist)} of {len(table)} meet the budget): {', '.join(shortlist)}")
            evals, sequential = self._evaluate_all(variants, ["baseline", *shortlist])
        else:
            evals, sequential = {}, {}
        prof = {"target": tgt, "measured": {n: x["measured"] for n, x in measured.items()},
                "estimated": {n: {"rows": x["rows"], "trace": x["trace"]} for n, x in measured.items()}}
        for n, mm in prof["measured"].items():
            mm["speedup_vs_baseline"] = base_meas / mm["latency_ms"]["p50"]
        passed = [n for n in shortlist if sequential.get(n, {}).get("verdict") == "pass"]
        by_row = {r["name"]: r for r in table}
        winner = max(passed, key=lambda n: (sequential[n]["difference"], -by_row[n]["estimated_p50_ms"]),
                     default=None)
        if winner:
            verdict = decide(variants, evals, prof, budgets, winner, {**tgt, "precision": cands[winner]["precision"]},
                             sequential)
            recipe_path = self._write_recipe(winner, cands[winner], sequential[winner], by_row[winner])
            verdict["reasons"].insert(0, f"winner {winner}: recipe written to {recipe_path}")
        else:
            gates = {n: sequential[n] for n in shortlist if n in sequential}
            if not shortlist:
                fastest = min((r for r in table if r["estimated_p50_ms"] is not None),
                              key=lambda r: r["estimated_p50_ms"], default=None)
                why = [f"no candidate meets the budget on {tgt['hardware']}" + (
                    f": the fastest, {fastest['name']}, is estimated at {fastest['estimated_p50_ms']:.2f} ms"
                    if fastest else "")]
            else:
                why = ["no shortlisted candidate passed the closed-loop gate: " + "; ".join(
                    f"{n}: {g['verdict']} ({g['message']})" for n, g in gates.items())]
            kind = "inconclusive" if any(g["verdict"] == "inconclusive" for g in gates.values()) else "fail"
            verdict = {"deploy": None, "verdict": kind, "reasons": why + ["no recipe written"], "gates": gates,
                       "exit_code": EXIT[kind]}
            recipe_path = None
        m["variants"] = dump_variants(variants)
        m["evaluations"] = {k: _eval_summary(r) for k, r in evals.items()}
        m["profile"] = prof
        m["checkpoint"]["info"] = info
        m["search"] = {"spec": asdict(self.spec), "budget": {k: budgets[k] for k in ("max_latency_ms", "min_control_hz")},
                       "latency_source": f"estimated on {tgt['hardware']} ({tgt['runtime']}) from its hardware "
                                         f"profile; measured here beside it",
                       "cuts": [{k: r[k] for k in ("candidate", "configs", "action_l1", "flops_fraction")}
                                for r in cuts],
                       "precisions_skipped": self.skipped_forms, "candidates": table, "shortlist": shortlist,
                       "winner": winner, "recipe": str(recipe_path) if recipe_path else None}
        m["verdict"] = verdict
        m["status"] = "finished"
        m["wall_s_this_invocation"] = round(time.perf_counter() - t0, 1)
        self.run_.save()
        write_report(self.run_.root)
        return m

    def _write_recipe(self, name: str, cand: dict, gate: dict, row: dict) -> Path:
        """The winner as a recipe compress runs (validated before it is written, written atomically)."""
        import yaml

        from ..fileio import write_text

        raw = {k: v for k, v in self.raw.items() if k != "name"}
        raw = {"name": f"{self.raw['name']}-{name}",
               "description": (f"written by vla-compress search: {name} (cuts: {', '.join(cand['cuts']) or 'none'}), "
                               f"estimated {row['estimated_p50_ms']:.3g} ms per policy step on "
                               f"{self.recipe.target['hardware']}; closed loop {gate['variant_rate']:.1%} vs baseline "
                               f"{gate['baseline_rate']:.1%} over {gate['episodes']} paired episodes"),
               **raw, "target": {**self.recipe.target, "precision": cand["precision"]},
               "passes": cand["passes"], "exports": [cand["export"]] if cand["export"] else []}
        if raw["target"].get("power_mode") is None:
            raw["target"].pop("power_mode", None)
        from ..export.registry import config_from_dict as export_config

        raw["deploy"] = export_variant_name(export_config(cand["export"])) if cand["export"] else (
            "compressed" if cand["passes"] else "baseline")
        validate_recipe(raw, source=str(self.recipe_out))
        header = (f"# Written by `vla-compress search` on {time.strftime('%Y-%m-%d')} for {self.checkpoint}.\n"
                  f"# Reproduce: vla-compress compress {self.checkpoint} -p {self.recipe_out} --out RUN_DIR\n")
        write_text(self.recipe_out, header + yaml.safe_dump(raw, sort_keys=False))
        return self.recipe_out
