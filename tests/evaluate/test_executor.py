"""Executors: the local one and Ray give the same per-episode outcomes on the same seeds; a lost Ray
worker is retried, never counted against the policy; Ray missing is a one-line error; an interrupted
`eval --out` resumes from its episode journal.

The Ray tests share one local cluster with 2 CPUs and skip (saying why) when ray is not installed.
The policy is the shipped reference-small checkpoint (trained, so episodes end in both successes
and step-limit failures) when this checkout has it, else the tiny random one.
"""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from vla_compress.errors import CheckpointError, ConfigError, ExecutorError
from vla_compress.evaluate import executor as executor_mod
from vla_compress.evaluate.executor import EpisodeJournal, LocalExecutor, get_executor
from vla_compress.evaluate.rollout import EpisodeResult, PolicySpec, evaluate
from vla_compress.resources import shipped

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning:gymnasium.utils.passive_env_checker"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

TASKS = ["reach-v3", "push-v3"]
EPISODES, MAX_STEPS = 2, 41  # reach-v3's first seed succeeds at step 40 with the shipped checkpoint


def outcomes(result: dict) -> list[tuple]:
    return [(e["task"], e["seed"], e["success"], e["steps"], e["inferences"]) for e in result["episodes"]]


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoints) -> str:
    ck = shipped("checkpoints") / "reference-small-chunk"
    return str(ck if (ck / "config.json").is_file() else tiny_checkpoints["regression"])


def run(checkpoint: str, **kw) -> dict:
    return evaluate(PolicySpec("torch", checkpoint), "metaworld-mt10", TASKS, EPISODES, threads_per_worker=1,
                    max_steps=MAX_STEPS, **kw)


@pytest.fixture(scope="module")
def local_result(checkpoint) -> dict:
    return run(checkpoint, workers=1)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'vla-compress[ray]')")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_ex(ray_cluster):
    """One Ray executor for the module: its actors (policy built once) serve every test."""
    ex = get_executor("ray", 2)
    yield ex
    ex.close()


def test_ray_matches_local_and_reports_progress(ray_ex, local_result, checkpoint):
    calls = []
    ex = ray_ex
    result = run(checkpoint, executor=ex, on_episode=lambda r, done, total: calls.append((done, total)))
    assert outcomes(result) == outcomes(local_result)
    assert len(outcomes(result)) == len(TASKS) * EPISODES
    assert calls == [(i, 4) for i in range(1, 5)]
    assert result["workers"] == 2 and result["executor"] == {"kind": "ray", "workers": 2, "address": None}
    assert "executor" not in local_result  # the local result is what it always was
    assert ex.lost == 0 and not ex.started  # it joined the fixture's cluster and leaves it running


def _many(checkpoint: str, tiny: str, executor) -> list[dict]:
    from vla_compress.evaluate.rollout import evaluate_many

    calls = []
    out = evaluate_many([PolicySpec("torch", checkpoint), PolicySpec("torch", tiny)], "metaworld-mt10", TASKS,
                        EPISODES, threads_per_worker=1, max_steps=MAX_STEPS, executor=executor,
                        on_episode=lambda i, r, done, total: calls.append(i))
    assert sorted(calls) == [0] * 4 + [1] * 4
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_policies_evaluated_together_match_separate_evaluations(local_result, checkpoint, tiny_checkpoints,
                                                                workers):
    tiny = str(tiny_checkpoints["regression"])
    a, b = _many(checkpoint, tiny, LocalExecutor(workers))
    assert outcomes(a) == outcomes(local_result)
    assert outcomes(b) == outcomes(run(tiny, workers=1))
    assert a["evaluated_with"] == 2 and a["policy"]["path"] == checkpoint and b["policy"]["path"] == tiny


def test_ray_evaluates_policies_together_as_local_does(ray_ex, local_result, checkpoint, tiny_checkpoints):
    tiny = str(tiny_checkpoints["regression"])
    a, b = _many(checkpoint, tiny, ray_ex)
    assert outcomes(a) == outcomes(local_result) and outcomes(b) == outcomes(run(tiny, workers=1))


