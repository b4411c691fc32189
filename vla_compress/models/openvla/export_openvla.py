"""What the exporters need of OpenVLA and OpenVLA-OFT (export/family.py's hooks) and their ONNX graphs.

OpenVLA (token head) — two graphs, the decoder-with-past protocol of the reference tokens head:
    "prefill": pixel_values (B, C, S, S), bos_ids (B, 1), text_ids (B, T), text_mask (B, T)
        -> bin_logits (B, V) at the last position, attention_mask (B, L), present.{i}.key/.value
    "decode":  token_ids (B, 1), attention_mask (B, past + 1), position_ids (B, 1), past_key_values.*
        -> bin_logits (B, V), present.*
  "bin_logits" are the logits over the *whole* vocabulary: OpenVLA's predict_action is HF
  `generate` with do_sample=False, an argmax over all V ids, and the argmax token is what is fed
  back. Restricting the argmax to the 256 action ids would change the policy wherever a non-action
  token wins (on a trained model rarely, on a random one often). So the runtime's "bins" are
  vocabulary ids (head_meta: n_bins = V, action_token_start = 0) and `token_map: "openvla"` tells
  `bins_to_actions` to de-tokenise as OpenVLA does: bin = clip(action_vocab_end - id - 1, 0,
  n_action_bins - 2) -> midpoint of linspace(-1, 1, n_action_bins).
OpenVLA-OFT (L1 regression) — one graph, "policy_step": the same four inputs (+ state (B, P),
  normalised, when the checkpoint has a proprio projector) -> actions (B, K, A), normalised: the
  bidirectional parallel-decoding pass and the L1 head.

Dynamic axes: batch and text length (past length for decode). The artifact's processor
(`OpenVLAArtifactProcessor`) is the checkpoint's own, rebuilt from tokenizer.json,
preprocessor_config.json, dataset_statistics.json and openvla_runtime.json (unnorm_key,
normalisation, cameras, ...) with numpy, PIL and `tokenizers` only: no torch at run time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import CheckpointError, ConfigError
from ..contracts import (KV, PROCESSOR_VERSION, ArtifactProcessor, ExportFamily, GgufFamily, GraphSpec,
                         bounds_normalization, flat_cache, randomized_examples, weight_bytes)
from ...fileio import read_json, write_json, write_text

RUNTIME_FILE = "openvla_runtime.json"
TOKENIZER_FILES = ("tokenizer.json", "special_tokens_map.json", "tokenizer_config.json")
STATS_FILE = "dataset_statistics.json"
IMAGES_FILE = "preprocessor_config.json"
_RUNTIME_KEYS = ("unnorm_key", "normalization", "stats_eps", "num_images", "cameras", "center_crop", "uses_state")
INPUTS = ["pixel_values", "bos_ids", "text_ids", "text_mask"]


# --- the artifact's processor (torch-free) ----------------------------------------------------------
class OpenVLAArtifactProcessor(ArtifactProcessor):
    """Observations -> the graphs' numpy inputs, and normalised actions -> robot units, exactly as
    the torch adapter's processor (same code: OpenVLAProcessor.arrays), from the artifact's files."""

    def __init__(self, root: Path):
        from .processor_openvla import DatasetStats, ImageTransform, OpenVLAProcessor, PromptTokenizer

        root = Path(root)
        rt = read_json(root / RUNTIME_FILE)
        missing = [k for k in _RUNTIME_KEYS if not isinstance(rt, dict) or k not in rt]
        if missing:
            raise CheckpointError(root / RUNTIME_FILE, f"missing keys {missing}")
        stats = read_json(root / STATS_FILE)
        if not isinstance(stats, dict):
            raise CheckpointError(root / STATS_FILE, "expected {dataset: {action: {...}, proprio: {...}}}")
        try:
            self.stats = DatasetStats(stats, rt["unnorm_key"], rt["normalization"], float(rt["stats_eps"]),
                                      root / STATS_FILE)
        except ConfigError as e:
            raise CheckpointError(root / RUNTIME_FILE, str(e)) from None
        images = ImageTransform(read_json(root / IMAGES_FILE), root / IMAGES_FILE)
        cameras = tuple(rt["cameras"]) if rt["cameras"] else None
        self.uses_state = bool(rt["uses_state"])
        self.processor = OpenVLAProcessor(PromptTokenizer.from_dir(root), images, int(rt["num_images"]), cameras,
                                          self.stats, bool(rt["center_crop"]))

    def __call__(self, observations: list[dict]) -> dict[str, np.ndarray]:
        return self.processor.arrays(observations, with_state=self.uses_state)

    def unnormalize(self, chunk: np.ndarray) -> np.ndarray:
        return self.stats.unnormalize_actions(chunk)

    def observation_template(self) -> dict:
        """An all-zero observation of the right shape (for profiling an artifact without its model)."""
        p = self.processor
        cams = p.cameras or ("primary", "wrist", "wrist_right")[: p.num_images]
        h, w = p.images.sizes[0]
        obs = {"images": {c: np.zeros((h, w, 3), np.uint8) for c in cams}, "instruction": ""}
        if self.uses_state:
            obs["state"] = np.zeros(self.stats.proprio_dim(), np.float32)
        return obs


def _save_processor(vla: Any, root: Path) -> list[str]:
    """The processor pieces, written from the in-memory model (its statistics and settings)."""
    s = vla.cfg.settings
    write_json(root / RUNTIME_FILE, {
        "unnorm_key": vla.stats.key(), "normalization": vla.stats.normalization, "stats_eps": vla.stats.eps,
        "num_images": vla.vision_backbone.num_images, "cameras": list(s.cameras) if s.cameras else None,
        "center_crop": bool(s.center_crop), "uses_state": bool(vla.uses_state)})
    write_text(root / "tokenizer.json", vla.tokenizer.tok.to_str())
    # the BOS/EOS names PromptTokenizer.from_dir looks for, as the checkpoint spells them
    tok = vla.tokenizer.tok
    write_json(root / "special_tokens_map.json", {"bos_token": tok.id_to_token(vla.tokenizer.bos_id),
                                                  "eos_token": tok.id_to_token(vla.tokenizer.eos_id)})
    write_json(root / IMAGES_FILE, vla.image_transform.raw)
    write_json(root / STATS_FILE, vla.stats.norm_stats)
    return sorted([RUNTIME_FILE, "tokenizer.json", "special_tokens_map.json", IMAGES_FILE, STATS_FILE])


# --- torch reference, head metadata, examples ---------------------------------------------------------
def _torch_outputs(vla: Any, observations: list[dict]) -> dict[str, np.ndarray]:
    """OFT: the normalised chunk. OpenVLA: the greedy tokens, their actions, and the full-vocabulary
    logits teacher-forced along those tokens (one causal forward over prefix + tokens[:-1])."""
    import torch

    x = vla.preprocess(observations)
    with torch.inference_mode():
        if vla.family == "openvla-oft":
            return {"actions": vla.predict_chunk(x).float().numpy()}
        x = vla._model_inputs(x)
        n = vla.action_spec.dim
        tokens = vla.generate_action_tokens(x, n)
        lm = vla.language_model
        embeds, mask = vla.sequence(x, after_text=lm.model.embed_tokens(tokens[:, :-1]))
        hidden = lm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=vla.positions(mask)).last_hidden_state
        logits = lm.lm_head(hidden[:, -n:])
        actions = vla.tokens_to_actions(tokens).reshape(tokens.shape[0], 1, n)
        return {"actions": actions.float().numpy(), "bins": tokens.numpy(), "bin_logits": logits.float().numpy()}


def _head_meta(vla: Any) -> dict:
    spec = vla.action_spec
    meta = {"family": vla.family, "chunk_size": spec.chunk_size, "action_dim": spec.dim}
    if vla.family == "openvla-oft":
        # the backbone attends bidirectionally and the L1 head reads the K*A hidden states that end
        # two positions before the sequence end (the last placeholder and </s> are not read)
        return {**meta, "head": "regression", "policy_head": "l1", "proprio": bool(vla.uses_state),
                "attention": "bidirectional", "action_hidden": {"count": spec.chunk_size * spec.dim, "skip_last": 2}}
    c = vla.cfg
    return {**meta, "head": "tokens", "num_layers": int(c.llama["num_hidden_layers"]), "action_tokens": spec.dim,
            "n_bins": int(c.llama["vocab_size"]), "action_token_start": 0, "token_map": "openvla",
            "action_vocab_end": c.action_vocab_end, "n_action_bins": c.n_action_bins}


def _examples(vla: Any, n: int = 2) -> list[dict]:
    """Random images for every camera, two instructions of different lengths (left padding), and
    for OFT a state spread over the statistics' range."""
    texts = ["pick up the object and place it at the goal", "open the drawer"]
    lo, hi, _ = vla.stats._bounds("proprio") if vla.uses_state else (None, None, None)
    return randomized_examples(vla, n, texts, lambda rng: rng.uniform(lo, hi))


