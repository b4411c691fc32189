"""Sequential evaluation in a compress run: rounds per variant, early stopping per variant, the
baseline only as long as needed, cached rounds, and the gate records in the manifest."""

from __future__ import annotations

import json

import pytest

from vla_compress.errors import ConfigError
from vla_compress.evaluate.sequential import RoundPlan
from vla_compress.pipeline.evaluation import evaluate_sequentially
from vla_compress.pipeline.recipe import load_recipe
from vla_compress.pipeline.run import Pipeline

TASKS = ("reach-v3", "push-v3")


def fake_round(outcome):
    """run_round for evaluate_sequentially: `outcome(name, task, episode)` -> success."""
    calls = []

    def run(name, first, count):
        calls.append((name, first, count))
        eps = [{"task": t, "seed": 1_000_000 + 1000 * k + i, "success": outcome(name, t, i), "steps": 1,
                "inferences": 1, "mean_infer_ms": 1.0, "wall_s": 0.0}
               for i in range(first, first + count) for k, t in enumerate(TASKS)]
        return {"suite": "metaworld-mt10", "per_task": {t: {} for t in TASKS}, "episodes_per_task": count,
                "first_episode": first, "wall_s": 0.0, "episodes": eps, "workers": 1, "suite_options": {}}

    return run, calls


def test_a_decided_variant_stops_and_the_baseline_runs_only_as_long_as_needed():
    # "same" agrees with the baseline on every episode: it passes a 10-point budget after 70 pairs
    # (35 rounds of 2 tasks); "broken" never succeeds where the baseline always does: it fails early
    run, calls = fake_round(lambda name, t, i: name != "broken")
    evals, gates = evaluate_sequentially(["baseline", "same", "broken"], run, RoundPlan(1, 100), 0.10, 0.95)
    assert gates["broken"]["verdict"] == "fail" and gates["same"]["verdict"] == "pass"
    n_same, n_broken = gates["same"]["episodes"], gates["broken"]["episodes"]
    assert n_broken < n_same == 70
    assert sum(1 for c in calls if c[0] == "baseline") == n_same // len(TASKS)  # stops with the last variant
    assert evals["baseline"]["episodes_per_task"] == n_same // len(TASKS)
    assert evals["broken"]["mean_success"] == 0.0 and evals["same"]["mean_success"] == 1.0
    assert gates["same"]["sequential"]["looks"][-1]["verdict"] == "pass"
    assert "confidence sequence" in gates["same"]["message"]


def test_an_undecided_variant_is_inconclusive_at_the_cap():
    run, calls = fake_round(lambda name, t, i: (i + (name == "coin")) % 2 == 0)  # always disagrees
    evals, gates = evaluate_sequentially(["baseline", "coin"], run, RoundPlan(2, 6), 0.10, 0.95)
    assert gates["coin"]["verdict"] == "inconclusive" and gates["coin"]["episodes"] == 12
    assert [c[1:] for c in calls if c[0] == "coin"] == [(0, 2), (2, 2), (4, 2)]


RECIPE = """\
name: tiny-sequential
target: {hardware: x86-desktop-cpu, runtime: onnxruntime, precision: fp32}
exports:
  - {format: onnx, precision: fp32}
calibration: {episodes_per_task: 1, samples: 2, validation_samples: 2}
evaluation: {tasks: [drawer-close-v3], episodes: 2, workers: 1, max_steps: 8, sequential: {episodes_per_round: 1}}
budgets: {max_success_drop: 0.2}
profiling: {steps: 2, warmup: 1, threads: 1}
"""


def test_compress_evaluates_in_cached_rounds(tiny_checkpoints, tmp_path):
    (tmp_path / "r.yaml").write_text(RECIPE)
    recipe = load_recipe(tmp_path / "r.yaml")
    m = Pipeline(tiny_checkpoints["regression"], recipe, tmp_path / "run").run()
    rounds = {s for s in m["stages"] if s.startswith("eval-")}
    assert rounds == {"eval-baseline-from0", "eval-baseline-from1", "eval-onnx-fp32-from0", "eval-onnx-fp32-from1"}
    g = m["verdict"]["gates"]["onnx-fp32"]
    assert g["episodes"] == 2 and len(g["sequential"]["looks"]) == 2 and g["verdict"] == "inconclusive"
    assert m["evaluations"]["baseline"]["episodes_per_task"] == 2
    again = Pipeline(tiny_checkpoints["regression"], recipe, tmp_path / "run").run()
    assert all(again["stages"][s]["cached"] for s in rounds)
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["verdict"]["gates"] == m["verdict"]["gates"]


@pytest.mark.parametrize("value, words", [({"episodes_per_round": 0}, "must be an integer in"),
                                          ({"episodes_per_round": 3}, "must be an integer in"),
                                          ({"rounds": 2}, "must be {episodes_per_round: N}")])
def test_bad_sequential_settings_name_the_key(tmp_path, value, words):
    (tmp_path / "r.yaml").write_text(RECIPE.replace("{episodes_per_round: 1}", json.dumps(value)))
    with pytest.raises(ConfigError, match=words):
        load_recipe(tmp_path / "r.yaml")
