"""What a hostile or broken input meets at the CLI: one line naming the file/key, exit code 2, nothing
partial left on disk.

The matrix: truncated/corrupt safetensors, a tensor of the wrong shape, missing and mistyped config
keys, invalid JSON and YAML, pickle weights without and with --allow-pickle, unknown pass / hardware
/ runtime / precision names, a --set on an unknown key, an output folder that holds another run, a
read-only output folder, a full disk during an export, an op the ONNX exporter cannot translate, and
HTML/JS in the strings a report shows (escaped; the page's CSP runs only its own script).

In-process through click's CliRunner (as tests/cli does), on the tiny checkpoints of conftest.py.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from vla_compress.cli.main import main
from vla_compress.fileio import load_safetensors, save_safetensors

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_RUN = ROOT / "reports" / "sample" / "manifest.json"
TINY_RECIPE = """\
name: tiny-bad-input
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


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *needles: str) -> str:
    """Exit code 2, a single 'error: ...' line on stderr holding every needle, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for n in needles:
        assert n in err, (n, err)
    assert "Traceback" not in result.output
    return err


def no_leftovers(folder: Path) -> None:
    """No staging/temporary/failed siblings a crashed write could leave behind."""
    if folder.exists():
        stray = [p.name for p in folder.iterdir() if re.search(r"\.(staging|tmp|failed|old|partial)$", p.name)]
        assert not stray, stray


@pytest.fixture
def ckpt(tiny_checkpoints, tmp_path) -> Path:
    """A private copy of the tiny regression checkpoint, free to break."""
    return Path(shutil.copytree(tiny_checkpoints["regression"], tmp_path / "ckpt"))


def _edit_config(ckpt: Path, edit) -> Path:
    f = ckpt / "config.json"
    cfg = json.loads(f.read_text())
    edit(cfg)
    f.write_text(json.dumps(cfg))
    return f


def _inspect_fails(ckpt: Path, tmp_path: Path, *needles: str) -> str:
    """`inspect --json-out`: the error, and no JSON written."""
    out = tmp_path / "inspect.json"
    err = one_line_error(cli("inspect", ckpt, "--json-out", out), *needles)
    assert not out.exists()
    no_leftovers(tmp_path)
    return err


# --- weights ----------------------------------------------------------------------------------------

def test_truncated_safetensors(ckpt, tmp_path):
    f = ckpt / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    _inspect_fails(ckpt, tmp_path, str(f), "truncated or corrupt")


def test_corrupt_safetensors_header(ckpt, tmp_path):
    f = ckpt / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:40] = b"\xff" * 32  # the JSON header is garbage now
    f.write_bytes(bytes(data))
    _inspect_fails(ckpt, tmp_path, str(f), "not a valid safetensors file")


def test_tensor_of_the_wrong_shape(ckpt, tmp_path):
    f = ckpt / "model.safetensors"
    state = load_safetensors(f)
    state["action_head.fc2.weight"] = torch.zeros(3, 3)
    save_safetensors(state, f)
    _inspect_fails(ckpt, tmp_path, str(f), "wrong shapes", "action_head.fc2.weight: file (3, 3)")


def _pickled(ckpt: Path) -> Path:
    state = {k: v.clone() for k, v in load_safetensors(ckpt / "model.safetensors").items()}
    torch.save(state, ckpt / "pytorch_model.bin")
    (ckpt / "model.safetensors").unlink()
    return ckpt


def test_pickle_weights_without_opt_in_name_the_file_and_the_flag(ckpt, tmp_path):
    err = _inspect_fails(_pickled(ckpt), tmp_path, str(ckpt / "model.safetensors"), "pytorch_model.bin",
                         "--allow-pickle")
    assert "file not found" in err


def test_pickle_weights_with_opt_in_load(ckpt, tmp_path):
    out = tmp_path / "inspect.json"
    result = cli("inspect", _pickled(ckpt), "--allow-pickle", "--json-out", out)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["family"] == "reference"


def test_two_pickle_files_with_opt_in_are_not_guessed(ckpt, tmp_path):
    shutil.copy(_pickled(ckpt) / "pytorch_model.bin", ckpt / "model.pt")
    out = tmp_path / "inspect.json"
    one_line_error(cli("inspect", ckpt, "--allow-pickle", "--json-out", out), "model.pt, pytorch_model.bin",
                   "several pickle weight files")
    assert not out.exists()


# --- config.json ------------------------------------------------------------------------------------

@pytest.mark.parametrize("section,key", [(None, "action_dim"), (None, "head"), ("vision", "hidden_size"),
                                         ("backbone", "num_kv_heads"), ("backbone", "rms_norm_eps")])
def test_missing_config_key_names_the_key_and_the_file(ckpt, tmp_path, section, key):
    f = _edit_config(ckpt, lambda c: (c[section] if section else c).pop(key))
    name = f"{section}.{key}" if section else key
    _inspect_fails(ckpt, tmp_path, f"{f}: missing required key '{name}'")


def test_optional_config_keys_keep_their_defaults(ckpt, tmp_path):
    """Keys that do not shape the model may be absent (the preset name, the token budget, pruning's sizes)."""
    def drop(c):
        for k in ("preset", "visual_token_budget", "prompt_template"):
            c.pop(k)
        c["vision"].pop("layer_num_heads")
    _edit_config(ckpt, drop)
    assert cli("inspect", ckpt).exit_code == 0


@pytest.mark.parametrize("edit,needle", [
    (lambda c: c.update(acton_dim=c.pop("action_dim")), "unknown config keys: ['acton_dim']"),
    (lambda c: c.update(action_dim="four"), "action_dim: expected an integer, got 'four'"),
    (lambda c: c.update(chunk_size=2.5), "chunk_size: expected an integer, got 2.5"),
    (lambda c: c["vision"].update(cameras="corner"), "vision.cameras: expected a list of strings"),
    (lambda c: c["backbone"].update(num_layers=True), "backbone.num_layers: expected an integer, got True"),
    (lambda c: c.update(vision=[1]), "vision: expected a JSON object"),
], ids=["misspelled", "string-for-int", "float-for-int", "string-for-list", "bool-for-int", "list-for-object"])
def test_mistyped_config_key(ckpt, tmp_path, edit, needle):
    f = _edit_config(ckpt, edit)
    _inspect_fails(ckpt, tmp_path, str(f), needle)


def test_invalid_json(ckpt, tmp_path):
    (ckpt / "config.json").write_text('{"head": "regression",')
    _inspect_fails(ckpt, tmp_path, f"{ckpt / 'config.json'}: invalid JSON at line 1")


def test_openvla_config_without_image_sizes(tmp_path):
    from vla_compress.models.openvla.fixtures import write_tiny_openvla

    d = write_tiny_openvla(tmp_path / "openvla")
    f = _edit_config(Path(d), lambda c: c.pop("image_sizes"))
    _inspect_fails(Path(d), tmp_path, f"{f}: missing required key 'image_sizes'")


# --- names: passes, hardware, runtimes, precisions, --set -------------------------------------------

@pytest.fixture
def recipe(tmp_path) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY_RECIPE)
    return p


