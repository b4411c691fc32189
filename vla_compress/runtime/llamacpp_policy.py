"""The llama.cpp hybrid policy: vision and heads in ONNX Runtime, the Llama backbone in llama.cpp.

A policy step on a GGUF artifact (export/gguf):
  1. ONNX "embed": image, prompt ids, state -> the backbone's whole input sequence as embeddings
     (<s> [visual] [prompt] [proprio] (+ K action queries)) and its mask;
  2. llama.cpp decodes those embeddings in one batch from an empty KV cache (`llama_batch.embd`),
     causal attention as in the torch backbone, positions 0..n-1 (padding rows of a batch are
     dropped: the torch model gives them no position either);
  3. regression head: the final hidden states at the K query positions (embeddings mode) go
     through ONNX "action_head"; tokens head: greedy decoding of the action tokens, the argmax
     over the last n_bins vocabulary logits, each fed back as a token.

Options (PolicySpec("llama.cpp", artifact_dir, options)):
  threads        llama.cpp and ONNX Runtime threads (default 1: evaluation workers share the cores)
  kv_cache       override the artifact's KV-cache type ("f32" | "f16")
  flash_attn     override the artifact's flash-attention mode ("auto" | "on" | "off")
  gpu_layers     layers offloaded by a GPU build of llama.cpp (default 0)
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
from .onnxruntime_policy import OnnxRuntimePolicy, session_options
from .policy import Policy, artifact_options, open_artifact


class HybridRunner:
    """ONNX sessions + a llama.cpp backbone; `predict(feeds)` as OnnxGraphs.predict: {"actions"
    (B, K, A) normalised, and for a tokens head "bins" (B, N), "bin_logits" (B, N, n_bins)}."""

    def __init__(self, artifact, threads: int = 1, kv_cache: str | None = None, gpu_layers: int = 0,
                 flash_attn: str | None = None):
        import onnxruntime as ort

        from .llamacpp_engine import LlamaBackbone

        m = artifact.manifest
        self.artifact, self.meta, self.llama = artifact, m["model"], m["llama_cpp"]
        self.providers = ["CPUExecutionProvider"]
        so = session_options(threads)
        self.sessions = {name: ort.InferenceSession(str(artifact.file(g["file"])), so, providers=self.providers)
                         for name, g in m["graphs"].items()}
        self.backbone = LlamaBackbone(artifact.file(m["gguf"]["file"]), n_ctx=self.llama["n_ctx"], threads=threads,
                                      kv_cache=kv_cache or self.llama["kv_cache"],
                                      embeddings=self.llama["output"] == "hidden_states", gpu_layers=gpu_layers,
                                      flash_attn=flash_attn or self.llama.get("flash_attn", "auto"),
                                      causal=self.llama.get("attention", "causal") == "causal")
        self.last_timing: dict[str, float] = {}

    @property
    def head(self) -> str:
        return self.meta["head"]

    def predict(self, feeds: dict[str, np.ndarray], force_bins: np.ndarray | None = None) -> dict[str, np.ndarray]:
        if self.head not in ("regression", "tokens"):
            raise ConfigError(f"{self.artifact.path}: the llama.cpp runtime cannot drive a {self.head!r} head")
        embed = self.sessions["embed"]
        t0 = time.perf_counter()
        embeds, mask = embed.run(["inputs_embeds", "attention_mask"], {i.name: feeds[i.name] for i in embed.get_inputs()})
        t1 = time.perf_counter()
        rows = [e[m.astype(bool)] for e, m in zip(embeds.astype(np.float32), mask)]
        out = self._regression(rows) if self.head == "regression" else self._tokens(rows, force_bins)
        self.last_timing = {"embed_s": t1 - t0, **self.last_timing}
        return out

    def _regression(self, rows: list[np.ndarray]) -> dict:
        # the head reads `count` hidden states ending `skip_last` before the sequence end (OpenVLA-OFT:
        # K*A, 2); default: the last chunk_size (the reference family's action queries)
        sel = self.meta.get("action_hidden") or {"count": self.meta["chunk_size"], "skip_last": 0}
        k, skip = int(sel["count"]), int(sel["skip_last"])
        t0 = time.perf_counter()
        hidden = []
        for seq in rows:
            self.backbone.reset()
            self.backbone.decode_embeddings(seq, n_outputs=k + skip)
            hidden.append(np.stack([self.backbone.hidden(i) for i in range(-(k + skip), -skip)]))
        t1 = time.perf_counter()
        (actions,) = self.sessions["action_head"].run(["actions"], {"hidden": np.stack(hidden).astype(np.float32)})
        self.last_timing = {"backbone_s": t1 - t0, "action_head_s": time.perf_counter() - t1}
        return {"actions": actions}

    def _tokens(self, rows: list[np.ndarray], force_bins: np.ndarray | None) -> dict:
        from ..export.family import bins_to_actions

        m = self.meta
        n, n_bins, start = m["action_tokens"], m["n_bins"], m["action_token_start"]
        prefill = decode = 0.0
        bins, logits = np.zeros((len(rows), n), np.int64), np.zeros((len(rows), n, n_bins), np.float32)
        for r, seq in enumerate(rows):
            t0 = time.perf_counter()
            self.backbone.reset()
            self.backbone.decode_embeddings(seq, n_outputs=1)
            t1 = time.perf_counter()
            for i in range(n):
                logits[r, i] = self.backbone.logits(-1)[start:start + n_bins]
                bins[r, i] = int(logits[r, i].argmax())
                if i == n - 1:
                    break
                nxt = bins[r, i] if force_bins is None else int(force_bins[r, i])
                self.backbone.decode_token(start + nxt)
            prefill, decode = prefill + t1 - t0, decode + time.perf_counter() - t1
        self.last_timing = {"prefill_s": prefill, "decode_s": decode, "decode_steps": n - 1}
        return {"actions": bins_to_actions(bins, m), "bins": bins, "bin_logits": logits}

    def close(self) -> None:
        self.backbone.close()


class LlamaCppPolicy(OnnxRuntimePolicy):
    """Policy over a GGUF artifact directory (see the module docstring for options); the
    per-step loop (processor, timing per component, un-normalisation) is the ONNX policy's."""

    runtime = "llama.cpp"

    def __init__(self, artifact_dir: str | Path, threads: int = 1, kv_cache: str | None = None, gpu_layers: int = 0,
                 flash_attn: str | None = None, execute_steps: int | None = None, allow_failed: bool = False, verify: bool = False,
                 name: str = "llama.cpp"):
        Policy.__init__(self, execute_steps)
        self.artifact, self.processor = open_artifact(artifact_dir, "gguf", "llama.cpp",
                                                      "a GGUF artifact (export format 'gguf')", allow_failed, verify)
        self.name = name
        self.graphs = HybridRunner(self.artifact, threads=threads, kv_cache=kv_cache, gpu_layers=gpu_layers,
                                   flash_attn=flash_attn)
        self.component_latencies_s: dict[str, list[float]] = {}

    @classmethod
    def from_spec(cls, spec: Any) -> "LlamaCppPolicy":
        """The policy of PolicySpec("llama.cpp", artifact_dir, options) (see the module docstring)."""
        o = spec.options
        return cls(spec.path, threads=o.get("threads", 1), kv_cache=o.get("kv_cache"),
                   gpu_layers=o.get("gpu_layers", 0), flash_attn=o.get("flash_attn"), **artifact_options(o, "llama.cpp"))

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        g = self.artifact.manifest["gguf"]
        d.update(gguf_tensor_types=g["tensor_types"], kv_cache=self.graphs.backbone.kv_cache,
                 flash_attn=self.graphs.backbone.flash_attn)
        return d
