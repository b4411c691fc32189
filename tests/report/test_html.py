"""The report's summary card: it leads with what was measured, shows an estimate with its band and
its calibration state, and names the recipe and checkpoint instead of machine paths."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from vla_compress.report.html import build_view, render

SAMPLE = Path(__file__).resolve().parents[2] / "reports" / "sample" / "manifest.json"


def manifest() -> dict:
    return json.loads(SAMPLE.read_text())


def test_the_headline_leads_with_the_measured_latency():
    html = render(manifest())
    card = html[html.index('id="summary"'):html.index("<h2>Variants</h2>")]
    assert card.index("measured here") < card.index("estimated on")
    assert "an estimate, not a measurement" in card or "calibrated on the device" in card


def test_an_estimate_shows_its_band():
    m = manifest()
    deploy = m["verdict"]["deploy"]
    for row in m["profile"]["estimated"][deploy]["rows"]:
        row["p50_ms"], row["p50_ms_range"] = 0.389, [0.2, 3.1]
    view = build_view(m)
    assert view["summary"]["row"]["est_range"] == "0.2–3.1"
    card = render(m)
    assert "0.2–3.1 ms" in card and "the range the estimator's efficiency factors allow" in card


def test_recipe_and_checkpoint_are_named_not_pathed():
    m = manifest()
    m["recipe"]["source"] = "/some/other/machine/profiles/demo-cpu-onnx-int8.yaml"
    m["checkpoint"]["path"] = "/some/other/machine/checkpoints/reference-small-chunk"
    html = render(m)
    head = html[:html.index('id="summary"')]
    assert "shipped recipe demo-cpu-onnx-int8" in head and "/some/other/machine" not in head
    assert "reference-small-chunk" in head
    mine = copy.deepcopy(m)
    mine["recipe"]["source"] = "/home/me/my-recipe.yaml"
    assert "your recipe file my-recipe.yaml" in render(mine)


def test_a_stage_an_interrupted_invocation_left_running_renders():
    # a killed `compress` leaves its stage "running" (no cached / wall_s); a resumed run that no longer
    # needs it (evaluation.variants left it out) still writes its report
    m = manifest()
    m["stages"]["eval-compressed"] = {"key": "abc", "started": "2026-12-03T12:00:00", "status": "running",
                                      "what": "closed-loop evaluation of compressed (torch)"}
    html = render(m)
    row = html[html.index("<td>eval-compressed</td>"):]
    assert row.startswith("<td>eval-compressed</td><td>running</td>")
