"""What a user sees: the tool's own output, not the libraries' notices (transformers' FutureWarnings,
torch.onnx's "torchvision is not installed" lines). Those go to the log file (vla_compress/notices.py).

Real `vla-compress` processes (subprocess), because the routing is set up where the click group
starts and a library installs its handlers when first imported in a fresh interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOISE = ("FutureWarning", "torchvision", "DeprecationWarning", "past_key_values")


def _run(args: list[str], cache: Path, code: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "COLUMNS": "160"}
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "vla_compress", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)


def _log(cache: Path) -> str:
    return "".join(p.read_text() for p in (cache / "vla-compress" / "logs").glob("*.log"))


def _quiet(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for word in NOISE:
        assert word not in proc.stdout + proc.stderr, (word, proc.stderr[-3000:])


def test_inspect_of_the_shipped_checkpoint_is_quiet(tmp_path):
    proc = _run(["inspect", "checkpoints/reference-small-chunk"], tmp_path)
    _quiet(proc)
    assert "family=reference" in proc.stdout


@pytest.fixture(scope="module")
def tokens_ckpt(tiny_checkpoints) -> Path:
    return tiny_checkpoints["tokens"]  # prefill + KV-cache decode: the path transformers 5 warned on


def test_onnx_export_is_quiet_and_its_notices_are_logged(tiny_checkpoints, tmp_path):
    cache = tmp_path / "cache"
    proc = _run(["export", str(tiny_checkpoints["regression"]), "-f", "onnx", "--out", str(tmp_path / "onnx"), "--samples", "2"], cache)
    _quiet(proc)
    assert "export summary" in proc.stdout
    assert "torchvision is not installed" in _log(cache)  # routed, not lost


def test_one_episode_eval_is_quiet(tokens_ckpt, tmp_path):
    proc = _run(["eval", str(tokens_ckpt), "--tasks", "reach-v3", "--episodes", "1", "--workers", "1",
                 "--max-steps", "2"], tmp_path)
    _quiet(proc)
    assert "reach-v3" in proc.stdout


def test_own_warnings_show_third_party_ones_go_to_the_log(tmp_path):
    """A command that warns both ways: the library's notices land in the log file, vla-compress's own
    warning (a category defined in the package) and own logger's warning reach stderr."""
    code = """
import logging, sys, warnings
from vla_compress.cli.main import main
from vla_compress.export.template import QuantizationCarryWarning

@main.command("noisy")
def noisy():
    warnings.warn("a library's deprecation", FutureWarning)
    logging.getLogger("transformers.models.x").warning("a library's log line")
    logging.getLogger("onnxscript").warning("another library's log line")
    warnings.warn("our own warning", QuantizationCarryWarning)
    logging.getLogger("vla_compress.x").warning("our own log line")

sys.argv = ["vla-compress", "noisy"]
main()
"""
    cache = tmp_path / "cache"
    proc = _run([], cache, code)
    assert proc.returncode == 0, proc.stderr
    err, log = proc.stderr, _log(cache)
    assert "our own warning" in err and "our own log line" in err
    for notice in ("a library's deprecation", "a library's log line", "another library's log line"):
        assert notice not in err and notice in log
    assert "our own" not in log


def test_worker_processes_of_a_command_route_their_notices_too(tmp_path):
    """The evaluation, collection and DAgger workers are spawned processes: a library they import
    (e.g. transformers pulling in torchao, which prints its load failures) must stay off the terminal
    as in the CLI's own process. They inherit the routing from the command that spawned them."""
    code = """
import logging, multiprocessing as mp, sys, warnings
from vla_compress.cli.main import main
from vla_compress.notices import route_if_inherited

def child(_):
    warnings.warn("a worker's library deprecation", FutureWarning)
    logging.getLogger("torch.utils._pytree").warning("a worker's library log line")
    logging.getLogger("vla_compress.x").warning("a worker's own log line")
    return 1

@main.command("spawny")
def spawny():
    with mp.get_context("spawn").Pool(1, initializer=route_if_inherited) as pool:
        assert pool.map(child, [0]) == [1]

if __name__ == "__main__":
    sys.argv = ["vla-compress", "spawny"]
    main()
"""
    script = tmp_path / "spawny.py"
    script.write_text(code)
    cache = tmp_path / "cache"
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    env.pop("VLA_COMPRESS_ROUTE_NOTICES", None)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    err, log = proc.stderr, _log(cache)
    for notice in ("a worker's library deprecation", "a worker's library log line"):
        assert notice not in err and notice in log
    assert "a worker's own log line" in err


def test_a_library_user_keeps_their_own_output_setup():
    """Importing vla_compress and running an evaluation worker from a program routes nothing."""
    import logging

    from vla_compress.notices import ENV_FLAG, route_if_inherited

    before = list(logging.getLogger().handlers)
    if os.environ.get(ENV_FLAG) is None:  # (the test process itself was not started by the CLI)
        route_if_inherited()
        assert logging.getLogger().handlers == before


def test_kv_cache_calls_use_the_installed_transformers_api(tiny_models, make_obs):
    """Token decoding with a KV cache passes the cache under the name the installed transformers
    wants (nn/hf_cache.py): no deprecation warning or log line, whatever the routing would do with it."""
    import logging
    import warnings

    seen = []

    class Catch(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Catch(logging.WARNING)
    logging.getLogger("transformers").addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tiny_models["tokens"].act(make_obs(0))
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    notices = [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert not notices and not [m for m in seen if "deprecated" in m], (notices, seen)