def openvla_tokens_to_actions(tokens: np.ndarray, meta: dict) -> np.ndarray:
    """OpenVLA's de-tokenisation (modeling_openvla.tokens_to_actions) in numpy: (B, N) ids -> (B, 1, N)."""
    n = int(meta["n_action_bins"])
    edges = np.linspace(-1.0, 1.0, n, dtype=np.float64)
    centers = ((edges[:-1] + edges[1:]) / 2.0).astype(np.float32)
    idx = np.clip(int(meta["action_vocab_end"]) - tokens.astype(np.int64) - 1, 0, n - 2)
    return centers[idx].reshape(tokens.shape[0], meta["chunk_size"], meta["action_dim"])


def describe_processor(vla: Any) -> dict:
    """OpenVLA's processor (processor_openvla.py: PrismaticImageProcessor, the prompt, the statistics)
    as data (models/contracts.py PROCESSOR_VERSION)."""
    from .configuration_openvla import PROMPT_TEMPLATE

    it, st = vla.image_transform, vla.stats
    s = vla.cfg.settings
    n = vla.vision_backbone.num_images
    resize = {"resize-naive": "resize to height x width", "resize-crop": "shorter side to min(height, width), "
              "then centre crop", "letterbox": "pad to a square with letterbox_fill (centred), then resize"}[it.strategy]
    branches = [{"height": h, "width": w, "resize": f"{resize}, PIL {interp}", "interpolation": interp,
                 "strategy": it.strategy, "letterbox_fill": list(it.fill) if it.fill is not None else None,
                 "scale": 1 / 255, "offset": 0.0, "mean": [float(v) for v in m.ravel()],
                 "std": [float(v) for v in d.ravel()]}
                for (h, w), interp, m, d in zip(it.sizes, it.interp, it.mean, it.std)]
    lo, hi, mask = st._bounds("action")
    out = {
        "version": PROCESSOR_VERSION,
        "images": {"input": "pixel_values", "cameras": list(s.cameras) if s.cameras else None, "count": n,
                   "frame": "H x W x 3 uint8, RGB (no flip or rotation); with cameras null, the observation's "
                            "first `count` images in insertion order",
                   "center_crop": ({"area": 0.9, "method": "tf.image.crop_and_resize (bilinear) of the centre 90% "
                                    "area back to the frame size, on the frame as float in [0, 1], back to uint8 as "
                                    "x * 255.5 truncated"} if s.center_crop else None),
                   "branches": branches,
                   "layout": "NCHW float32; per camera the branches' normalised images stacked on the channel "
                             "axis, then the cameras: (B, cameras * 3 * branches, H, W)"},
        "prompt": {"template": PROMPT_TEMPLATE, "instruction": "lower-cased", "tokenizer": "tokenizer.json",
                   "add_special_tokens": False, "append": [int(vla.tokenizer.empty_id)], "append_if_missing": True,
                   "bos": {"input": "bos_ids", "id": int(vla.tokenizer.bos_id)}, "padding": "left", "pad_id": 0,
                   "ids": "text_ids", "mask": "text_mask", "dtype": "int64; mask 1 on tokens, 0 on padding"},
        "state": None,
        "actions": {"dim": int(vla.action_spec.dim), "chunk_size": int(vla.action_spec.chunk_size),
                    "execute": int(vla.action_spec.chunk_size),
                    "normalization": bounds_normalization(lo, hi, mask, add_out=st.eps)},
        "noise": None,
    }
    if vla.uses_state:
        plo, phi, pmask = st._bounds("proprio")
        out["state"] = {"input": "state", "dim": int(plo.shape[0]),
                        "normalization": bounds_normalization(plo, phi, pmask, add_in=1e-8)}
    return out


