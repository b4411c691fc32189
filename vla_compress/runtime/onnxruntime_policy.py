"""ONNX Runtime policy: runs an exported ONNX artifact directory, nothing else needed.

The artifact holds the graph(s), the manifest (`artifact.json`, which says how to drive them)
and the checkpoint's processor pieces (config.json, tokenizer.json, dataset_statistics.json),
so preprocessing and un-normalisation are the checkpoint's own and no torch model is built.

Options (PolicySpec("onnx", artifact_dir, options)):
  threads        intra-op threads per session (default 1: evaluation workers share the cores)
  providers      ORT execution providers in order of preference; default: CUDA when this
                 onnxruntime has it, then CPU (TensorRT only when asked: its engine build is slow)
  execute_steps  actions executed per chunk (default: the whole chunk)
  allow_failed   load an artifact whose validation failed (default: refuse)
  verify         re-hash every file against the manifest before loading (default: false)
  name           label in results
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .policy import Policy, artifact_options, open_artifact


# the ONNX Runtime session this policy runs (recorded in every ONNX artifact's manifest as `session`)
SESSION = {"intra_op_num_threads": 1, "inter_op_num_threads": 1, "execution_mode": "ORT_SEQUENTIAL",
           "graph_optimization_level": "ORT_ENABLE_ALL", "providers": ["CPUExecutionProvider"]}


def session_options(threads: int = SESSION["intra_op_num_threads"]):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = SESSION["inter_op_num_threads"]
    so.execution_mode = getattr(ort.ExecutionMode, SESSION["execution_mode"])
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, SESSION["graph_optimization_level"])
    so.log_severity_level = 3
    return so


def choose_providers(requested: list[str] | None = None) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise ConfigError(f"ONNX Runtime providers {missing} are not available here; available: {available}")
        return list(requested)
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def _session(ort, path: Path, so, providers: list[str]):
    """An InferenceSession on one graph file; a file ONNX Runtime cannot load (truncated, edited,
    not ONNX) is an ExportError naming it, not a raw protobuf/ORT message."""
    from ..errors import ExportError

    try:
        return ort.InferenceSession(str(path), so, providers=providers)
    except Exception as e:  # noqa: BLE001  (ORT raises its own exception types from C++)
        raise ExportError(path, f"ONNX Runtime cannot load this graph ({type(e).__name__}: {str(e).strip()[:300]}); "
                                "the file is corrupt or incomplete (re-export it), or uses types this ONNX Runtime cannot run") from None


def loop_graphs(meta: dict) -> tuple[str, str | None]:
    """(the graph the processor's inputs feed, the graph run in a loop after it or None) of a head's
    graph protocol: "regression" one `policy_step`; "tokens" `prefill` then `decode` per action
    token; "flow" the `loop` record's prefix graph, then its denoise step once per Euler step."""
    head = meta.get("head")
    if head == "regression":
        return "policy_step", None
    if head == "tokens":
        return "prefill", "decode"
    if head == "flow":
        return meta["loop"]["prefix"], meta["loop"]["step"]
    raise ConfigError(f"no ONNX graph protocol for a {head!r} head")


_LOOP_KEYS = ("prefix", "step", "steps", "dt", "times", "start", "x", "t", "velocity", "carry")


def check_flow_loop(artifact, graphs: Any) -> dict:
    """The `model.loop` record of a flow-head artifact, checked against its graphs (`graphs`: name ->
    session): a ConfigError naming artifact.json and what is wrong."""
    m = artifact.manifest["model"]
    where = f"{artifact.path / 'artifact.json'}: model.loop"
    loop = m.get("loop")
    if not isinstance(loop, dict) or any(k not in loop for k in _LOOP_KEYS):
        raise ConfigError(f"{where} must be a mapping with {', '.join(_LOOP_KEYS)}; got {loop!r:.200}")
    missing = [g for g in (loop["prefix"], loop["step"]) if g not in graphs]
    if missing:
        raise ConfigError(f"{where} names graph(s) {missing} the artifact does not have ({', '.join(graphs)})")
    n, times = loop["steps"], loop["times"]
    count = len(times) if isinstance(times, list) else times
    if not isinstance(n, int) or n < 1 or n != m.get("integration_steps") or count != n:
        raise ConfigError(f"{where}: steps {n!r} must be an integer >= 1 equal to integration_steps "
                          f"({m.get('integration_steps')!r}), with one time per step (times: {count!r})")
    prefix = graphs[loop["prefix"]]
    if hasattr(prefix, "get_outputs"):  # ONNX Runtime says what a graph outputs before it runs
        absent = sorted(set(loop["carry"].values()) - {o.name for o in prefix.get_outputs()})
        if absent:
            raise ConfigError(f"{where}: carry names prefix outputs {absent[:4]} the {loop['prefix']!r} graph lacks")
    return loop


class OnnxGraphs:
    """The artifact's ONNX sessions and the loop that turns preprocessed inputs into actions.

    `predict(feeds)` returns {"actions": (B, K, A) normalised, and for a tokens head "bins"
    (B, N) and "bin_logits" (B, N, n_bins)}; `force_bins` teacher-forces the decode loop
    (used by validation). `last_timing` holds seconds per component of the last call.
    `decode_feeds`, when a list, receives the inputs of every call of the looped graph (decode,
    denoise step): the calibration data of static quantization.
    """

    def __init__(self, artifact, threads: int = 1, providers: list[str] | None = None):
        import onnxruntime as ort

        self.artifact = artifact
        self.meta = artifact.manifest["model"]
        self.providers = choose_providers(providers)
        so = session_options(threads)
        self.sessions = {name: _session(ort, artifact.file(g["file"]), so, self.providers)
                         for name, g in artifact.manifest["graphs"].items()}
        if self.head == "flow":
            check_flow_loop(artifact, self.sessions)
        self.last_timing: dict[str, float] = {}
        self.decode_feeds: list[dict] | None = None  # set to a list to record decode inputs (calibration)

    @property
    def head(self) -> str:
        return self.meta["head"]

    def predict(self, feeds: dict[str, np.ndarray], force_bins: np.ndarray | None = None) -> dict[str, np.ndarray]:
        if self.head == "regression":
            return self._regression(feeds)
        if self.head == "tokens":
            return self._tokens(feeds, force_bins)
        if self.head == "flow":
            return self._flow(feeds)
        raise ConfigError(f"{self.artifact.path}: the ONNX runtime cannot drive a {self.head!r} head")

    def _inputs(self, session, feeds: dict) -> dict:
        return {i.name: feeds[i.name] for i in session.get_inputs()}

    def _regression(self, feeds: dict) -> dict:
        s = self.sessions["policy_step"]
        t0 = time.perf_counter()
        (actions,) = s.run(["actions"], self._inputs(s, feeds))
        self.last_timing = {"policy_step_s": time.perf_counter() - t0}
        return {"actions": actions}

    def _flow(self, feeds: dict) -> dict:
        """The prefix graph once, then the Euler loop over the denoise step (artifact.json model.loop):
        x = noise; x <- x + dt v(x, t) at each recorded t, in float32, as the torch model integrates.
        Timings: the prefix as "prefill", the steps together as "decode" (the profiler's groups)."""
        loop = self.meta["loop"]
        prefix, step = self.sessions[loop["prefix"]], self.sessions[loop["step"]]
        carried = sorted(set(loop["carry"].values()))
        t0 = time.perf_counter()
        out = dict(zip(carried, prefix.run(carried, self._inputs(prefix, feeds))))
        t1 = time.perf_counter()
        x = np.asarray(feeds[loop["start"]], np.float32)
        step_feeds = {**feeds, **{name: out[src] for name, src in loop["carry"].items()}}
        dt = np.float32(loop["dt"])
        for t in loop["times"]:
            step_feeds[loop["x"]], step_feeds[loop["t"]] = x, np.full((x.shape[0],), t, np.float32)
            inputs = self._inputs(step, step_feeds)
            if self.decode_feeds is not None:
                self.decode_feeds.append(inputs)
            (v,) = step.run([loop["velocity"]], inputs)
            x = x + dt * v.astype(np.float32)
        self.last_timing = {"prefill_s": t1 - t0, "decode_s": time.perf_counter() - t1,
                            "decode_steps": len(loop["times"])}
        return {"actions": x[:, :, : self.meta["action_dim"]]}

    def _tokens(self, feeds: dict, force_bins: np.ndarray | None) -> dict:
        from ..export.family import bins_to_actions

        m = self.meta
        prefill, decode = self.sessions["prefill"], self.sessions["decode"]
        n_layers, n, start = m["num_layers"], m["action_tokens"], m["action_token_start"]
        present = [f"present.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
        t0 = time.perf_counter()
        logits, mask, *kv = prefill.run(["bin_logits", "attention_mask", *present], self._inputs(prefill, feeds))
        t1 = time.perf_counter()
        mask = mask.astype(np.int64)
        pos = mask.sum(-1, keepdims=True) - 1
        bins, all_logits = [], []
        for i in range(n):
            all_logits.append(logits)
            greedy = logits.argmax(-1)
            bins.append(greedy)
            if i == n - 1:
                break
            nxt = greedy if force_bins is None else force_bins[:, i]
            mask = np.concatenate([mask, np.ones_like(mask[:, :1])], axis=1)
            pos = pos + 1
            step = {"token_ids": (nxt + start).astype(np.int64)[:, None], "attention_mask": mask, "position_ids": pos}
            step.update({f"past_key_values.{j // 2}.{('key', 'value')[j % 2]}": t for j, t in enumerate(kv)})
            if self.decode_feeds is not None:
                self.decode_feeds.append(step)
            logits, *kv = decode.run(["bin_logits", *present], step)
        t2 = time.perf_counter()
        self.last_timing = {"prefill_s": t1 - t0, "decode_s": t2 - t1, "decode_steps": n - 1}
        bins_arr = np.stack(bins, axis=1)
        return {"actions": bins_to_actions(bins_arr, m), "bins": bins_arr, "bin_logits": np.stack(all_logits, axis=1)}


class OnnxRuntimePolicy(Policy):
    """Policy over an ONNX artifact directory (see the module docstring for options)."""

    runtime = "onnx"

    def __init__(self, artifact_dir: str | Path, threads: int = 1, providers: list[str] | None = None,
                 execute_steps: int | None = None, allow_failed: bool = False, verify: bool = False,
                 name: str = "onnx"):
        super().__init__(execute_steps)
        self.artifact, self.processor = open_artifact(artifact_dir, "onnx", "onnx", "an ONNX artifact", allow_failed,
                                                      verify)
        self.name = name
        self.graphs = OnnxGraphs(self.artifact, threads=threads, providers=providers)
        self.component_latencies_s: dict[str, list[float]] = {}

    @classmethod
    def from_spec(cls, spec: Any) -> "OnnxRuntimePolicy":
        """The policy of PolicySpec(runtime, artifact_dir, options) (see the module docstring)."""
        o = spec.options
        return cls(spec.path, threads=o.get("threads", 1), providers=o.get("providers"), **artifact_options(o, "onnx"))

    def infer(self, observation: dict) -> np.ndarray:
        t0 = time.perf_counter()
        feeds = self.processor([observation])
        t1 = time.perf_counter()
        out = self.graphs.predict(feeds)
        t2 = time.perf_counter()
        chunk = self.processor.unnormalize(out["actions"][0])
        timing = {"preprocess_s": t1 - t0, **self.graphs.last_timing, "postprocess_s": time.perf_counter() - t2}
        for k, v in timing.items():
            if k.endswith("_s"):
                self.component_latencies_s.setdefault(k[:-2], []).append(v)
        return chunk

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        m = self.artifact.manifest
        d.update(family=m["model"]["family"], head=m["model"]["head"], precision=m["precision"],
                 status=m["status"], artifact=str(self.artifact.path), providers=self.graphs.providers)
        return d
