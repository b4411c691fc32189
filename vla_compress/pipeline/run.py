"""`vla-compress compress CKPT --profile NAME --out RUN_DIR`: the whole pipeline as cached stages.

    checkpoint → calibration data (scripted-expert episodes, seeds disjoint from evaluation)
    → baseline evaluation → passes → exports (each validated) → evaluation of every variant in its
    own runtime → profiling (measured here side by side; estimated on the recipe's target)
    → gate → report

Variants: `baseline` (the checkpoint in torch), `compressed` (after the passes, in torch) and one
per export (`onnx-int8-dynamic`, `gguf-q4_k_m`, ...) run by that format's runtime. Every variant is
evaluated on the same tasks and seeds as the baseline, so the gate compares paired outcomes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..backends import format_backend, get_backend
from ..errors import ConfigError
from ..manifest import Variant, dump_variants
from .recipe import Recipe, export_variant_name
from .stages import Hooks, Run, hash_checkpoint

# calibration / validation episodes come from demo seed indices far above what training used
CALIBRATION_INDEX, VALIDATION_INDEX = 900, 950


def refuse_another_run(root: Path, manifest: dict, files: dict, recipe_name: str) -> None:
    """A run folder resumes only the run it holds: the same checkpoint files and recipe. Anything
    else would silently replace that run's results, so it is a ConfigError naming what differs."""
    old_ckpt, old_recipe = manifest.get("checkpoint") or {}, manifest.get("recipe") or {}
    if old_ckpt.get("files") is not None:
        old = {k: v.get("sha256") for k, v in old_ckpt["files"].items()}
        if old != {k: v["sha256"] for k, v in files.items()}:
            raise ConfigError(f"{root}: holds the run of another checkpoint ({old_ckpt.get('path')}); a run folder "
                              f"is never overwritten: choose another --out folder")
    if old_recipe.get("name") not in (None, recipe_name):
        raise ConfigError(f"{root}: holds the run of recipe {old_recipe['name']!r}, not {recipe_name!r}; a run "
                          f"folder is never overwritten: choose another --out folder")