def test_policies_together_need_one_thread_count(checkpoint):
    from vla_compress.evaluate.executor import Batch

    suite = {"name": "metaworld-mt10", "tasks": TASKS}
    batches = [Batch(PolicySpec("torch", checkpoint), suite, t, (("reach-v3", 0),)) for t in (1, 2)]
    with pytest.raises(ConfigError, match="same threads per worker"):
        list(LocalExecutor(1).map_many(batches))


def test_killed_actor_is_retried_not_failed(ray_cluster, ray_ex, local_result, checkpoint):
    ex = ray_ex
    killed = []

    def on_episode(r, done, total):
        if not killed:  # both actors hold an episode now: one of them dies mid-episode
            killed.append(ex.actors[0])
            ray_cluster.kill(ex.actors[0], no_restart=True)

    result = run(checkpoint, executor=ex, on_episode=on_episode)
    assert ex.lost >= 1 and killed[0] not in ex.actors
    assert outcomes(result) == outcomes(local_result)  # the lost episode ran again, with its outcome


def test_lost_workers_past_the_cap_are_an_executor_error(ray_cluster, ray_ex, checkpoint, monkeypatch):
    ex = ray_ex
    monkeypatch.setattr(ex, "max_retries", 0)

    def on_episode(r, done, total):
        for a in ex.actors:
            ray_cluster.kill(a, no_restart=True)

    with pytest.raises(ExecutorError, match="lost its Ray worker 1 times .*not the policy failing"):
        run(checkpoint, executor=ex, on_episode=on_episode)
    assert ex.actors == []  # an evaluation that raised leaves no actor behind


def test_policy_errors_in_an_actor_are_raised_as_they_are(ray_cluster, tmp_path):
    ex = get_executor("ray", 1)
    with pytest.raises(CheckpointError):  # no checkpoint there: the worker's own error, not a retry
        evaluate(PolicySpec("torch", str(tmp_path / "missing")), "metaworld-mt10", ["reach-v3"], 1,
                 executor=ex, max_steps=2)
    assert ex.lost == 0


def test_ray_missing_is_a_one_line_error(monkeypatch, tiny_checkpoints, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ConfigError, match=r"needs Ray, which is not installed: pip install 'vla-compress\[ray\]'"):
        get_executor("ray", 2)
    from vla_compress.cli.main import main

    res = CliRunner().invoke(main, ["eval", str(tiny_checkpoints["regression"]), "--executor", "ray"])
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0 and "pip install 'vla-compress[ray]'" in res.output
    res = CliRunner().invoke(main, ["eval", str(tiny_checkpoints["regression"]), "--ray-address", "auto"])
    assert res.exit_code == 2 and "not installed" in res.output
    # compress: --executor becomes the recipe's evaluation.executor, refused before the run folder exists
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["compress", str(tiny_checkpoints["regression"]), "-p", "demo-cpu-onnx-int8",
                                    "-o", str(out), "--executor", "ray"])
    assert res.exit_code == 2 and "evaluation.executor.kind: ray is not installed" in res.output
    assert not out.exists()


def test_executor_names_are_checked():
    with pytest.raises(ConfigError, match="unknown executor 'dask'"):
        get_executor("dask")
    with pytest.raises(ConfigError, match="needs the ray executor"):
        get_executor("local", 2, address="10.0.0.1:6379")
    assert isinstance(get_executor("local", 3), LocalExecutor) and get_executor("local", 3).workers == 3