@pytest.mark.parametrize("edit,needles", [
    (("pass: int8-weight-only", "pass: int3-magic"), ["tiny.yaml", "unknown pass 'int3-magic'; known: "]),
    (("hardware: x86-desktop-cpu", "hardware: orin-mega"), ["tiny.yaml:2: target.hardware", "unknown hardware"]),
    (("runtime: onnxruntime", "runtime: tflite"), ["tiny.yaml:2: target.runtime", "tflite"]),
    (("{format: onnx, precision: fp32}", "{format: onnx, precision: int3}"), ["tiny.yaml", "int3"]),
    (("evaluation: {", "evaluation: {{"), ["tiny.yaml", "malformed YAML"]),
], ids=["pass", "hardware", "runtime", "precision", "invalid-yaml"])
def test_bad_recipe(tiny_checkpoints, tmp_path, recipe, edit, needles):
    recipe.write_text(TINY_RECIPE.replace(*edit))
    out = tmp_path / "run"
    one_line_error(cli("compress", tiny_checkpoints["regression"], "-p", recipe, "--out", out), *needles)
    assert not out.exists()


@pytest.mark.parametrize("override,needles", [
    ("evaluation.episodez=3", ["evaluation.episodez: unknown key; known: episodes"]),
    ("evaluation.episodes=[1", ["--set 'evaluation.episodes=[1': value is not valid YAML"]),
])
def test_set_on_an_unknown_key(tiny_checkpoints, tmp_path, recipe, override, needles):
    out = tmp_path / "run"
    one_line_error(cli("compress", tiny_checkpoints["regression"], "-p", recipe, "--set", override, "--out", out),
                   *needles)
    assert not out.exists()