class Pipeline:
    """One compress run. Construct (validates everything cheap first), then `run()`."""

    def __init__(self, checkpoint: str | Path, recipe: Recipe, out: str | Path, hooks: Hooks | None = None,
                 allow_pickle: bool = False, command: str | None = None):
        from ..models import detect_family

        self.checkpoint = Path(checkpoint)
        self.family = detect_family(self.checkpoint)  # a bad checkpoint fails before the run folder exists
        self.recipe = recipe
        self.hooks = hooks or Hooks()
        self.allow_pickle = allow_pickle
        self.run_ = Run(out, self.hooks)
        m = self.run_.manifest
        files = hash_checkpoint(self.checkpoint, (m.get("checkpoint") or {}).get("files"))
        refuse_another_run(self.run_.root, m, files, recipe.name)
        m["recipe"] = {"name": recipe.name, "source": recipe.source, "config": recipe.to_dict()}
        m["checkpoint"] = {"path": str(self.checkpoint), "family": self.family, "files": files}
        m["command"] = command
        self.ckpt_key = {k: v["sha256"] for k, v in m["checkpoint"]["files"].items()}
        self._vla = None
        self._observations: dict[str, list] = {}

    # --- shared inputs -------------------------------------------------------------------------
    def baseline_vla(self):
        from ..models import load_vla

        if self._vla is None:
            self._vla = load_vla(self.checkpoint, allow_pickle=self.allow_pickle)
        return self._vla

    def observations(self, which: str) -> list[dict]:
        """Calibration or validation observations sampled from the calibration stage's episodes."""
        from ..passes.calibration import observations_from_lerobot

        if which not in self._observations:
            cal = self.recipe.calibration
            n = cal["samples"] if which == "calibration" else cal["validation_samples"]
            root = self.calibration_root() if which == "calibration" else (
                self.run_.stage_dir("calibration-data") / which)
            self._observations[which] = observations_from_lerobot(root, n, cal["seed"])
        return self._observations[which]

    def calibration_root(self) -> Path:
        """The LeRobot dataset passes calibrate and train on: the recipe's, else the collected one."""
        given = self.recipe.calibration.get("dataset")
        return Path(given) if given else self.run_.stage_dir("calibration-data") / "calibration"

    # --- stages --------------------------------------------------------------------------------
    def _stage_checkpoint(self) -> dict:
        def fn(work: Path) -> dict:
            from ..passes.runner import measure

            vla = self.baseline_vla()
            return {"family": self.family, "head": vla.action_spec.head,
                    "action_spec": vla.action_spec.to_dict(), "tokens": vla.token_counts().to_dict(),
                    "counts": measure(vla)}

        return self.run_.stage("checkpoint", "inspect the checkpoint", {"checkpoint": self.ckpt_key}, fn)

    def _stage_calibration(self) -> dict:
        cal, ev = self.recipe.calibration, self.recipe.evaluation

        def fn(work: Path) -> dict:
            from ..data.collect import collect
            from ..evaluate.metaworld_env import CameraSpec
            from ..evaluate.suites import get_suite

            tasks = tuple(get_suite(ev["suite"], ev["tasks"]).tasks)
            cameras = tuple(CameraSpec(c) for c in cams) if cams else CameraSpec()
            out = {}
            sets = (("calibration", CALIBRATION_INDEX), ("validation", VALIDATION_INDEX))
            if cal.get("dataset"):  # the user's dataset calibrates/trains; only validation is collected
                out["calibration"] = {"path": str(cal["dataset"]), "given": True}
                sets = sets[1:]
            for which, start in sets:
                self.hooks.say(f"collecting {cal['episodes_per_task']} expert episode(s) per task for {which}")
                collect(work / which, tasks, cal["episodes_per_task"], camera=cameras, workers=max(1, ev["workers"]),
                        start_index=start)
                out[which] = {"path": which, "tasks": list(tasks), "episodes_per_task": cal["episodes_per_task"],
                              "first_demo_index": start}
            return out

        from ..evaluate.metaworld_env import cameras_read_by

        cams = cameras_read_by(self.baseline_vla())  # the episodes carry every camera the model reads
        material = {"calibration": cal, "suite": ev["suite"], "tasks": ev["tasks"],
                    "dataset": dataset_fingerprint(cal.get("dataset"))}
        if cams:
            material["cameras"] = list(cams)
        return self.run_.stage("calibration-data", "collect calibration/validation episodes (scripted experts)",
                               material, fn)

    def _eval_material(self) -> dict:
        ev = self.recipe.evaluation
        return {k: ev[k] for k in ("suite", "tasks", "episodes", "max_steps")}

    def _evaluate_together(self, names: list[str], specs: list[Any], first: int = 0,
                           episodes: int | None = None) -> list[dict]:
        """Closed-loop evaluations of several policies at once on the run's executor (their episodes
        interleaved on the same workers), one result per policy."""
        from ..evaluate.rollout import evaluate_many

        ev = self.recipe.evaluation
        succ = [0] * len(names)

        def on_episode(i, r, done, total):
            succ[i] += r.success
            self.hooks.episodes(names[i], done, total, succ[i])

        extra = {"max_steps": ev["max_steps"]} if ev["max_steps"] else {}
        return evaluate_many(specs, ev["suite"], ev["tasks"], episodes or ev["episodes"], ev["workers"],
                             threads_per_worker=ev["threads_per_worker"], on_episode=on_episode, first_episode=first,
                             executor=self._executor(), **extra)

    def _executor(self):
        """evaluation.executor, made once per run: a Ray cluster started for the run serves every
        variant's evaluation (Ray shuts it down when the process exits)."""
        if getattr(self, "_episode_executor", None) is None:
            from ..evaluate.executor import get_executor

            ex = self.recipe.evaluation.get("executor") or {}
            self._episode_executor = get_executor(ex.get("kind", "local"), self.recipe.evaluation["workers"],
                                                  ex.get("address"))
        return self._episode_executor

    def _stage_eval(self, variant: str, runtime: str, path: Path, upstream: str,
                    round_: tuple[int, int] | None = None) -> dict:
        """The closed-loop evaluation of one variant: all of it, or one (first episode, episodes) round."""
        return self._stage_evals([(variant, runtime, path, upstream)], round_)[0]

    def _stage_evals(self, items: list[tuple[str, str, Path, str]], round_: tuple[int, int] | None = None) -> list[dict]:
        """The closed-loop evaluations of several variants ((name, runtime, path, upstream key) each),
        all of them or one round, as one stage each; those not already recorded run together."""
        from ..evaluate.rollout import PolicySpec
        from .evaluation import round_material

        entries, by_name = [], {}
        for variant, runtime, path, upstream in items:
            # the key names the runtime by its short spelling (`onnx`), as runs written before runtime
            # names became canonical did, so that their evaluations stay cached
            material = {"variant": upstream, "runtime": get_backend(runtime).short,
                        "evaluation": round_material(self.recipe.evaluation, *round_) if round_
                        else self._eval_material()}
            name, what = f"eval-{variant}", f"closed-loop evaluation of {variant} ({runtime})"
            if round_:
                name, what = f"{name}-from{round_[0]}", f"{what}, episodes {round_[0]}-{sum(round_) - 1} of every task"
            entries.append((name, what, material))
            by_name[name] = (variant, PolicySpec(runtime, str(Path(path).resolve()),
                                                 {"threads": 1} if format_of(runtime) else {}))

        def fn(works: list[tuple[str, Path]]) -> list[dict]:
            todo = [by_name[n] for n, _ in works]
            return self._evaluate_together([v for v, _ in todo], [s for _, s in todo], *(round_ or (0, None)))

        return self.run_.stages_together(entries, fn)

    def _evaluate_all(self, variants: dict[str, Variant], names: list[str]) -> tuple[dict, dict]:
        """(evaluation per variant, sequential gate records: {} for the fixed design), see evaluation.py.
        The variants' evaluations (each round's, when sequential) run together on the executor."""
        seq = self.recipe.evaluation.get("sequential")

        def many(these: list[str], round_: tuple[int, int] | None = None) -> dict[str, dict]:
            items = [(n, variants[n].runtime, Path(variants[n].path), variants[n].key) for n in these]
            return dict(zip(these, self._stage_evals(items, round_)))

        if not seq:
            return many(names), {}
        from ..evaluate.sequential import RoundPlan
        from .evaluation import evaluate_sequentially

        plan = RoundPlan(seq["episodes_per_round"], self.recipe.evaluation["episodes"])
        b = self.recipe.budgets
        return evaluate_sequentially(names, lambda n, first, count: many([n], (first, count))[n], plan,
                                     b["max_success_drop"], b["confidence"],
                                     run_many=lambda these, first, count: many(these, (first, count)))

    def _stage_passes(self, cal_key: str, passes: list | None = None, stage: str = "passes") -> dict:
        """Apply `passes` (default: the recipe's) to a fresh copy of the checkpoint, as stage `stage`."""
        from ..passes.base import TEACHER

        passes = self.recipe.passes if passes is None else passes

        def fn(work: Path) -> dict:
            from ..models import load_vla
            from ..passes.base import PassContext
            from ..passes.calibration import calibration_dataset
            from ..passes.runner import apply_passes

            vla = load_vla(self.checkpoint, allow_pickle=self.allow_pickle)  # a fresh copy: passes work in place
            teacher = self.baseline_vla() if any(TEACHER in p.needs() for p in passes) else None
            ctx = PassContext(calibration=calibration_dataset(vla, self.observations("calibration")),
                              teacher=teacher, seed=self.recipe.calibration["seed"],
                              training=self.calibration_root(), held_out=self.observations("validation"))
            vla = apply_passes(vla, passes, ctx)
            vla.save_pretrained(work / "checkpoint")
            record_disk_sizes(vla, len(passes), self.checkpoint, work / "checkpoint")
            from ..passes.runner import compare_models

            reload = load_vla(work / "checkpoint")
            check = compare_models(vla, reload, self.observations("validation"))
            if check["max_abs"] > 1e-5:
                raise ConfigError(f"the compressed checkpoint does not reload faithfully (max abs difference "
                                  f"{check['max_abs']:.2e} between the saved and the in-memory model)")
            vs_baseline = compare_models(self.baseline_vla(), reload, self.observations("validation"))
            return {"checkpoint": "checkpoint", "log": vla.compression_log, "reload": check,
                    "vs_baseline": vs_baseline}

        material = {"checkpoint": self.ckpt_key, "passes": [p.to_dict() for p in passes],
                    "calibration": cal_key, "log": 2}  # log 2: fidelity on held-out frames, sizes on disk
        return self.run_.stage(stage, f"apply {len(passes)} pass(es)", material, fn)

    def _stage_export(self, cfg: Any, source_path: Path, source_key: str, cal_key: str,
                      name: str | None = None) -> dict:
        """Export `source_path` per `cfg` and validate parity, as stage `export-<name>` (default name:
        `<format>-<precision>`)."""
        name = name or export_variant_name(cfg)

        def fn(work: Path) -> dict:
            from ..export.base import ExportInputs
            from ..export.registry import get_exporter
            from ..models import load_vla

            vla = load_vla(source_path, allow_pickle=self.allow_pickle)
            exporter = get_exporter(cfg.format)
            inputs = ExportInputs(calibration=self.observations("calibration"), source=source_path)
            art = exporter.export(vla, cfg, work / "artifact", inputs)
            report = exporter.validate(art, vla, self.observations("validation"))
            return {"artifact": "artifact", "format": cfg.format, "precision": cfg.precision, "status": art.status,
                    "parity": report.to_dict(), "files": art.files}

        return self.run_.stage(f"export-{name}", f"export {name} and validate parity",
                               {"source": source_key, "export": cfg.to_dict(), "calibration": cal_key}, fn)

    def _stage_profile(self, variants: dict[str, Variant]) -> dict:
        prof, tgt = self.recipe.profiling, self.recipe.target

        def fn(work: Path) -> dict:
            return profile_variants(variants, self.observations("validation"), tgt, prof, self.hooks)

        material = {"variants": {k: v.key for k, v in variants.items()}, "profiling": prof, "target": tgt}
        return self.run_.stage("profile", "measure latency here (side by side) and estimate on the target",
                               material, fn)

    # --- the whole run -------------------------------------------------------------------------
    def _begin(self) -> tuple[float, dict, str]:
        """Mark the run running and do the shared first stages: (start time, checkpoint info, the
        calibration stage's key)."""
        t0 = time.perf_counter()
        self.run_.manifest["status"] = "running"
        self.run_.save()
        info = self._stage_checkpoint()
        self._stage_calibration()
        return t0, info, self.run_.stage_key("calibration-data")

    def run(self) -> dict:
        """Run (or resume) every stage; returns the manifest (with `verdict`)."""
        t0, info, cal_key = self._begin()
        m = self.run_.manifest
        ckpt_path = self.checkpoint
        variants: dict[str, Variant] = {"baseline": Variant("checkpoint", "torch", str(ckpt_path), path=str(ckpt_path),
                                                            key=self.run_.stage_key("checkpoint"))}
        source_path, source_key = ckpt_path, self.run_.stage_key("checkpoint")
        if self.recipe.passes:
            res = self._stage_passes(cal_key)
            source_path = self.run_.stage_dir("passes") / res["checkpoint"]
            source_key = self.run_.stage_key("passes")
            variants["compressed"] = Variant("checkpoint", "torch", str(source_path), path=str(source_path),
                                             key=source_key, passes=res["log"], parity=res["vs_baseline"])
        for cfg in self.recipe.exports:
            name = export_variant_name(cfg)
            runtime = format_backend(cfg.format).name
            try:
                res = self._stage_export(cfg, source_path, source_key, cal_key)
                variants[name] = Variant("artifact", runtime, str(source_path), format=cfg.format,
                                         precision=cfg.precision,
                                         path=str(self.run_.stage_dir(f"export-{name}") / res["artifact"]),
                                         key=self.run_.stage_key(f"export-{name}"), status=res["status"],
                                         parity=res["parity"], files=res["files"])
            except ConfigError as e:  # e.g. the runtime's package is missing here: recorded, not fatal
                variants[name] = Variant("artifact", runtime, str(source_path), format=cfg.format,
                                         precision=cfg.precision, status="error", error=str(e))
        # every runnable variant in the closed loop, same tasks and seeds
        runnable = []
        chosen = self.recipe.evaluation.get("variants")
        for name, v in variants.items():
            if chosen is not None and name not in ("baseline", *chosen):
                variants[name] = v.skipped(f"not evaluated: evaluation.variants lists {', '.join(chosen)}")
                continue
            if not v.runnable:
                variants[name] = v.skipped(f"not evaluated: artifact {v.status}")
                continue
            missing = get_backend(v.runtime).missing()
            if missing:
                variants[name] = v.skipped(f"not evaluated here: {missing}")
                continue
            runnable.append(name)
        evals, sequential = self._evaluate_all(variants, runnable)
        prof = self._stage_profile({k: v for k, v in variants.items() if k in evals or k == "baseline"})
        m["variants"] = dump_variants(variants)
        m["evaluations"] = {k: _eval_summary(r) for k, r in evals.items()}
        m["profile"] = prof
        m["checkpoint"]["info"] = info
        from ..evaluate.gate import decide

        r = self.recipe
        m["verdict"] = decide(variants, evals, prof, r.budgets, r.deploy, r.target, sequential)
        m["status"] = "finished"
        m["wall_s_this_invocation"] = round(time.perf_counter() - t0, 1)
        self.run_.save()
        from ..report.html import write_report

        write_report(self.run_.root)
        return m


