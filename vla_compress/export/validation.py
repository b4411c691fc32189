"""The steps every exporter's `validate()` shares: check that the torch model is the artifact's
source, run the artifact's runtime (teacher-forced too, for token heads), and record the verdict.
Each exporter only says which runtime runs its artifact."""

from __future__ import annotations

import time
from typing import Any, Callable

from ..errors import ConfigError
from .artifact import Artifact
from .base import ExportError
from .family import get_export_family, weights_fingerprint
from .parity import ParityReport, compare


def source_family(artifact: Artifact, vla: Any, observations: list[dict]) -> Any:
    """The artifact's export family, after checking `vla` is the model it was exported from."""
    if not observations:
        raise ConfigError("validate needs at least one observation")
    m = artifact.manifest
    family = get_export_family(m["model"]["family"])
    if family.head_meta(vla) != m["model"] or weights_fingerprint(vla) != m["source"].get("weights_sha256"):
        raise ExportError(artifact.path, "the torch model given to validate() is not the one this artifact came from")
    return family


def runner_outputs(runner: Any, feeds: dict, ref: dict, bins: Any = None) -> dict:
    """`runner.predict(feeds)`; for token heads also the logits along the torch tokens (see parity.py)."""
    got = runner.predict(feeds)
    if "bins" in ref:
        forced = runner.predict(feeds, force_bins=ref["bins"] if bins is None else bins)
        got["bin_logits"], got["bins_teacher_forced"] = forced["bin_logits"], forced["bins"]
    return got


def run_or_fail(artifact: Artifact, runtime: str, run: Callable[[], dict]) -> dict:
    """`run()`; an artifact its runtime cannot even run is marked failed (and the error raised)."""
    try:
        return run()
    except Exception as e:  # noqa: BLE001  (any runtime error is the artifact's verdict)
        artifact.manifest["error"] = f"the artifact could not be run in {runtime}: {type(e).__name__}: {e}"
        artifact.manifest["status"] = "failed"
        artifact.save()
        raise ExportError(artifact.path, artifact.manifest["error"]) from e


def record(artifact: Artifact, ref: dict, got: dict, tolerance_for: Callable[[str], Any],
           timing_s: dict[str, float]) -> ParityReport:
    """Compare, store the report and ok/failed in the manifest, return the report."""
    head = artifact.manifest["model"]["head"]
    report = compare(head, ref, got, tolerance_for(head))
    report.timing_s = timing_s
    artifact.manifest.pop("error", None)
    artifact.record_validation(report)
    return report


def torch_reference(family: Any, vla: Any, observations: list[dict]) -> tuple[dict, float]:
    """Torch outputs on `observations` and the seconds they took."""
    t0 = time.perf_counter()
    ref = family.torch_outputs(vla, observations)
    return ref, time.perf_counter() - t0
