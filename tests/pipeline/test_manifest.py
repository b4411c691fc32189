"""The run manifest's schema (vla_compress/manifest.py): typed Variant records, a version, and the
manifests written before them (tests/pipeline/data/manifest_v1.json: the sample run committed before
the change) still loading and rendering."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from vla_compress.errors import ConfigError
from vla_compress.manifest import MANIFEST_VERSION, Variant, check_version, dump_variants, load_variants

SAMPLE = Path(__file__).resolve().parent / "data"


@pytest.fixture
def old_manifest() -> dict:
    m = json.loads((SAMPLE / "manifest_v1.json").read_text())
    assert m["manifest_version"] == 1  # written before Variant records existed
    return m


def test_an_old_manifest_loads_into_records_with_canonical_runtimes(old_manifest):
    variants = load_variants(old_manifest)
    assert list(variants) == list(old_manifest["variants"])
    art = variants["onnx-int8-dynamic"]
    assert art.kind == "artifact" and art.runtime == "onnxruntime" and art.runnable  # version 1 wrote "onnx"
    assert variants["baseline"].runtime == "torch" and variants["baseline"].status is None
    for name, d in dump_variants(variants).items():  # nothing else changes on the way through
        assert d == {**old_manifest["variants"][name], "runtime": variants[name].runtime}


def test_the_gate_reads_the_records_and_reaches_the_recorded_verdict(old_manifest):
    from vla_compress.evaluate.gate import decide

    cfg = old_manifest["recipe"]["config"]
    verdict = decide(load_variants(old_manifest), old_manifest["evaluations"], old_manifest["profile"],
                     cfg["budgets"], cfg["deploy"], cfg["target"])
    assert verdict == old_manifest["verdict"]


def test_an_old_run_folder_renders_its_report(tmp_path):
    from vla_compress.report.html import write_report

    run = tmp_path / "old-run"
    run.mkdir()
    shutil.copy(SAMPLE / "manifest_v1.json", run / "manifest.json")
    html = write_report(run).read_text()
    assert "onnx-int8-dynamic" in html and "Deployable" in html
    for section in ("summary", "variants", "estimates", "gates", "stages"):
        assert f'id="{section}"' in html


def test_an_old_run_folder_resumes_under_the_new_version(tmp_path, old_manifest):
    from vla_compress.pipeline.stages import Run

    (tmp_path / "manifest.json").write_text(json.dumps(old_manifest))
    assert Run(tmp_path).manifest["manifest_version"] == MANIFEST_VERSION
    (tmp_path / "manifest.json").write_text(json.dumps({**old_manifest, "manifest_version": 99}))
    with pytest.raises(ConfigError, match="incompatible version"):
        Run(tmp_path)


def test_variant_records_check_what_they_read(old_manifest):
    v = copy.deepcopy(old_manifest["variants"]["onnx-int8-dynamic"])
    with pytest.raises(ConfigError, match=r"variant 'x': unknown keys \['colour'\]"):
        Variant.from_dict({**v, "colour": "red"}, "x")
    with pytest.raises(ConfigError, match=r"missing keys \['source'\]"):
        Variant.from_dict({k: x for k, x in v.items() if k != "source"}, "x")
    with pytest.raises(ConfigError, match="variant kind 'model'"):
        Variant("model", "torch", "ckpt")
    with pytest.raises(ConfigError, match="incompatible version: 99"):
        check_version({"manifest_version": 99}, "m.json")
    failed = Variant("artifact", "onnxruntime", "ckpt", format="onnx", precision="fp32", status="error", error="boom")
    assert not failed.runnable and failed.to_dict()["key"] is None  # not produced: key null, as version 1 wrote
    assert failed.skipped("why").eval_skipped == "why" and failed.eval_skipped is None