# --- helpers ---------------------------------------------------------------------------------------

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def weights_on_disk(path: Path) -> int:
    """Bytes of a checkpoint directory's weight files (what compression changes; the small json
    files beside them are left out so that recording the size does not change it)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def record_disk_sizes(vla: Any, n_passes: int, original: Path, saved: Path) -> None:
    """Fill `size_on_disk_bytes` of the compression log where it is known (the original checkpoint
    before this run's first pass, the saved one after its last) and rewrite its compression.json."""
    from ..checkpoint.compression import write_compression

    log = getattr(vla, "compression_log", None) or []
    if not log or n_passes < 1:
        return
    first = log[len(log) - n_passes]
    if first.get("before") and Path(original).is_dir():
        first["before"]["size_on_disk_bytes"] = weights_on_disk(original)
    if log[-1].get("after"):
        log[-1]["after"]["size_on_disk_bytes"] = weights_on_disk(saved)
    write_compression(saved, log)


def dataset_fingerprint(path: str | None) -> dict | None:
    """Size and mtime of every file of a user-given dataset (a change invalidates the stages using it)."""
    if not path:
        return None
    root = Path(path)
    return {p.relative_to(root).as_posix(): [p.stat().st_size, p.stat().st_mtime_ns]
            for p in sorted(root.rglob("*")) if p.is_file()}


def format_of(runtime: str) -> str | None:
    """The export format a runtime runs (None: torch, which runs checkpoints)."""
    return get_backend(runtime).format


def _eval_summary(r: dict) -> dict:
    return {k: r[k] for k in ("suite", "suite_facts", "episodes_per_task", "mean_success", "pooled", "per_task",
                              "latency_ms", "wall_s", "episodes") if k in r}


def profile_variants(variants: dict[str, Variant], observations: list[dict], target: dict, prof: dict,
                     hooks: Hooks) -> dict:
    """Measure every variant here, one after another in this process (ratios are side by side), and
    estimate the torch model behind each on the target device at its deployment precision."""
    from ..evaluate.rollout import PolicySpec
    from ..profile.measure import measure_policy
    from ..profile.runner import profile_targets

    out: dict[str, Any] = {"target": target, "measured": {}, "estimated": {}}
    for name, v in variants.items():
        hooks.say(f"measuring {name} here ({prof['warmup']} warm-up + {prof['steps']} steps)")
        opts = {"threads": prof["threads"] or 1} if format_of(v.runtime) else {}
        policy = PolicySpec(v.runtime, v.path, opts).build()
        if not format_of(v.runtime) and prof["threads"]:
            import torch

            torch.set_num_threads(prof["threads"])
        out["measured"][name] = measure_policy(policy, observations, prof["steps"], prof["warmup"]).to_dict()
        del policy
    for name, v in variants.items():
        precision = target["precision"] if name != "baseline" else None
        hooks.say(f"estimating {name} on {target['hardware']}")
        res = profile_targets([v.source], [target["hardware"]], [precision] if precision else [],
                              runtime=target["runtime"], power_mode=target.get("power_mode"), measure=False)
        rows = [r for r in res["rows"] if r["kind"] == "estimated"]
        trace = res["targets"][0].get("trace") if res["targets"] else None
        out["estimated"][name] = {"rows": rows, "trace": trace}
    base = out["measured"].get("baseline", {}).get("latency_ms", {}).get("p50")
    for name, mm in out["measured"].items():
        mm["speedup_vs_baseline"] = base / mm["latency_ms"]["p50"] if base else None
    return out
