"""The export template (export/template.py): a format writes only its own files; the staging folder,
the manifest, the hashes and the failure record are the template's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from vla_compress.errors import ConfigError, ExportError
from vla_compress.export import Artifact, ExportConfig, ExportInputs, Exporter, Tolerance
from vla_compress.export.onnx import OnnxExportConfig


@dataclass(frozen=True)
class TextConfig(ExportConfig):
    format: ClassVar[str] = "text"
    PRECISIONS: ClassVar[tuple[str, ...]] = ("fp32",)

    def default_tolerance(self, head: str) -> Tolerance:
        return Tolerance()


class TextExporter(Exporter):
    """A format whose artifact is one text file; `fail` makes its write step raise."""

    format = "text"
    label = "Text"
    config_cls = TextConfig

    def __init__(self, fail: Exception | None = None):
        self.fail = fail

    def prepare(self, job) -> None:
        job.manifest["text"] = {"threads": job.inputs.threads}

    def write(self, job, stage, tmp) -> None:
        (stage / "model.txt").write_text(f"{job.meta['head']} head\n")
        if self.fail is not None:
            raise self.fail
        job.manifest["graphs"]["model"] = {"file": "model.txt"}


def test_a_format_writes_only_its_files(tiny_models, tmp_path):
    vla = tiny_models["regression"]
    art = TextExporter().export(vla, TextConfig(), tmp_path / "a", ExportInputs(threads=3, source=None))
    assert isinstance(art, Artifact) and art.status == "unvalidated" and art.format == "text"
    m = art.manifest
    assert m["text"] == {"threads": 3} and m["model"]["head"] == "regression" and m["graphs"]["model"]
    assert "model.txt" in m["files"] and set(m["processor_files"]) <= set(m["files"])  # hashed, processor saved
    art.verify_files()
    assert m["source"]["weights_sha256"] and m["config"]["format"] == "text"
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no staging folder left behind


def test_an_unexpected_error_leaves_a_failed_artifact(tiny_models, tmp_path):
    with pytest.raises(ExportError, match=r"Text export \(fp32\) failed: RuntimeError: disk on fire"):
        TextExporter(RuntimeError("disk on fire")).export(tiny_models["tokens"], TextConfig(), tmp_path / "b")
    art = Artifact.load(tmp_path / "b")
    assert art.status == "failed" and art.files == {} and "disk on fire" in art.manifest["error"]
    assert not (tmp_path / "b" / "model.txt").exists()  # the half-written files are not kept


def test_config_errors_pass_through_and_write_nothing(tiny_models, tmp_path):
    with pytest.raises(ConfigError, match="not this way"):
        TextExporter(ConfigError("not this way")).export(tiny_models["tokens"], TextConfig(), tmp_path / "c")
    assert not (tmp_path / "c").exists()
    with pytest.raises(ConfigError, match="the text exporter needs a TextConfig, got OnnxExportConfig"):
        TextExporter().export(tiny_models["tokens"], OnnxExportConfig(), tmp_path / "d")
