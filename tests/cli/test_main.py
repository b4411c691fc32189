"""The `vla-compress` click group: help, inspect, eval argument checks, one-line user errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from vla_compress.cli.main import main


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_help_lists_commands(runner):
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for cmd in ("inspect", "eval", "collect-demos", "train-reference"):
        assert cmd in result.output
    assert runner.invoke(main, ["-h"]).exit_code == 0
    sub = runner.invoke(main, ["eval", "--help"])
    assert sub.exit_code == 0 and "--episodes" in sub.output


def test_cli_import_is_light():
    """`vla-compress --help` must stay instant: importing the CLI pulls in no torch or simulator."""
    code = ("import sys, vla_compress.cli.main; "
            "heavy = [m for m in ('torch', 'transformers', 'metaworld', 'mujoco', 'rich') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("head", ["regression", "tokens"])
def test_inspect_prints_components_and_writes_json(runner, tiny_checkpoints, tmp_path, head):
    out = tmp_path / "inspect.json"
    result = runner.invoke(main, ["inspect", str(tiny_checkpoints[head]), "--json-out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("vision_encoder", "projector", "backbone", "action_head", "proprio_projector", "total"):
        assert name in result.output
    assert "family=reference" in result.output
    data = json.loads(out.read_text())
    assert data["family"] == "reference"
    assert data["checkpoint"] == str(tiny_checkpoints[head])
    assert data["action_spec"]["head"] == head and data["action_spec"]["chunk_size"] == 2
    assert data["tokens"]["visual"] == 16 and data["tokens"]["prefill"] > 16
    assert data["count"]["flops"] > 0
    assert data["count"]["per_component"]["backbone"]["calls"] == (8 if head == "tokens" else 1)


def test_inspect_missing_dir_is_one_line_error(runner, tmp_path):
    missing = tmp_path / "nope"
    result = runner.invoke(main, ["inspect", str(missing)])
    assert result.exit_code == 2
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert str(missing) in err and "not found" in err
    assert "Traceback" not in result.output


def test_inspect_corrupt_checkpoint_is_one_line_error(runner, tiny_checkpoints, tmp_path):
    import shutil

    ckpt = shutil.copytree(tiny_checkpoints["regression"], tmp_path / "ckpt")
    (ckpt / "config.json").write_text("{")
    result = runner.invoke(main, ["inspect", str(ckpt)])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith(f"error: {ckpt / 'config.json'}: invalid JSON")


@pytest.mark.parametrize("args", [["--episodes", "0"], ["--workers", "0"]])
def test_eval_rejects_nonpositive_counts(runner, tiny_checkpoints, args):
    result = runner.invoke(main, ["eval", str(tiny_checkpoints["regression"]), *args])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --episodes and --workers must be >= 1"


def test_eval_missing_checkpoint_fails_fast(runner, tmp_path):
    result = runner.invoke(main, ["eval", str(tmp_path / "nope"), "--episodes", "1"])
    assert result.exit_code == 2
    assert "not found" in result.stderr


def test_unknown_command_is_usage_error(runner):
    result = runner.invoke(main, ["compresss"])
    assert result.exit_code == 2 and "No such command" in result.output


@pytest.mark.parametrize("args", [["--execute-steps", "0"], ["--max-steps", "0"]])
def test_eval_rejects_nonpositive_step_options(runner, tiny_checkpoints, args):
    result = runner.invoke(main, ["eval", str(tiny_checkpoints["regression"]), *args])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --execute-steps and --max-steps must be >= 1"


@pytest.mark.filterwarnings("ignore::UserWarning:gymnasium.utils.passive_env_checker")
def test_eval_execute_steps_and_max_steps_reach_the_rollout(runner, tiny_checkpoints, tmp_path):
    """--execute-steps 1 re-plans every step (one inference per env step); --max-steps caps the episode;
    both are recorded in the JSON so two evaluations are only compared under the same protocol."""
    out = tmp_path / "eval.json"
    result = runner.invoke(main, ["eval", str(tiny_checkpoints["regression"]), "--tasks", "reach-v3", "--episodes", "1",
                                  "--workers", "1", "--execute-steps", "1", "--max-steps", "6", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["policy"]["options"] == {"execute_steps": 1}
    assert data["suite_options"] == {"max_steps": 6}
    (ep,) = data["episodes"]
    assert ep["steps"] <= 6 and ep["inferences"] == ep["steps"]


def test_eval_rejects_negative_first_episode(runner, tiny_checkpoints):
    result = runner.invoke(main, ["eval", str(tiny_checkpoints["regression"]), "--first-episode", "-1"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --first-episode must be >= 0"


@pytest.mark.filterwarnings("ignore::UserWarning:gymnasium.utils.passive_env_checker")
def test_eval_first_episode_runs_fresh_seeds(runner, tiny_checkpoints, tmp_path):
    """--first-episode 3 --episodes 1 runs evaluation episode index 3 (the seed a 4-episode run ends on),
    and records where it started."""
    from vla_compress.evaluate.seeds import eval_seed

    out = tmp_path / "eval.json"
    result = runner.invoke(main, ["eval", str(tiny_checkpoints["regression"]), "--tasks", "reach-v3", "--episodes", "1",
                                  "--workers", "1", "--first-episode", "3", "--max-steps", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["first_episode"] == 3
    assert [ep["seed"] for ep in data["episodes"]] == [eval_seed("reach-v3", 3)]
