"""Closed-loop evaluation of a run's variants: one fixed-size evaluation each, or sequential rounds.

Fixed (`evaluation.sequential` absent): every runnable variant runs `evaluation.episodes` episodes
per task on the baseline's seeds, and the gate looks once (evaluate/gate.py).

Sequential (`evaluation.sequential: {episodes_per_round: R}`): episodes are run in rounds of R per
task (episode indices 0..R-1, then R..2R-1, ...), `evaluation.episodes` per task being the cap. After
each round every undecided variant's sequential gate (evaluate/sequential.py) takes the new pairs;
a decided variant stops, and the baseline runs only as many rounds as the longest undecided
variant needs. Each round of each variant is its own cached stage, so an interrupted run resumes
from the rounds already recorded.
"""

from __future__ import annotations

from typing import Any, Callable

from ..evaluate.sequential import RoundPlan, SequentialGate, paired_in_order


def merge_rounds(rounds: list[dict]) -> dict:
    """One evaluation result from consecutive rounds of the same policy (episodes concatenated,
    per-task and pooled rates recomputed as evaluate() would over all of them)."""
    from ..evaluate.rollout import EpisodeResult, summarize
    from ..evaluate.suites import get_suite

    first = rounds[0]
    suite = get_suite(first["suite"], list(first["per_task"]), **first.get("suite_options", {}))
    episodes = [EpisodeResult(**e) for r in rounds for e in r["episodes"]]
    total = sum(r["episodes_per_task"] for r in rounds)
    merged = summarize(episodes, suite, None, total, first.get("workers", 1), sum(r["wall_s"] for r in rounds),
                       first.get("first_episode", 0))
    for key in ("policy", "suite_options"):
        if key in first:
            merged[key] = first[key]
    merged["rounds"] = [{"first_episode": r.get("first_episode", 0), "episodes_per_task": r["episodes_per_task"]}
                        for r in rounds]
    return merged


def sequential_gate_dict(g: SequentialGate, tasks: int) -> dict:
    """The sequential gate in the fixed gate's record shape (read by decide() and the report), plus
    its looks."""
    c = g.counts
    n = g.episodes
    base = (c["both"] + c["base_only"]) / n if n else 0.0
    var = (c["both"] + c["variant_only"]) / n if n else 0.0
    lo, hi = g.difference_interval()
    d = g.to_dict()
    return {"verdict": g.verdict, "baseline_rate": base, "variant_rate": var, "difference": var - base,
            "ci": [lo, hi], "confidence": g.confidence, "max_drop": g.max_drop, "episodes": n, "counts": dict(c),
            "episodes_needed": None, "episodes_per_task_needed": None, "message": g.message(),
            "sequential": {"method": d["method"], "looks": d["looks"], "episodes_per_task": n // max(1, tasks)}}


def evaluate_sequentially(names: list[str], run_round: Callable[[str, int, int], dict], plan: RoundPlan,
                          max_drop: float, confidence: float,
                          run_many: Callable[[list[str], int, int], dict[str, dict]] | None = None
                          ) -> tuple[dict[str, dict], dict[str, dict]]:
    """Evaluate `names` ("baseline" first) in rounds until every other variant's gate decides or the
    cap is reached. `run_round(name, first_episode, episodes)` evaluates one round (cached by the
    caller); `run_many(names, first_episode, episodes)`, when given, evaluates a round of several
    (the baseline and the undecided variants) together. Returns (merged evaluation per name,
    sequential gate record per variant)."""
    run_many = run_many or (lambda these, first, count: {n: run_round(n, first, count) for n in these})
    variants = [n for n in names if n != "baseline"]
    if not variants:  # nothing to gate: the baseline alone, at the cap
        return {"baseline": run_round("baseline", 0, plan.cap)}, {}
    gates = {n: SequentialGate(max_drop, confidence) for n in variants}
    rounds: dict[str, list[dict]] = {n: [] for n in names}
    for first, count in plan.rounds():
        active = [n for n in variants if gates[n].verdict == "continue"]
        if not active:
            break
        got = run_many(["baseline", *active], first, count)
        base = got["baseline"]
        rounds["baseline"].append(base)
        for n in active:
            r = got[n]
            rounds[n].append(r)
            gates[n].add(paired_in_order(base["episodes"], r["episodes"]))
    for g in gates.values():
        g.close()
    n_tasks = len(rounds["baseline"][0]["per_task"])
    merged = {n: merge_rounds(rs) for n, rs in rounds.items() if rs}
    return merged, {n: sequential_gate_dict(g, n_tasks) for n, g in gates.items()}


def round_material(evaluation: dict, first: int, count: int) -> dict[str, Any]:
    """What a round's cache key holds beside the variant (a round is one evaluation of its own)."""
    return {**{k: evaluation[k] for k in ("suite", "tasks", "max_steps")}, "first_episode": first,
            "episodes": count}
