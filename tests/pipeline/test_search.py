"""`vla-compress search`: candidates from the sweep × the runtime's precisions, a shortlist that meets
the device budget, the sequential gate in closed loop, the winner written as a recipe compress loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from vla_compress.cli.main import main
from vla_compress.errors import ConfigError
from vla_compress.pipeline.recipe import load_recipe
from vla_compress.pipeline.search import Search, SearchSpec, choose_cuts

# one task, 3 paired episodes of 8 steps in one round: the tiny random policies fail every one, so a
# faithful candidate's pairs are all concordant and a 90-point budget decides at the first look
QUICK = dict(hardware="x86-desktop-cpu", runtime="onnxruntime", precisions=["fp32", "int8-dynamic"], max_cuts=1,
             shortlist=2, tasks=["drawer-close-v3"], episodes=3, episodes_per_round=3, max_drop=0.9, workers=1,
             samples=2, validation_samples=2, max_steps=8)


@pytest.fixture(scope="module")
def searched(tiny_checkpoints, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("search") / "run"
    Search(tiny_checkpoints["regression"], SearchSpec(max_latency_ms=1000.0, **QUICK), out).run()
    return out


def test_search_evaluates_the_shortlist_and_writes_a_recipe_compress_loads(searched, tiny_checkpoints):
    m = json.loads((searched / "manifest.json").read_text())
    s = m["search"]
    names = [r["name"] for r in s["candidates"]]
    # level 0 and level 1 (the one cut), each as fp32 and int8-dynamic ONNX
    assert names == ["cut0-onnx-fp32", "cut0-onnx-int8-dynamic", "cut1-onnx-fp32", "cut1-onnx-int8-dynamic"]
    assert len(s["cuts"]) == 1 and s["candidates"][2]["cuts"] == [s["cuts"][0]["candidate"]]
    for r in s["candidates"]:
        assert r["status"] == "ok" and r["meets_budget"] and r["estimated_p50_ms"] > 0 and r["measured_p50_ms"] > 0
    assert s["candidates"][0]["fidelity"]["action_l1"] < 1e-4  # the fp32 export of the checkpoint itself
    # the shortlist: the two most faithful, evaluated in closed loop on the baseline's seeds
    fid = {r["name"]: r["fidelity"]["action_l1"] for r in s["candidates"]}
    assert s["shortlist"] == sorted(fid, key=fid.get)[:2]
    assert set(m["evaluations"]) == {"baseline", *s["shortlist"]}
    gates = m["verdict"]["gates"]
    assert all(gates[n]["sequential"]["looks"] for n in s["shortlist"])
    # the winner passed with the largest difference; its recipe reproduces it in compress
    assert s["winner"] in s["shortlist"] and gates[s["winner"]]["verdict"] == "pass"
    assert m["verdict"]["verdict"] == "pass" and m["verdict"]["deploy"] == s["winner"]
    recipe_path = Path(s["recipe"])
    assert recipe_path == searched / "recipe.yaml" and recipe_path.read_text().startswith("# Written by")
    win = next(r for r in s["candidates"] if r["name"] == s["winner"])
    recipe = load_recipe(recipe_path)
    assert recipe.budgets["max_latency_ms"] == 1000.0 and recipe.target["precision"] == win["precision"]
    assert [e.to_dict() for e in recipe.exports] == [win["export"]] and win["export"]["optimize"] == "ort"
    assert len(recipe.passes) == win["level"]
    assert recipe.deploy == "onnx-" + win["export"]["precision"]
    html = (searched / "report.html").read_text()
    assert 'id="candidates"' in html and "Frontier" in html and "budget 1000.0 ms" in html


def test_a_rerun_reuses_every_stage(searched, tiny_checkpoints):
    m = Search(tiny_checkpoints["regression"], SearchSpec(max_latency_ms=1000.0, **QUICK), searched).run()
    assert all(st["cached"] for st in m["stages"].values())


def test_nothing_meets_the_budget_exits_1_without_a_recipe(tiny_checkpoints, tmp_path):
    out = tmp_path / "run"
    args = ["search", str(tiny_checkpoints["regression"]), "-H", "x86-desktop-cpu", "--runtime", "onnxruntime",
            "--latency-ms", "0.000001", "--precisions", "fp32", "--max-cuts", "1", "--tasks", "drawer-close-v3",
            "--episodes", "2", "--episodes-per-round", "1", "--workers", "1", "--max-steps", "8", "--out", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1, r.output
    assert "no candidate meets the budget" in r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["search"]["shortlist"] == [] and m["search"]["winner"] is None and m["search"]["recipe"] is None
    assert set(m["evaluations"]) == set() and not (out / "recipe.yaml").exists()


@pytest.mark.parametrize("extra, match", [
    ([], "one latency budget"),
    (["--latency-ms", "5", "--control-hz", "10"], "one latency budget"),
    (["--latency-ms", "5", "--precisions", "fp64"], "does not take fp64"),
    (["--latency-ms", "5", "-H", "no-such-device"], "no-such-device"),
    (["--latency-ms", "5", "--shortlist", "0"], "--shortlist must be"),
])
def test_bad_input_is_a_clear_error_before_the_run_folder_exists(tiny_checkpoints, tmp_path, extra, match):
    out = tmp_path / "run"
    args = ["search", str(tiny_checkpoints["regression"]), "-H", "x86-desktop-cpu", "--runtime", "onnxruntime",
            "--out", str(out), *extra]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and match in r.output, r.output
    assert not out.exists()


def test_ray_absent_is_a_clear_error(tiny_checkpoints, tmp_path, monkeypatch):
    from vla_compress.evaluate import executor as executor_mod

    monkeypatch.setattr(executor_mod, "ray_available", lambda: False)
    with pytest.raises(ConfigError, match="ray is not installed: pip install"):
        Search(tiny_checkpoints["regression"], SearchSpec(max_latency_ms=5.0, **{**QUICK, "executor": "ray"}),
               tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_cut_levels_take_the_cheapest_cut_per_group():
    rows = [
        {"candidate": "a", "configs": [{"pass": "width-prune", "mlp_ratio": 0.25, "where": "backbone"}],
         "action_l1": 0.01, "flops_fraction": 0.9},  # 0.1 per FLOP removed
        {"candidate": "b", "configs": [{"pass": "width-prune", "mlp_ratio": 0.5, "where": "backbone"}],
         "action_l1": 0.015, "flops_fraction": 0.8},  # 0.075: cheaper, same group as a
        {"candidate": "c", "configs": [{"pass": "layer-drop", "num_layers": 1, "where": {
            "components": ["backbone"], "include": ["layers.0"]}}], "action_l1": 0.05, "flops_fraction": 0.7},
        {"candidate": "d", "configs": [{"pass": "visual-token-prune", "keep_ratio": 0.5}], "action_l1": 0.0,
         "flops_fraction": 1.0},  # removes nothing
        {"candidate": "e", "configs": [{"pass": "width-prune", "heads_ratio": 0.5, "where": "backbone"}],
         "error": "does not divide"},
    ]
    assert [r["candidate"] for r in choose_cuts(rows, 3)] == ["b", "c"]
    assert [r["candidate"] for r in choose_cuts(rows, 1)] == ["b"]
    assert choose_cuts(rows, 0) == []


def test_the_written_recipe_is_yaml_with_the_winners_passes(searched):
    raw = yaml.safe_load((searched / "recipe.yaml").read_text())
    assert raw["evaluation"]["sequential"] == {"episodes_per_round": 3}
    assert raw["name"].startswith("search-tiny-regression-x86-desktop-cpu-cut")