def export_family() -> ExportFamily:
    return ExportFamily(_save_processor, OpenVLAArtifactProcessor, _torch_outputs, _head_meta, _examples,
                        onnx_graphs=_openvla_graphs,
                        gguf=GgufFamily(_gguf_side_graphs, _gguf_backbone, _gguf_vocab), describe=describe_processor)


# --- ONNX graphs ----------------------------------------------------------------------------------------
def _modules():
    """Wrapper classes, defined lazily so importing this module does not import torch."""
    from torch import nn
    from transformers import DynamicCache

    from ...nn.hf_cache import run_with_cache

    def inputs(pixel_values, bos_ids, text_ids, text_mask) -> dict:
        return {"pixel_values": pixel_values, "bos_ids": bos_ids, "text_ids": text_ids, "text_mask": text_mask}

    class Prefill(nn.Module):
        def __init__(self, vla):
            super().__init__()
            self.vla = vla

        def forward(self, pixel_values, bos_ids, text_ids, text_mask):
            embeds, mask = self.vla.sequence(inputs(pixel_values, bos_ids, text_ids, text_mask))
            lm = self.vla.language_model
            out, present = run_with_cache(lm.model, DynamicCache(), inputs_embeds=embeds, attention_mask=mask,
                                          position_ids=self.vla.positions(mask), use_cache=True)
            # hidden[:, -1:] keeps the row 3-D so the head is a MatMul (int4 covers MatMul, not Gemm)
            return (lm.lm_head(out.last_hidden_state[:, -1:])[:, 0], mask, *flat_cache(present))

    class Decode(nn.Module):
        def __init__(self, vla):
            super().__init__()
            self.vla = vla

        def forward(self, token_ids, attention_mask, position_ids, past):
            lm = self.vla.language_model
            cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)])
            out, present = run_with_cache(lm.model, cache, inputs_embeds=lm.model.embed_tokens(token_ids),
                                          attention_mask=attention_mask, position_ids=position_ids, use_cache=True)
            return (lm.lm_head(out.last_hidden_state[:, -1:])[:, 0], *flat_cache(present))

    class ChunkStep(nn.Module):  # OFT without proprio
        def __init__(self, vla):
            super().__init__()
            self.vla = vla

        def forward(self, pixel_values, bos_ids, text_ids, text_mask):
            return self.vla.predict_chunk(inputs(pixel_values, bos_ids, text_ids, text_mask))

    class ChunkStepWithState(ChunkStep):  # OFT with the proprio token
        def forward(self, pixel_values, bos_ids, text_ids, text_mask, state):
            return self.vla.predict_chunk({**inputs(pixel_values, bos_ids, text_ids, text_mask), "state": state})

    return Prefill, Decode, ChunkStep, ChunkStepWithState