def test_recipe_executor_key(tmp_path, monkeypatch):
    from vla_compress.pipeline.recipe import RecipeError, load_recipe

    def recipe(executor: str) -> str:
        p = tmp_path / "r.yaml"
        p.write_text(f"name: r\ntarget: {{hardware: x86-desktop-cpu}}\nevaluation:\n  episodes: 2\n"
                     f"  executor: {executor}\n")
        return str(p)

    assert load_recipe(recipe("{kind: local}")).evaluation["executor"] == {"kind": "local", "address": None}
    with pytest.raises(RecipeError, match=r"r.yaml:5: evaluation.executor.kind: must be one of local, ray"):
        load_recipe(recipe("{kind: dask}"))
    with pytest.raises(RecipeError, match=r"r.yaml:5: evaluation.executor.address: is for kind: ray"):
        load_recipe(recipe("{kind: local, address: 'h:1'}"))
    with pytest.raises(RecipeError, match=r"r.yaml:5: evaluation.executor: must be"):
        load_recipe(recipe("ray"))
    monkeypatch.setattr(executor_mod, "ray_available", lambda: False)
    with pytest.raises(RecipeError, match=r"evaluation.executor.kind: ray is not installed: pip install"):
        load_recipe(recipe("{kind: ray}"))


def test_completed_episodes_are_not_run_again(tiny_checkpoints):
    spec = PolicySpec("torch", str(tiny_checkpoints["regression"]))
    full = evaluate(spec, "metaworld-mt10", ["reach-v3"], 2, threads_per_worker=1, max_steps=3)
    first = EpisodeResult(**full["episodes"][0])
    ran = []
    resumed = evaluate(spec, "metaworld-mt10", ["reach-v3"], 2, threads_per_worker=1, max_steps=3,
                       completed=[first], on_episode=lambda r, done, total: ran.append((r.seed, done, total)))
    assert ran == [(full["episodes"][1]["seed"], 2, 2)]
    assert outcomes(resumed) == outcomes(full) and resumed["resumed_episodes"] == 1


def test_journal_round_trip_ignores_other_evaluations_and_torn_lines(tiny_checkpoints, tmp_path):
    spec = PolicySpec("torch", str(tiny_checkpoints["regression"]))
    out = tmp_path / "res.json"
    j = EpisodeJournal.beside(out, spec, "metaworld-mt10", ["reach-v3"], {"max_steps": 3})
    assert j.path == tmp_path / "res.episodes.jsonl" and j.load() == []
    a, b = (EpisodeResult("reach-v3", s, False, 3, 2, 1.0, 0.1) for s in (1, 2))
    j.append(a)
    j.append(b)
    with j.path.open("a") as f:
        f.write('{"task": "reach-v3", "se')  # killed mid-write
    again = EpisodeJournal.beside(out, spec, "metaworld-mt10", ["reach-v3"], {"max_steps": 3})
    assert again.load() == [a, b]
    assert json.loads(j.path.read_text().splitlines()[-1])["seed"] == 2  # the torn line is gone
    other = EpisodeJournal.beside(out, spec, "metaworld-mt10", ["reach-v3"], {"max_steps": 4})
    assert other.load() == []  # another protocol's episodes are never reused
    other.append(b)
    assert again.load() == [] and other.load() == [b]


def test_eval_cli_resumes_from_its_journal(tiny_checkpoints, tmp_path):
    from vla_compress.cli.main import main

    ck = str(tiny_checkpoints["regression"])
    out = tmp_path / "res.json"
    args = ["eval", ck, "--tasks", "reach-v3", "--episodes", "2", "--workers", "1", "--max-steps", "3",
            "--out", str(out)]
    spec = PolicySpec("torch", ck)
    j = EpisodeJournal.beside(out, spec, "metaworld-mt10", ["reach-v3"], {"max_steps": 3})
    full = evaluate(spec, "metaworld-mt10", ["reach-v3"], 2, threads_per_worker=1, max_steps=3)
    j.append(EpisodeResult(**full["episodes"][0]))  # as if interrupted after the first episode
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "resuming: 1 episode(s) already recorded" in res.output
    result = json.loads(out.read_text())
    assert outcomes(result) == outcomes(full) and result["resumed_episodes"] == 1
    assert not j.path.exists()  # the result holds every episode; the journal is gone
