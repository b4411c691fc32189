"""Recipes: every shipped one validates; bad ones fail with file, line and key; --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from vla_compress.errors import ConfigError
from vla_compress.pipeline.recipe import list_recipes, load_recipe

GOOD = """\
name: test
target:
  hardware: x86-desktop-cpu
  runtime: onnxruntime
  precision: int8
passes:
  - pass: int8-weight-only
    where: backbone
exports:
  - format: onnx
    precision: int8-dynamic
evaluation:
  tasks: [drawer-close-v3]
  episodes: 3
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_shipped_recipes_validate():
    names = list_recipes()
    assert "demo-cpu-onnx-int8" in names
    for name in names:
        r = load_recipe(name)
        assert r.deploy in ["baseline", *r.variant_names()]


def test_good_recipe_and_defaults(tmp_path):
    r = load_recipe(_write(tmp_path, GOOD))
    assert r.variant_names() == ["compressed", "onnx-int8-dynamic"]
    assert r.deploy == "onnx-int8-dynamic"
    assert r.budgets["max_success_drop"] == 0.10 and r.evaluation["workers"] == 2


def test_overrides(tmp_path):
    r = load_recipe(_write(tmp_path, GOOD), ["evaluation.episodes=7", "budgets.max_latency_ms=25",
                                             "passes.0.where=[projector]"])
    assert r.evaluation["episodes"] == 7 and r.budgets["max_latency_ms"] == 25
    assert r.passes[0].where.components == ("projector",)
    with pytest.raises(ConfigError, match="key=value"):
        load_recipe(_write(tmp_path, GOOD), ["evaluation.episodes"])
    with pytest.raises(ConfigError, match="not an index"):
        load_recipe(_write(tmp_path, GOOD), ["passes.5.where=backbone"])


@pytest.mark.parametrize("old,new,match", [
    ("hardware: x86-desktop-cpu", "hardware: jetson-orin-mega", r"r\.yaml:3: target\.hardware: .*jetson-orin-mega"),
    ("pass: int8-weight-only", "pass: int3-magic", r"r\.yaml:7: passes\.0: .*unknown pass 'int3-magic'"),
    ("  episodes: 3", "  episodes: -1", r"r\.yaml:14: evaluation\.episodes: must be an integer >= 1"),
    ("    precision: int8-dynamic", "    precision: int2", r"r\.yaml:10: exports\.0: .*unknown precision 'int2'"),
    ("evaluation:", "evalution:", r"r\.yaml:12: evalution: unknown key"),
    ("  tasks: [drawer-close-v3]", "  tasks: [fly-v3]", r"r\.yaml:13: evaluation\.tasks: .*fly-v3"),
    ("  precision: int8\n", "  precision: fp4\n", r"r\.yaml:2: target: .*fp4"),
])
def test_bad_recipes_name_file_line_and_key(tmp_path, old, new, match):
    assert old in GOOD
    with pytest.raises(ConfigError, match=match):
        load_recipe(_write(tmp_path, GOOD.replace(old, new, 1)))


def test_malformed_yaml_and_unknown_recipe(tmp_path):
    with pytest.raises(ConfigError, match=r"r\.yaml:3: malformed YAML"):
        load_recipe(_write(tmp_path, "name: x\ntarget: {hardware: [\n  - : :\n"))
    with pytest.raises(ConfigError, match="unknown recipe 'nope'.*demo-cpu-onnx-int8"):
        load_recipe("nope")
    with pytest.raises(ConfigError, match="deploy: 'gguf-q4_k_m' is not a variant"):
        load_recipe(_write(tmp_path, GOOD + "deploy: gguf-q4_k_m\n"))


def test_evaluation_variants_choose_who_runs_in_closed_loop(tmp_path):
    r = load_recipe(_write(tmp_path, GOOD + "  variants: [onnx-int8-dynamic]\n"))
    assert r.evaluation["variants"] == ["onnx-int8-dynamic"] and r.deploy == "onnx-int8-dynamic"
    assert load_recipe(_write(tmp_path, GOOD)).evaluation["variants"] is None  # default: every variant
    with pytest.raises(ConfigError, match=r"evaluation\.variants: \['gguf-q4_k_m'\] are not variants of this recipe; "
                                          r"variants: compressed, onnx-int8-dynamic"):
        load_recipe(_write(tmp_path, GOOD + "  variants: [gguf-q4_k_m]\n"))
    with pytest.raises(ConfigError, match=r"evaluation\.variants: must include the deployed variant 'onnx-int8-dynamic'"):
        load_recipe(_write(tmp_path, GOOD + "  variants: [compressed]\n"))
    with pytest.raises(ConfigError, match=r"evaluation\.variants: must be a non-empty list"):
        load_recipe(_write(tmp_path, GOOD + "  variants: []\n"))