def _prefix_inputs(vla: Any, example: dict) -> tuple[list[str], tuple, dict, Any]:
    from torch.export import Dim

    names = INPUTS + (["state"] if vla.uses_state else [])
    args = tuple(example[k] for k in names)
    if args[0].shape[0] < 2:
        raise ConfigError("ONNX export needs an example batch of >= 2 observations (batch 1 would be baked in)")
    batch = Dim("batch", min=1, max=4096)
    text = Dim("text", min=1, max=int(vla.cfg.llama["max_position_embeddings"]))
    shapes = {"pixel_values": {0: batch}, "bos_ids": {0: batch}, "text_ids": {0: batch, 1: text},
              "text_mask": {0: batch, 1: text}}
    if vla.uses_state:
        shapes["state"] = {0: batch}
    return names, args, shapes, batch


def _require_float32(vla: Any, fmt: str) -> None:
    """ONNX Runtime's CPU kernels take no bfloat16 (a bf16 graph does not even load), and the other
    precisions are made from the fp32 graph by the quantizers: trace float32 only."""
    import torch

    dtype = vla.projector.fc1.weight.dtype
    if dtype != torch.float32:
        raise ConfigError(f"{fmt} export of {vla.family} traces float32 ONNX graphs, but this model's weights are "
                          f"{str(dtype).replace('torch.', '')}: load the checkpoint with dtype=torch.float32 "
                          "(from_pretrained(path, dtype=torch.float32)) and choose the precision at export")