@pytest.mark.parametrize("args,needles", [
    (["profile", "{ckpt}", "-H", "orin-mega", "--no-measure"], ["unknown hardware 'orin-mega'; known: "]),
    (["profile", "{ckpt}", "-H", "x86-desktop-cpu", "--runtime", "tflite", "--no-measure"],
     ["unknown runtime 'tflite'; known: "]),
    (["eval", "{ckpt}", "--runtime", "tflite"], ["unknown runtime 'tflite'; known: "]),
    (["profile", "{ckpt}", "-H", "x86-desktop-cpu", "-p", "int3", "--no-measure"], ["unknown precision 'int3'"]),
    (["export", "{ckpt}", "-f", "onnx", "-p", "int3", "--out", "{out}"], ["unknown precision 'int3'; supported: "]),
    (["export", "{ckpt}", "-f", "onnx2", "--out", "{out}"], ["unknown export format 'onnx2'"]),
    (["export", "{ckpt}", "-f", "onnx", "-o", "opset=[19", "--out", "{out}"], ["--option 'opset=[19'", "not valid YAML"]),
], ids=["hardware", "profile-runtime", "eval-runtime", "profile-precision", "export-precision", "format",
        "option-yaml"])
def test_unknown_names(tiny_checkpoints, tmp_path, args, needles):
    out = tmp_path / "out"
    args = [a.format(ckpt=tiny_checkpoints["regression"], out=out) for a in args]
    one_line_error(cli(*args), *needles)
    assert not out.exists()
    no_leftovers(tmp_path)


# --- output folders ---------------------------------------------------------------------------------

def test_a_run_folder_of_another_run_is_never_overwritten(tiny_checkpoints, tmp_path, recipe):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(SAMPLE_RUN, run / "manifest.json")  # the shipped checkpoint's demo run
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    one_line_error(cli("compress", tiny_checkpoints["regression"], "-p", recipe, "--out", run),
                   f"{run}: holds the run of another checkpoint", "choose another --out")
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_run_folder_of_another_recipe_is_never_overwritten(tiny_checkpoints, tmp_path, recipe):
    from vla_compress.pipeline.run import refuse_another_run
    from vla_compress.pipeline.stages import hash_checkpoint
    from vla_compress.errors import ConfigError

    files = hash_checkpoint(tiny_checkpoints["regression"])
    manifest = {"checkpoint": {"path": "x", "files": files}, "recipe": {"name": "cpu-onnx-int8"}}
    refuse_another_run(tmp_path, manifest, files, "cpu-onnx-int8")  # the same run: it resumes
    with pytest.raises(ConfigError, match="holds the run of recipe 'cpu-onnx-int8', not 'tiny-bad-input'"):
        refuse_another_run(tmp_path, manifest, files, "tiny-bad-input")


