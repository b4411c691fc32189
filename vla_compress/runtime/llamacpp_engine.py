"""A llama.cpp context driven through llama-cpp-python's low-level API (ctypes), for one sequence.

Why the low-level API: the policy feeds the backbone *embeddings* (image, text, proprio,
action queries computed in ONNX), which the high-level `Llama` class cannot take, and reads
back either logits (action tokens) or final hidden states (regression head, embeddings mode).

One `LlamaBackbone` holds the model, one context and two batches (embeddings, tokens). Each
policy step starts from an empty KV cache (`reset`), decodes the input embeddings at positions
0..n-1, then, for a tokens head, one generated token at a time.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ExportError

KV_TYPES = {"f32": "GGML_TYPE_F32", "f16": "GGML_TYPE_F16"}
# ggml's CPU flash-attention kernel accumulates in f16 even over an f32 KV cache (2e-4 relative
# error on the tiny models against 1e-6 without it), so exact (f32) runs switch it off.
FLASH_ATTN = {"auto": "LLAMA_FLASH_ATTN_TYPE_AUTO", "on": "LLAMA_FLASH_ATTN_TYPE_ENABLED",
              "off": "LLAMA_FLASH_ATTN_TYPE_DISABLED"}


# llama.cpp's log lines go to this logger. ggml's levels are NONE 0, DEBUG 1, INFO 2, WARN 3,
# ERROR 4, CONT 5 (continue the previous line); llama-cpp-python 0.3.36's own callback maps them
# from an older enum (a WARN would print as an error), so we install ours. Quiet by default
# (ERROR), as llama-cpp-python's non-verbose mode means to be; lower the level to see model loading.
LOGGER = logging.getLogger("vla_compress.llama_cpp")
LOGGER.setLevel(logging.ERROR)
_GGML_LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_LOG_STATE: dict = {"callback": None, "level": logging.DEBUG}
_BACKEND_READY = False


def _log(level: int, text: bytes, _user: object) -> None:
    lvl = _LOG_STATE["level"] if level == 5 else _GGML_LEVELS.get(level, logging.DEBUG)
    _LOG_STATE["level"] = lvl
    if LOGGER.isEnabledFor(lvl):
        LOGGER.log(lvl, "%s", text.decode("utf-8", "replace").rstrip("\n"))


def load_llama_cpp():
    """llama_cpp with our log callback installed and the backend initialised (once per process),
    or an ExportError saying how to install it."""
    global _BACKEND_READY
    try:
        import llama_cpp
    except ImportError as e:
        raise ExportError("llama_cpp", "llama-cpp-python is not installed; install it with ./install.sh or "
                          "CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" pip install -c constraints.txt --no-cache-dir "
                          f"llama-cpp-python==0.3.36 ({e})") from None
    if _LOG_STATE["callback"] is None:
        _LOG_STATE["callback"] = llama_cpp.llama_log_callback(_log)  # kept referenced: C holds the pointer
        llama_cpp.llama_log_set(_LOG_STATE["callback"], ctypes.c_void_p(0))
    if not _BACKEND_READY:
        llama_cpp.llama_backend_init()
        _BACKEND_READY = True
    return llama_cpp


class LlamaBackbone:
    """A GGUF model + context. `embeddings=True` reads final hidden states, else logits;
    `causal=False` attends bidirectionally over the whole sequence."""

    def __init__(self, gguf_path: str | Path, n_ctx: int, threads: int = 1, kv_cache: str = "f16",
                 embeddings: bool = False, gpu_layers: int = 0, flash_attn: str = "auto", causal: bool = True):
        if kv_cache not in KV_TYPES:
            raise ConfigError(f"llama.cpp KV-cache type must be one of {sorted(KV_TYPES)}, got {kv_cache!r}")
        if flash_attn not in FLASH_ATTN:
            raise ConfigError(f"llama.cpp flash_attn must be one of {sorted(FLASH_ATTN)}, got {flash_attn!r}")
        lc = self._lc = load_llama_cpp()
        self.path = Path(gguf_path)
        self.model = self.ctx = None
        self._batches = []
        mp = lc.llama_model_default_params()
        mp.n_gpu_layers = int(gpu_layers)
        self.model = lc.llama_model_load_from_file(str(self.path).encode(), mp)
        if not self.model:
            raise ExportError(self.path, "llama.cpp could not load this GGUF (see its log with logging level DEBUG)")
        cp = lc.llama_context_default_params()
        cp.n_ctx = cp.n_batch = cp.n_ubatch = int(n_ctx)
        cp.n_seq_max = 1
        cp.n_threads = cp.n_threads_batch = int(threads)
        cp.embeddings = bool(embeddings)
        cp.pooling_type = lc.LLAMA_POOLING_TYPE_NONE  # one hidden state per position, no pooling
        cp.type_k = cp.type_v = getattr(lc, KV_TYPES[kv_cache])
        cp.no_perf = True
        cp.flash_attn_type = getattr(lc, FLASH_ATTN[flash_attn])
        self.ctx = lc.llama_init_from_model(self.model, cp)
        if not self.ctx:
            self.close()
            raise ExportError(self.path, f"llama.cpp could not create a context (n_ctx={n_ctx}, kv={kv_cache})")
        # Bidirectional attention (OpenVLA-OFT's parallel decoding attends over the whole sequence)
        # is llama.cpp's non-causal mode; it needs the sequence in one ubatch (n_ubatch = n_ctx here).
        lc.llama_set_causal_attn(self.ctx, bool(causal))
        self.n_ctx, self.embeddings, self.kv_cache, self.flash_attn = int(n_ctx), bool(embeddings), kv_cache, flash_attn
        self.causal = bool(causal)
        self.n_embd = lc.llama_model_n_embd(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self._memory = lc.llama_get_memory(self.ctx)
        self._embd = self._batch(self.n_ctx, self.n_embd)
        self._tok = self._batch(1, 0)
        self.n_past = 0

    def _batch(self, n: int, embd: int):
        """A batch of `n` slots for sequence 0, with numpy views on its arrays."""
        b = self._lc.llama_batch_init(n, embd, 1)
        self._batches.append(b)
        for i in range(n):
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
        views = {"pos": np.ctypeslib.as_array(b.pos, shape=(n,)), "logits": np.ctypeslib.as_array(b.logits, shape=(n,))}
        if embd:
            views["embd"] = np.ctypeslib.as_array(b.embd, shape=(n, embd))
        else:
            views["token"] = np.ctypeslib.as_array(b.token, shape=(n,))
        return b, views

    # --- a policy step ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Empty the KV cache: the next decode starts a new sequence at position 0."""
        self._lc.llama_memory_clear(self._memory, True)
        self.n_past = 0

    def decode_embeddings(self, embeds: np.ndarray, n_outputs: int = 1) -> None:
        """Append (n, n_embd) input embeddings; outputs (logits or hidden states) for the last `n_outputs`."""
        n = embeds.shape[0]
        if embeds.ndim != 2 or embeds.shape[1] != self.n_embd:
            raise ConfigError(f"embeddings of shape {embeds.shape} do not match the model width {self.n_embd}")
        if self.n_past + n > self.n_ctx:
            raise ConfigError(f"{self.n_past + n} positions exceed the llama.cpp context of {self.n_ctx}")
        batch, v = self._embd
        v["embd"][:n] = embeds
        v["pos"][:n] = np.arange(self.n_past, self.n_past + n, dtype=np.int32)
        # In embeddings mode llama.cpp outputs every position whatever is asked (pooling NONE); ask
        # for exactly that so outputs are indexed as requested (the last n_outputs are still -n..-1).
        v["logits"][:n] = 1 if self.embeddings else 0
        v["logits"][n - n_outputs:n] = 1
        batch.n_tokens = n
        self._decode(batch, n)

    def decode_token(self, token: int) -> None:
        """Append one vocabulary token (its output is requested)."""
        if self.n_past + 1 > self.n_ctx:
            raise ConfigError(f"{self.n_past + 1} positions exceed the llama.cpp context of {self.n_ctx}")
        batch, v = self._tok
        v["token"][0], v["pos"][0], v["logits"][0] = int(token), self.n_past, 1
        batch.n_tokens = 1
        self._decode(batch, 1)

    def _decode(self, batch, n: int) -> None:
        rc = self._lc.llama_decode(self.ctx, batch)
        if rc != 0:
            raise ExportError(self.path, f"llama_decode failed with code {rc} at position {self.n_past}")
        self.n_past += n

    def logits(self, i: int = -1) -> np.ndarray:
        """Vocabulary logits of output `i` of the last decode (negative: from the end)."""
        p = self._lc.llama_get_logits_ith(self.ctx, i)
        if not p:
            raise ExportError(self.path, f"llama.cpp returned no logits for output {i}")
        return np.ctypeslib.as_array(p, shape=(self.n_vocab,)).copy()

    def hidden(self, i: int = -1) -> np.ndarray:
        """Final (normed) hidden state of output `i` of the last decode (embeddings mode)."""
        if not self.embeddings:
            raise ConfigError("hidden states need a context created with embeddings=True")
        p = self._lc.llama_get_embeddings_ith(self.ctx, i)
        if not p:
            raise ExportError(self.path, f"llama.cpp returned no hidden state for output {i}")
        return np.ctypeslib.as_array(p, shape=(self.n_embd,)).copy()

    def close(self) -> None:
        lc = self._lc
        for b in self._batches:
            lc.llama_batch_free(b)
        self._batches = []
        if self.ctx:
            lc.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            lc.llama_model_free(self.model)
            self.model = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