def _openvla_graphs(vla: Any, example: dict) -> list[GraphSpec]:
    import torch
    from torch.export import Dim

    _require_float32(vla, "ONNX")
    Prefill, Decode, ChunkStep, ChunkStepWithState = _modules()
    example = vla._model_inputs(example)
    names, args, shapes, batch = _prefix_inputs(vla, example)
    if vla.family == "openvla-oft":
        step = (ChunkStepWithState if vla.uses_state else ChunkStep)(vla).eval()
        return [GraphSpec("policy_step", step, args, names, ["actions"], shapes, weight_bytes(step))]

    n_layers = int(vla.cfg.llama["num_hidden_layers"])
    prefill = Prefill(vla).eval()
    with torch.no_grad():
        out = prefill(*args)
    mask = torch.cat([out[1], torch.ones_like(out[1][:, :1])], dim=1)
    dec_args = (out[0].argmax(-1, keepdim=True), mask, out[1].sum(-1, keepdim=True), tuple(out[2:]))
    past_len = Dim("past", min=1, max=int(vla.cfg.llama["max_position_embeddings"]))
    dec_shapes = {"token_ids": {0: batch}, "attention_mask": {0: batch, 1: past_len + 1}, "position_ids": {0: batch},
                  "past": tuple({0: batch, 2: past_len} for _ in range(2 * n_layers))}
    present = [f"present.{i}.{kv}" for i in range(n_layers) for kv in KV]
    past_names = [f"past_key_values.{i}.{kv}" for i in range(n_layers) for kv in KV]
    decode = Decode(vla).eval()
    return [
        GraphSpec("prefill", prefill, args, names, ["bin_logits", "attention_mask", *present], shapes,
                  weight_bytes(prefill)),
        GraphSpec("decode", decode, dec_args, ["token_ids", "attention_mask", "position_ids", *past_names],
                  ["bin_logits", *present], dec_shapes, weight_bytes(decode.vla.language_model)),
    ]




# --- GGUF (OpenVLA's Llama in llama.cpp; vision, projector and embeddings in ONNX) ------------------------
def _gguf_side_graphs(vla: Any, example: dict) -> list[GraphSpec]:
    """"embed": the prefix inputs -> inputs_embeds (B, L, D), attention_mask (B, L): the model's own
    sequence. OpenVLA: <s> [patches] [pad.. prompt]; llama.cpp decodes the real rows and the action
    tokens greedily over the whole vocabulary, as the ONNX decode graph does. OFT: the parallel-
    decoding sequence (proprio token, K*A zero placeholders, </s>), run bidirectionally by llama.cpp,
    and "action_head": the K*A hidden states (B, K*A, D) -> actions (B, K, A), normalised."""
    import torch
    from torch import nn

    class Embed(nn.Module):
        def __init__(self, vla):
            super().__init__()
            self.vla = vla

        def forward(self, pixel_values, bos_ids, text_ids, text_mask, *state):
            x = {"pixel_values": pixel_values, "bos_ids": bos_ids, "text_ids": text_ids, "text_mask": text_mask}
            if self.vla.family == "openvla":
                return self.vla.sequence(x)
            spec = self.vla.action_spec
            prop = self.vla.proprio_projector(state[0]).unsqueeze(1) if state else None
            return self.vla.parallel_sequence(x, prop, spec.chunk_size * spec.dim, self.vla.tokenizer.eos_id)

    class EmbedWithState(Embed):
        def forward(self, pixel_values, bos_ids, text_ids, text_mask, state):
            return super().forward(pixel_values, bos_ids, text_ids, text_mask, state)

    class EmbedNoState(Embed):
        def forward(self, pixel_values, bos_ids, text_ids, text_mask):
            return super().forward(pixel_values, bos_ids, text_ids, text_mask)

    _require_float32(vla, "GGUF")
    names, args, shapes, batch = _prefix_inputs(vla, vla._model_inputs(example))
    embed = (EmbedWithState if vla.uses_state else EmbedNoState)(vla).eval()
    used = [vla.vision_backbone, vla.projector, vla.language_model.model.embed_tokens]
    used += [vla.proprio_projector] if vla.uses_state else []
    specs = [GraphSpec("embed", embed, args, names, ["inputs_embeds", "attention_mask"], shapes,
                       sum(weight_bytes(m) for m in used))]
    if vla.family == "openvla-oft":
        head = vla.action_head.eval()  # the L1 head's forward takes the hidden states as they are
        spec = vla.action_spec
        hidden = torch.zeros(args[0].shape[0], spec.chunk_size * spec.dim, vla.cfg.llm_dim)
        specs.append(GraphSpec("action_head", head, (hidden,), ["hidden"], ["actions"], {"hidden": {0: batch}},
                               weight_bytes(head)))
    return specs


def _gguf_backbone(vla: Any) -> tuple[Any, Any]:
    """The Llama and, for OpenVLA, its (untied) LM head: the action-token logits come from it (OFT's
    L1 head reads hidden states instead)."""
    return vla.language_model.model, (vla.language_model.lm_head.weight if vla.family == "openvla" else None)


def _gguf_vocab(vla: Any) -> tuple[Any, int, int, int | None]:
    t = vla.tokenizer
    pad = t.tok.token_to_id("<PAD>")  # OpenVLA's added pad token (id 32000 in openvla-7b), if present
    return t.tok, t.bos_id, t.eos_id, pad