def test_export_into_a_folder_holding_other_files(tiny_checkpoints, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    one_line_error(cli("export", tiny_checkpoints["regression"], "-f", "onnx", "--out", out),
                   f"{out}: exists and is not an artifact directory")
    assert [p.name for p in out.iterdir()] == ["precious.txt"]


@contextlib.contextmanager
def unwritable(folder: Path, code: int):
    """Make writes under `folder` fail with OSError(`code`). chmod alone does not stop root (these
    machines run tests as root), so the temporary-file calls every writer goes through refuse too."""
    import tempfile

    folder.mkdir(parents=True, exist_ok=True)
    real_mkstemp, real_mkdtemp = tempfile.mkstemp, tempfile.mkdtemp

    def refuse(real):
        def fn(*a, dir=None, **k):
            if dir is not None and Path(dir).resolve().is_relative_to(folder.resolve()):
                raise OSError(code, os.strerror(code), str(dir))
            return real(*a, dir=dir, **k)
        return fn

    folder.chmod(0o555)
    tempfile.mkstemp, tempfile.mkdtemp = refuse(real_mkstemp), refuse(real_mkdtemp)
    try:
        yield folder
    finally:
        tempfile.mkstemp, tempfile.mkdtemp = real_mkstemp, real_mkdtemp
        folder.chmod(0o755)


@pytest.mark.parametrize("command", ["inspect", "export"])
def test_read_only_output_folder(tiny_checkpoints, tmp_path, command):
    with unwritable(tmp_path / "ro", errno.EROFS) as ro:
        if command == "inspect":
            target = ro / "inspect.json"
            result = cli("inspect", tiny_checkpoints["regression"], "--json-out", target)
        else:
            target = ro / "onnx"
            result = cli("export", tiny_checkpoints["regression"], "-f", "onnx", "--out", target)
        one_line_error(result, f"{target}: cannot be written: Read-only file system")
        assert list(ro.iterdir()) == []


def test_full_disk_during_an_export(tiny_checkpoints, tmp_path, monkeypatch):
    """The atomic writer fails with ENOSPC on its first file: the command stops with one line naming
    the file where it was asked to go; no artifact, staging or failed-artifact folder is left."""
    import vla_compress.fileio as fileio

    real = fileio.atomic_path

    @contextlib.contextmanager
    def disk_full(path):
        with real(path) as tmp:
            yield tmp
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

    monkeypatch.setattr(fileio, "atomic_path", disk_full)
    out = tmp_path / "exports" / "onnx"
    result = cli("export", tiny_checkpoints["regression"], "-f", "onnx", "--out", out, "--samples", "2")
    err = one_line_error(result, "No space left on device")
    assert err.startswith(f"error: {out}/")  # names the file inside the artifact folder, not a staging path
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_an_op_the_onnx_exporter_cannot_translate(tiny_models, tmp_path, monkeypatch):
    """A custom op with no ONNX translation: the export fails (exit 1, like a missed tolerance: the
    artifact folder holds a manifest marked failed and no graph), naming the op, without a traceback."""
    from vla_compress.export import Artifact

    @torch.library.custom_op("vla_compress_test::opaque", mutates_args=())
    def opaque(x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @opaque.register_fake
    def _(x):
        return torch.empty_like(x)

    model = tiny_models["regression"]
    projector_forward = type(model.projector).forward
    monkeypatch.setattr(type(model.projector), "forward", lambda self, x: opaque(projector_forward(self, x)))
    ckpt = model.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "onnx"
    result = cli("export", ckpt, "-f", "onnx", "--out", out, "--samples", "2")
    assert result.exit_code == 1, result.output
    assert "opaque" in result.output and "failed" in result.output and "Traceback" not in result.output
    art = Artifact.load(out)
    assert art.status == "failed" and "opaque" in art.manifest["error"]
    assert [p.name for p in out.iterdir()] == ["artifact.json"]
    no_leftovers(tmp_path)


# --- hostile strings in the report ------------------------------------------------------------------

HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'&"


def _hostile_run(tmp_path: Path) -> Path:
    m = json.loads(SAMPLE_RUN.read_text())
    m["recipe"]["name"] = "run " + HOSTILE
    m["recipe"]["config"]["description"] = "instruction: pick up the " + HOSTILE
    m["checkpoint"]["path"] = "/ckpt/" + HOSTILE
    m["command"] = "vla-compress compress " + HOSTILE
    for ev in m["evaluations"].values():  # a task name
        ev["per_task"] = {(HOSTILE if i == 0 else k): v for i, (k, v) in enumerate(ev["per_task"].items())}
    run = tmp_path / "run<img src=x onerror=alert(3)>"  # the run folder's own name too (no "/" in a name)
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps(m))
    return run


def test_report_escapes_hostile_strings_and_runs_only_its_own_script(tmp_path):
    run = _hostile_run(tmp_path)
    out = tmp_path / "report.html"
    result = cli("report", run, "--out", out)
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;" in html
    assert "alert(1)</script>" not in html and "<img" not in html
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";") if d.strip())
    assert directives["default-src"] == "'none'" and "unsafe-inline" not in directives["script-src"]
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    assert len(scripts) == 1  # the sorting script: the only one the CSP allows, by its hash
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert directives["script-src"] == f"'sha256-{digest}'"
    assert not re.search(r"<[^>]+\son[a-z]+=", html)  # no inline event handler attributes either


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium here")
def test_hostile_report_in_chromium_runs_no_injected_script(tmp_path):
    """The browser agrees: the page's own script is allowed by the CSP hash (no violation is
    logged) and no injected element exists in the DOM."""
    import subprocess

    run = _hostile_run(tmp_path)
    out = tmp_path / "report.html"
    assert cli("report", run, "--out", out).exit_code == 0
    proc = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           f"--user-data-dir={tmp_path / 'profile'}", "--no-first-run", "--disable-sync",
                           "--dump-dom", out.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert "Content Security Policy" not in proc.stderr, proc.stderr[-2000:]
    assert 'id="variants"' in proc.stdout and "<img" not in proc.stdout
