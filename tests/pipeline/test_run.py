"""`vla-compress compress` end to end on a tiny checkpoint: stages, caching/resume, manifest, bad input.

One short run (1 task, 1 episode of 8 steps, one pass, one export) is shared by the tests of this
module; it exercises every stage including calibration collection and closed-loop evaluation.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from vla_compress.cli.main import main
from vla_compress.pipeline.recipe import load_recipe
from vla_compress.pipeline.run import Pipeline

RECIPE = """\
name: tiny-e2e
description: "tiny <b>model</b> & friends"
target: {hardware: x86-desktop-cpu, runtime: onnxruntime, precision: int8}
passes:
  - {pass: int8-weight-only, where: backbone}
exports:
  - {format: onnx, precision: fp32}
calibration: {episodes_per_task: 1, samples: 2, validation_samples: 2}
evaluation: {tasks: [drawer-close-v3], episodes: 1, workers: 1, max_steps: 8}
budgets: {max_success_drop: 0.2}
profiling: {steps: 2, warmup: 1, threads: 1}
"""


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("recipes") / "tiny.yaml"
    p.write_text(RECIPE)
    return p


@pytest.fixture(scope="module")
def finished_run(tiny_checkpoints, recipe_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    Pipeline(tiny_checkpoints["regression"], load_recipe(recipe_file), out).run()
    return out


def _manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def test_every_stage_ran_and_the_manifest_records_it(finished_run):
    m = _manifest(finished_run)
    assert m["status"] == "finished"
    assert set(m["stages"]) == {"checkpoint", "calibration-data", "passes", "export-onnx-fp32", "eval-baseline",
                                "eval-compressed", "eval-onnx-fp32", "profile"}
    assert all(s["status"] == "done" and s["key"] for s in m["stages"].values())
    assert set(m["variants"]) == {"baseline", "compressed", "onnx-fp32"}
    assert m["variants"]["onnx-fp32"]["status"] == "ok"
    # same tasks and seeds for every variant
    seeds = {k: [(e["task"], e["seed"]) for e in r["episodes"]] for k, r in m["evaluations"].items()}
    assert seeds["baseline"] == seeds["compressed"] == seeds["onnx-fp32"]
    assert set(m["verdict"]["gates"]) == {"compressed", "onnx-fp32"}
    assert m["verdict"]["verdict"] in ("pass", "fail", "inconclusive")
    assert m["profile"]["measured"]["baseline"]["latency_ms"]["p50"] > 0
    assert m["profile"]["estimated"]["onnx-fp32"]["rows"][0]["device"] == "x86-desktop-cpu"
    assert m["versions"]["torch"] and m["checkpoint"]["files"]["model.safetensors"]["sha256"]
    # the compressed checkpoint reloads to the same model, and really holds int8 weights
    assert m["stages"]["passes"]["status"] == "done"
    log = m["variants"]["compressed"]["passes"]
    assert log[0]["after"]["state_dict_bytes"] < log[0]["before"]["state_dict_bytes"]
    # offline fidelity against the original on the held-out (validation) frames, and sizes on disk
    assert log[0]["fidelity"]["observations"] == 2 and log[0]["fidelity"]["action_l1"] > 0
    assert 0 < log[0]["after"]["size_on_disk_bytes"] < log[0]["before"]["size_on_disk_bytes"]
    # the fp32 ONNX export keeps the pass's int8 weights (carried from torch, not re-quantized)
    carry = m["variants"]["onnx-fp32"]
    art = json.loads((Path(carry["path"]) / "artifact.json").read_text())
    assert art["quantization_carry"]["layers"] and not art["quantization_carry"]["not_carried"]
    page = (finished_run / "report.html").read_text()
    assert f"<td>{log[0]['fidelity']['action_l1']:.4f}</td>" in page  # the passes table shows the fidelity


def test_rerun_reuses_every_stage(finished_run, tiny_checkpoints, recipe_file):
    before = _manifest(finished_run)["stages"]
    Pipeline(tiny_checkpoints["regression"], load_recipe(recipe_file), finished_run).run()
    after = _manifest(finished_run)["stages"]
    for name, s in after.items():
        assert s["cached"] is True, name
        assert s["key"] == before[name]["key"] and s["finished"] == before[name]["finished"]


def test_a_change_redoes_only_what_it_affects(finished_run, tiny_checkpoints, recipe_file, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = _manifest(run)["stages"]
    Pipeline(tiny_checkpoints["regression"], load_recipe(recipe_file, ["profiling.steps=3"]), run).run()
    after = _manifest(run)["stages"]
    assert after["profile"]["cached"] is False and after["profile"]["key"] != before["profile"]["key"]
    assert all(after[n]["cached"] for n in after if n != "profile")


def test_evaluation_variants_leave_the_others_out_of_the_closed_loop(finished_run, tiny_checkpoints, recipe_file,
                                                                       tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    m = Pipeline(tiny_checkpoints["regression"], load_recipe(recipe_file, ["evaluation.variants=[onnx-fp32]"]),
                 run).run()
    assert set(m["evaluations"]) == {"baseline", "onnx-fp32"}
    assert m["variants"]["compressed"]["eval_skipped"] == "not evaluated: evaluation.variants lists onnx-fp32"
    assert m["verdict"]["deploy"] == "onnx-fp32" and set(m["verdict"]["gates"]) == {"onnx-fp32"}
    assert all(m["stages"][n]["cached"] for n in ("passes", "export-onnx-fp32", "eval-baseline", "eval-onnx-fp32"))


def test_interrupted_run_resumes(tiny_checkpoints, recipe_file, tmp_path, monkeypatch, finished_run):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    m = _manifest(run)
    del m["stages"]["eval-onnx-fp32"], m["stages"]["profile"]  # as if killed during the last evaluation
    shutil.rmtree(run / "stages" / "profile")
    (run / "manifest.json").write_text(json.dumps(m))
    calls = []
    real = Pipeline._evaluate_together

    def spy(self, names, *a, **k):
        calls.append(list(names))
        return real(self, names, *a, **k)

    monkeypatch.setattr(Pipeline, "_evaluate_together", spy)
    Pipeline(tiny_checkpoints["regression"], load_recipe(recipe_file), run).run()
    stages = _manifest(run)["stages"]
    assert stages["eval-onnx-fp32"]["cached"] is False and stages["profile"]["cached"] is False
    assert all(stages[n]["cached"] for n in ("checkpoint", "calibration-data", "passes", "export-onnx-fp32",
                                             "eval-baseline", "eval-compressed"))
    assert calls == [["onnx-fp32"]]  # only the evaluation that was lost ran again


def test_variants_are_evaluated_together_with_the_outcomes_of_separate_runs(finished_run, tiny_checkpoints):
    from vla_compress.evaluate.rollout import PolicySpec, evaluate

    m = _manifest(finished_run)
    assert sorted(m["stages"]["eval-baseline"]["together_with"]) == ["eval-compressed", "eval-onnx-fp32"]
    alone = evaluate(PolicySpec("torch", str(tiny_checkpoints["regression"])), "metaworld-mt10", ["drawer-close-v3"],
                     1, threads_per_worker=None, max_steps=8)
    together = json.loads((finished_run / "stages" / "eval-baseline" / "result.json").read_text())
    keep = ("task", "seed", "success", "steps", "inferences")
    assert [{k: e[k] for k in keep} for e in together["episodes"]] == [{k: e[k] for k in keep}
                                                                        for e in alone["episodes"]]


def test_report_command_escapes_recipe_strings(finished_run, tmp_path):
    out = tmp_path / "r.html"
    res = CliRunner().invoke(main, ["report", str(finished_run), "--out", str(out)])
    assert res.exit_code == 0, res.output
    html = out.read_text()
    assert "tiny &lt;b&gt;model&lt;/b&gt; &amp; friends" in html and "<b>model</b>" not in html
    for section in ("summary", "variants", "estimates", "gates", "stages"):
        assert f'id="{section}"' in html
    assert html.count("<svg") >= 4
    assert "http://" not in html and "https://" not in html


# --- bad input: a clear error, exit code 2, no run folder written --------------------------------

@pytest.mark.parametrize("edit,match", [
    (("hardware: x86-desktop-cpu", "hardware: orin-mega"), "tiny.yaml:3: target.hardware"),
    (("pass: int8-weight-only", "pass: int3-magic"), "unknown pass 'int3-magic'"),
    (("evaluation: {", "evaluation: {{"), "malformed YAML"),
])
def test_bad_recipe_exits_2_and_writes_nothing(tmp_path, tiny_checkpoints, edit, match):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(RECIPE.replace(*edit))
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["compress", str(tiny_checkpoints["regression"]), "-p", str(recipe), "--out", str(out)])
    assert res.exit_code == 2 and match in res.output, res.output
    assert not out.exists()


def test_checkpoint_without_config_exits_2(tmp_path, tiny_checkpoints, recipe_file):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoints["regression"], ckpt)
    (ckpt / "config.json").unlink()
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["compress", str(ckpt), "-p", str(recipe_file), "--out", str(out)])
    assert res.exit_code == 2 and "config.json" in res.output, res.output
    assert not out.exists()


def test_refuses_a_non_run_folder(tmp_path, tiny_checkpoints, recipe_file):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    res = CliRunner().invoke(main, ["compress", str(tiny_checkpoints["regression"]), "-p", str(recipe_file),
                                    "--out", str(out)])
    assert res.exit_code == 2 and "not empty" in res.output
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]


# --- the report in a real browser -------------------------------------------------------------------

def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium here (Debian package 'chromium'; "
                                                "install.sh installs it)")
def test_report_renders_offline_in_headless_chromium(finished_run, tmp_path):
    """Render the report; every request the page could make goes to a local proxy that records it:
    none may arrive. The DOM after scripts ran must hold the tables and charts; a screenshot is kept."""
    import socket
    import subprocess
    import threading

    seen: list[bytes] = []
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.5)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            seen.append(conn.recv(4096))
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    shot = tmp_path / "report.png"
    flags = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
             f"--proxy-server=http://127.0.0.1:{srv.getsockname()[1]}", "--proxy-bypass-list=<-loopback>",
             "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-sync",
             "--disable-features=NetworkTimeServiceQuerying",
             "--window-size=1400,2600"]
    url = (finished_run / "report.html").resolve().as_uri()
    try:
        dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
        subprocess.run(flags + [f"--screenshot={shot}", url], capture_output=True, timeout=120)
    finally:
        stop.set()
        t.join(2)
        srv.close()
    # Chromium itself talks to Google's update/time services whatever page it opens: that is the
    # browser, not the report. Anything else that reached the proxy was requested by the page.
    # A connection that closes without sending a byte (Chromium preconnects to its proxy) requests
    # nothing.
    browser_own = (b"google.com", b"googleapis.com", b"gvt1.com", b"gstatic.com")
    from_page = [r for r in seen if r and not any(h in r.split(b"\r\n")[0] for h in browser_own)]
    assert from_page == [], f"the report made network requests: {from_page[:3]}"
    assert 'id="variants"' in dom and 'id="gates"' in dom and 'id="estimates"' in dom
    assert dom.count("<svg") >= 4 and "<circle" in dom and "<rect" in dom
    assert shot.is_file() and shot.stat().st_size > 20_000
    keep = Path(__file__).resolve().parents[2] / ".cache" / "test-artifacts"
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, keep / "report.png")
