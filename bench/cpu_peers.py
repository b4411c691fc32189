"""CPU latency of reference-small-chunk: torch and the tools a user would reach for ("peers", each with
its documented defaults) against vla-compress's own exports, in one process, interleaved rounds.

Variants (each a full policy step on one observation: preprocess, the network, un-normalise):
  torch       fp32 eager; torch.compile (default mode); torchao Int8DynamicActivationInt8WeightConfig +
              torch.compile (skipped, with the reason, when torchao does not import)
  peer        onnxruntime `quant_pre_process` + `quantize_dynamic` (defaults) on the fp32 ONNX graph;
              OpenVINO fp32 (`convert_model` of the ONNX graph, `compile_model` defaults but the thread
              count: on AVX512-BF16/AMX CPUs that is bf16 inference, recorded per row); OpenVINO +
              `nncf.quantize(model_type=TRANSFORMER)` defaults on 32 calibration frames
  project     vla-compress ONNX int8-dynamic (OnnxRuntimePolicy), plain and with optimize "ort" (the graph
              fused for ONNX Runtime before quantizing); vla-compress OpenVINO int8
              (OpenVinoPolicy, f32 inference precision, the exporter's calibration feeds) and the same
              artifact with OpenVINO's bf16 hint; and each recipe in profiles/ with passes whose passes
              need nothing but calibration data, applied here, with its CPU-runnable exports; and
              with --runs, every validated export of those compress runs (recipes whose passes need
              a teacher and training data: distillation), each in its own runtime
Every exported project artifact is validated (parity vs torch on the held-out frames) before timing.

Observations: scripted-expert MetaWorld episodes, as a compress run collects them (one episode per
MT10 task from demo index 900 for calibration, from 950 for held-out frames: never training
placements); 32 held-out frames are timed and compared, 32 calibration frames calibrate.
`action_l1` = mean |a - a_torch_fp32| over the held-out chunks, in normalised action units ([-1, 1]).

    python bench/cpu_peers.py [--checkpoint DIR | preset:reference-100m] [--runs RUN ...] [--rounds 5] [--frames 8]
                              [--threads 1 2] [--out bench/results/cpu_peers.json]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
Step = Callable[[dict], np.ndarray]  # observation -> (K, A) chunk in robot units


def observations(vla: Any, work: Path, n: int, seed: int) -> tuple[list[dict], list[dict], str]:
    """(calibration, held-out) observations from scripted-expert episodes collected like a compress run."""
    from vla_compress.data.collect import collect
    from vla_compress.evaluate.metaworld_env import CameraSpec, cameras_read_by, ensure_gl_backend
    from vla_compress.evaluate.suites import get_suite
    from vla_compress.passes.calibration import observations_from_lerobot

    ensure_gl_backend()
    tasks = tuple(get_suite("metaworld-mt10", None).tasks)
    cams = cameras_read_by(vla)
    camera = tuple(CameraSpec(c) for c in cams) if cams else CameraSpec()
    out = {}
    for which, start in (("calibration", 900), ("validation", 950)):
        root = work / which
        if not (root / "meta" / "info.json").is_file():
            collect(root, tasks, 1, camera=camera, workers=1, start_index=start, overwrite=True)
        out[which] = observations_from_lerobot(root, n, seed)
    return out["calibration"], out["validation"], (f"{n} frames of 1 scripted-expert episode per MT10 task "
                                                   "(calibration: demo index 900+, held-out: 950+)")


# --- the variants -----------------------------------------------------------------------------------
def torch_step(vla: Any, model: Any) -> Step:
    import torch

    def step(obs: dict) -> np.ndarray:
        x = vla.preprocess([obs])
        with torch.inference_mode():
            y = model(x["pixel_values"], x["text_ids"], x["text_mask"], x["state"])
        return vla.unnormalize_actions(y[0].float().numpy())

    return step


def ort_step(path: Path, processor: Any, threads: int) -> Step:
    import onnxruntime as ort

    from vla_compress.runtime.onnxruntime_policy import session_options

    sess = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]

    def step(obs: dict) -> np.ndarray:
        f = processor([obs])
        return processor.unnormalize(sess.run(["actions"], {n: f[n] for n in names})[0][0])

    return step


def ov_step(model: Any, processor: Any, threads: int) -> tuple[Step, str]:
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads})
    req = compiled.create_infer_request()
    names = [i.get_any_name() for i in compiled.inputs]

    def step(obs: dict) -> np.ndarray:
        f = processor([obs])
        res = req.infer({n: f[n] for n in names})
        return processor.unnormalize(np.asarray(res[compiled.output("actions")])[0])

    return step, compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()


def policy_step(policy: Any) -> Step:
    return policy.infer


def main() -> None:
    import torch

    from vla_compress.export import export, validate
    from vla_compress.export.family import get_export_family
    from vla_compress.export.onnx import OnnxExportConfig
    from vla_compress.export.openvino import OpenVinoExportConfig
    from vla_compress.fileio import write_json
    from vla_compress.runtime.onnxruntime_policy import OnnxRuntimePolicy
    from vla_compress.runtime.openvino_policy import OpenVinoPolicy

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints/reference-small-chunk"),
                    help="a checkpoint folder, or preset:NAME (a random-weight model of that preset, seed 0)")
    ap.add_argument("--runs", type=Path, nargs="*", default=[],
                    help="compress run folders of this checkpoint: each validated export of the run is a project row")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (each times --frames frames per row)")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--work", type=Path, default=ROOT / ".cache/bench/cpu-peers")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/cpu_peers.json")
    ap.add_argument("--skip", nargs="*", default=[], help="leave out the variants whose name contains one of these")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    torch.set_num_threads(max(args.threads))

    vla, model_name, source = load_model(args.checkpoint)
    cal, held, obs_source = observations(vla, args.work / "demos", args.samples, seed=0)
    print(f"observations: {obs_source}")
    family = get_export_family(vla.family)
    art_dir = args.work / "artifacts"
    art_dir = art_dir / model_name
    fp32 = export(vla, OnnxExportConfig(), art_dir / "onnx-fp32", example=cal[:2], source=source)
    validate(fp32, vla, held)
    processor = family.load_processor(fp32.path)
    onnx_fp32 = fp32.file(fp32.manifest["graphs"]["policy_step"]["file"])

    builders: dict[str, tuple[str, Callable[[int], Step]]] = {}  # name -> (kind, threads -> step)
    notes: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    parity: dict[str, Any] = {}

    # torch
    builders["torch fp32 eager"] = ("torch", lambda t: torch_step(vla, vla))
    # One compiled model per variant, shared by the thread counts: inductor's CPU kernels read the thread
    # count at run time (cpp.dynamic_threads; by default they are specialised on the count at compile
    # time). dynamic=True: the instruction length varies, and automatic dynamic shapes would recompile
    # to this graph after the second length anyway (the steady state is the same, one compile less).
    import torch._inductor.config as inductor_config

    inductor_config.cpp.dynamic_threads = True
    notes["torch.compile"] = "torch.compile(model, dynamic=True), inductor cpp.dynamic_threads=True (one compile per variant)"

    def compiled(base: Any) -> Callable[[int], Step]:
        fn = torch.compile(base, dynamic=True)
        return lambda t: torch_step(base, fn)

    builders["torch.compile"] = ("torch", compiled(vla))
    try:
        import torchao
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        q = copy.deepcopy(vla)
        quantize_(q, Int8DynamicActivationInt8WeightConfig())
        builders["torchao int8-dynamic + compile"] = ("torch", compiled(q))
        notes["torchao"] = torchao.__version__
    except Exception as e:  # noqa: BLE001
        skipped["torchao int8-dynamic + compile"] = f"torchao unavailable: {type(e).__name__}: {e}"

    # peers
    from onnxruntime.quantization import quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    peer_dir = args.work / "peers"
    peer_dir.mkdir(parents=True, exist_ok=True)
    quant_pre_process(str(onnx_fp32), str(peer_dir / "pre.onnx"))
    quantize_dynamic(str(peer_dir / "pre.onnx"), str(peer_dir / "ort-dynamic.onnx"))
    builders["onnxruntime quantize_dynamic (defaults)"] = ("peer", lambda t: ort_step(peer_dir / "ort-dynamic.onnx",
                                                                                        processor, t))
    import nncf
    import openvino as ov

    # read_model, not convert_model: on this CPU (AMX, bf16 default) compiling an in-memory
    # convert_model() result with OpenVINO 2026.4's defaults dies with SIGFPE; read from a file it compiles
    core = ov.Core()
    ov_fp32 = core.read_model(str(onnx_fp32))
    names = [i.get_any_name() for i in ov_fp32.inputs]
    feeds = [processor([o]) for o in cal]
    ov_nncf = nncf.quantize(core.read_model(str(onnx_fp32)), nncf.Dataset(feeds, lambda f: {n: f[n] for n in names}),
                            model_type=nncf.ModelType.TRANSFORMER)
    ov.save_model(ov_nncf, str(peer_dir / "nncf-int8.xml"), compress_to_fp16=False)
    ov_nncf = core.read_model(str(peer_dir / "nncf-int8.xml"))
    precisions: dict[str, str] = {}

    def ov_builder(model: Any, label: str) -> Callable[[int], Step]:
        def build(t: int) -> Step:
            step, prec = ov_step(model, processor, t)
            precisions[label] = prec
            return step
        return build

    builders["openvino fp32 (defaults)"] = ("peer", ov_builder(ov_fp32, "openvino fp32 (defaults)"))
    builders["openvino + nncf.quantize (defaults)"] = ("peer", ov_builder(ov_nncf, "openvino + nncf.quantize (defaults)"))
    notes.update(openvino=ov.__version__, nncf=nncf.__version__)

    # the project's own
    vla_of: dict[str, Any] = {}  # the torch model a recipe variant was exported from (after its passes)

    def project(label: str, art: Any, policy: Callable[[int], Any]) -> None:
        rep = validate(art, vla_of.get(label, vla), held)
        parity[label] = {"status": art.status, "action_l1_mean": rep.action_l1_mean, "max_abs": rep.max_abs,
                         "cosine": rep.cosine}
        if art.status != "ok":
            skipped[label] = f"artifact failed validation: {'; '.join(rep.failures)}"
            return
        builders[label] = ("project", lambda t: policy_step(policy(t)))

    onnx_dyn = export(vla, OnnxExportConfig(precision="int8-dynamic"), art_dir / "onnx-int8-dynamic", base=fp32)
    project("vla-compress onnx int8-dynamic", onnx_dyn, lambda t: OnnxRuntimePolicy(onnx_dyn.path, threads=t))
    onnx_ort = export(vla, OnnxExportConfig(precision="int8-dynamic", optimize="ort"), art_dir / "onnx-int8-dynamic-ort",
                      base=fp32)
    project("vla-compress onnx int8-dynamic, optimize ort", onnx_ort,
            lambda t: OnnxRuntimePolicy(onnx_ort.path, threads=t))
    ov_int8 = export(vla, OpenVinoExportConfig(precision="int8"), art_dir / "openvino-int8", base=fp32, calibration=cal)
    project("vla-compress openvino int8", ov_int8, lambda t: OpenVinoPolicy(ov_int8.path, threads=t))
    builders["vla-compress openvino int8 (bf16 hint)"] = (
        "project", lambda t: policy_step(OpenVinoPolicy(ov_int8.path, threads=t, inference_precision="bf16")))
    stacked_recipes(vla, cal, held, art_dir, source, project, vla_of, skipped)
    for run in args.runs:
        run_rows(run, model_name, builders, parity, skipped)

    # build every (variant, threads) runner, warm it up on every held-out frame (compiles happen here)
    rows: dict[tuple[str, int], dict] = {}
    runners: dict[tuple[str, int], Step] = {}
    for name in [n for n in builders if any(k in n for k in args.skip)]:
        skipped[name] = "left out by --skip"
        del builders[name]
    for name, (kind, build) in builders.items():
        for t in args.threads:
            torch.set_num_threads(t)
            t0 = time.perf_counter()
            step = build(t)
            chunks = [np.asarray(step(o), np.float32) for o in held]  # warm-up and the parity chunks
            runners[(name, t)] = step
            rows[(name, t)] = {"model": model_name, "variant": name, "kind": kind, "threads": t,
                               "latencies_ms": [], "chunks": chunks, "setup_s": round(time.perf_counter() - t0, 1)}
            print(f"ready: {name} ({t} thread{'s' if t > 1 else ''}, {rows[(name, t)]['setup_s']} s)")
    print(f"setup {time.perf_counter() - t_start:.0f} s; timing {args.rounds} rounds x {args.frames} frames")
    for r in range(args.rounds):
        order = list(runners)
        if r % 2:
            order.reverse()  # alternate the order so no variant always runs right after the same one
        for key in order:
            torch.set_num_threads(key[1])
            step, lat = runners[key], rows[key]["latencies_ms"]
            for i in range(args.frames):
                o = held[(r * args.frames + i) % len(held)]
                t0 = time.perf_counter()
                step(o)
                lat.append((time.perf_counter() - t0) * 1e3)
    load_after = os.getloadavg()

    norm = vla.action_norm.normalize
    out_rows = []
    for (name, t), row in rows.items():
        lat = np.asarray(row.pop("latencies_ms"))
        row.update(p50_ms=round(float(np.percentile(lat, 50)), 3), p90_ms=round(float(np.percentile(lat, 90)), 3),
                   n_timed=int(lat.size), _chunks=row.pop("chunks"))
        if name in precisions:
            row["openvino_inference_precision"] = precisions[name]
        if name in parity:
            row["parity"] = parity[name]
        out_rows.append(row)
    for row in out_rows:  # action L1 against torch fp32 eager at the same thread count
        ref = next(r for r in out_rows if r["variant"] == "torch fp32 eager" and r["threads"] == row["threads"])
        row["action_l1"] = float(np.mean([np.abs(norm(a) - norm(b)).mean() for a, b in zip(row["_chunks"], ref["_chunks"])]))
        row["speedup_vs_torch_fp32"] = round(ref["p50_ms"] / row["p50_ms"], 3)
    for row in out_rows:
        row.pop("_chunks")

    print(f"\n| variant | kind | threads | p50 ms | p90 ms | speedup vs torch fp32 | action L1 |\n|---|---|---|---|---|---|---|")
    for row in sorted(out_rows, key=lambda r: (r["threads"], -r["speedup_vs_torch_fp32"])):
        print(f"| {row['variant']} | {row['kind']} | {row['threads']} | {row['p50_ms']:.2f} | {row['p90_ms']:.2f} | "
              f"{row['speedup_vs_torch_fp32']:.2f}x | {row['action_l1']:.4f} |")
    for name, why in skipped.items():
        print(f"skipped: {name}: {why}")
    print(f"load average before {load_before}, after {load_after}")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    write_json(args.out, {
        "checkpoint": str(args.checkpoint), "model": model_name, "observations": obs_source, "commit": commit,
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, **notes},
        "protocol": {"rounds": args.rounds, "frames_per_round": args.frames, "threads": args.threads,
                     "timed": "one policy step per held-out frame (preprocess + network + un-normalise), batch 1, "
                              "after a warm-up pass over every held-out frame; rows interleaved, order alternating"},
        "load_average_before": list(load_before), "load_average_after": list(load_after),
        "wall_s": round(time.perf_counter() - t_start, 1), "skipped": skipped, "rows": out_rows})
    print(f"wrote {args.out}")


def stacked_recipes(vla: Any, cal: list[dict], held: list[dict], art_dir: Path, checkpoint: Path,
                    project: Callable, vla_of: dict, skipped: dict) -> None:
    """Each profiles/ recipe with passes: applied here when its passes need only calibration data, then
    its CPU-runnable exports (onnx, openvino) as project variants."""
    from vla_compress.export import export
    from vla_compress.passes import PassContext, apply_passes, calibration_dataset
    from vla_compress.pipeline.recipe import load_recipe
    from vla_compress.runtime.registry import build_policy

    from vla_compress.evaluate.rollout import PolicySpec

    for path in sorted((ROOT / "profiles").glob("*.yaml")):
        recipe = load_recipe(path)
        if not recipe.passes:
            continue
        needs = sorted({n for p in recipe.passes for n in p.needs()} - {"calibration"})
        label = f"recipe {recipe.name}"
        if needs:
            skipped[label] = (f"its passes need {', '.join(needs)} ({', '.join(p.name for p in recipe.passes)}): "
                              "not run in a latency benchmark")
            continue
        v = copy.deepcopy(vla)
        try:
            apply_passes(v, recipe.passes, PassContext(calibration=calibration_dataset(v, cal), held_out=held))
        except Exception as e:  # noqa: BLE001
            skipped[label] = f"its passes do not apply to {getattr(checkpoint, 'name', 'this model')}: {type(e).__name__}: {e}"
            continue
        for cfg in recipe.exports:
            name = f"{label}: {cfg.format} {cfg.precision}"
            if cfg.format not in ("onnx", "openvino"):
                skipped[name] = f"{cfg.format} does not run on this CPU"
                continue
            art = export(v, cfg, art_dir / f"{recipe.name}-{cfg.format}-{cfg.precision}", calibration=cal,
                         example=cal[:2], source=checkpoint)
            vla_of[name] = v
            runtime = {"onnx": "onnxruntime"}.get(cfg.format, cfg.format)
            project(name, art, lambda t, a=art, rt=runtime: build_policy(PolicySpec(rt, str(a.path), {"threads": t})))


def load_model(spec: str) -> tuple[Any, str, Path | None]:
    """(model, its name in the rows, the checkpoint folder or None): a checkpoint folder, or
    preset:NAME built with random weights (seed 0) for latency work at that scale."""
    from vla_compress.models import load_vla

    if spec.startswith("preset:"):
        from vla_compress.models.reference import ReferenceVLA

        name = spec.split(":", 1)[1]
        return ReferenceVLA.from_preset(name, seed=0).eval(), name, None
    return load_vla(Path(spec)).eval(), Path(spec).name, Path(spec)


def run_rows(run: Path, model_name: str, builders: dict, parity: dict, skipped: dict) -> None:
    """Each export of a compress run (RUN/stages/export-*/artifact) whose validation passed, as a
    project row "run DIR (RECIPE): format precision" run in its own runtime; the run must be of this model."""
    import json

    from vla_compress.evaluate.rollout import PolicySpec
    from vla_compress.export.artifact import Artifact
    from vla_compress.runtime.registry import build_policy

    manifest = json.loads((run / "manifest.json").read_text())
    recipe = manifest["recipe"]["name"]
    if Path(manifest["checkpoint"]["path"]).name != model_name:
        raise SystemExit(f"{run}: a run of {manifest['checkpoint']['path']}, not of {model_name}")
    for meta in sorted(run.glob("stages/export-*/artifact/artifact.json")):
        art = Artifact.load(meta.parent)
        label = f"run {run.name} ({recipe}): {art.format} {art.precision}"
        if art.format not in ("onnx", "openvino"):
            skipped[label] = f"{art.format} does not run on this CPU"
            continue
        p = art.manifest.get("parity") or {}
        parity[label] = {"status": art.status, "action_l1_mean": p.get("action_l1_mean"), "max_abs": p.get("max_abs"),
                         "cosine": p.get("cosine"), "against": "the run's compressed torch model"}
        if art.status != "ok":
            skipped[label] = f"artifact status {art.status}"
            continue
        runtime = {"onnx": "onnxruntime"}.get(art.format, art.format)
        builders[label] = ("project", lambda t, a=art, rt=runtime: policy_step(
            build_policy(PolicySpec(rt, str(a.path), {"threads": t}))))


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
