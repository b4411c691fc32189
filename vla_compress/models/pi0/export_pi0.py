"""What the exporters need of π0 / π0.5 (export/family.py's hooks) and their ONNX graphs.

The artifact holds two graphs, with the flow-matching Euler loop outside them (head_meta "head":
"flow" names that graph protocol; its "loop" record says how to run it):
    prefix        pixel_values (B, N, 3, S, S), image_masks (B, N) bool, lang_tokens (B, T) int64,
                  lang_masks (B, T) bool, state (B, max_state_dim)
                  -> prefix_pad (B, P) bool, present.{i}.key / present.{i}.value (B, P, kv_heads, head_dim)
    denoise_step  prefix_pad, state, x_t (B, chunk, max_action_dim), t (B,) float32,
                  past_key_values.{i}.key / .value (the prefix's present.*) -> velocity (B, chunk, max_action_dim)
(π0.5 reads its state in the prompt: its denoise_step takes `state` but ignores it.) A runtime runs prefix
once per policy step, then `integration_steps` Euler steps from the noise input at t = 1:
x <- x + dt v(x, t), dt = -1/N, t = 1, 1 - 1/N, ..., 1/N (float32, the times LeRobot's loop uses),
and returns x[..., :action_dim], normalised. A checkpoint compressed by the denoise-steps pass (a
smaller num_inference_steps) records its own N: the graphs do not depend on it. The loop is the
same on every backend (ONNX Runtime, OpenVINO, TensorRT per-graph engines: runtime/onnxruntime_policy.py),
and examples/run_artifact.py runs it from artifact.json alone.
The artifact's processor draws the start noise from a torch.Generator seeded with the model's
`noise_seed` (pi0_runtime.json), the stream the torch adapter draws from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...fileio import read_json, write_json
from ..contracts import KV, ArtifactProcessor, ExportFamily, GraphSpec, randomized_examples, weight_bytes

RUNTIME_FILE = "pi0_runtime.json"
INPUTS = ["pixel_values", "image_masks", "lang_tokens", "lang_masks", "state", "noise"]


class Pi0ArtifactProcessor(ArtifactProcessor):
    """The checkpoint's own processor, rebuilt from the artifact's files (no network is built)."""

    def __init__(self, root: Path):
        import torch

        from .adapter import read_processor_files

        self.cfg, self.processor = read_processor_files(Path(root))
        runtime = read_json(Path(root) / RUNTIME_FILE)
        self.noise_generator = torch.Generator(device="cpu").manual_seed(int(runtime["noise_seed"]))

    def __call__(self, observations: list[dict]) -> dict[str, np.ndarray]:
        import torch

        feeds = {k: v.numpy() for k, v in self.processor(observations).items()}
        shape = (len(observations), self.cfg.chunk_size, self.cfg.max_action_dim)
        feeds["noise"] = torch.randn(shape, generator=self.noise_generator, dtype=torch.float32).numpy()
        return feeds

    @property
    def cameras(self) -> tuple[str, ...]:
        """The camera names of the model's image features, placeholders (empty_camera_*) included."""
        return tuple(self.cfg.cameras)

    def unnormalize(self, chunk: np.ndarray) -> np.ndarray:
        """Robot-unit actions of the chunk's first n_action_steps (what select_action executes)."""
        return self.processor.unnormalize_actions(chunk)[: self.cfg.n_action_steps]


def write_processor_files(vla: Any, root: Path) -> list[str]:
    """config.json, the pipeline files and statistics, and tokenizer/: what read_processor_files needs."""
    from ...fileio import write_json as write
    from ..lerobot_layout import write_files
    from .processor_pi0 import TOKENIZER_SUBDIR

    names = write_files(vla.side_files(), root)
    names += write_files({f"{TOKENIZER_SUBDIR}/{n}": b for n, b in vla.processor.tokenizer.files().items()}, root)
    write(root / "config.json", vla.cfg.to_dict())
    return sorted(names + ["config.json"])


def _save_processor(vla: Any, root: Path) -> list[str]:
    write_json(root / RUNTIME_FILE, {"noise_seed": vla.noise_seed, "noise_shape": list(vla.noise_shape(1)[1:])})
    return sorted(write_processor_files(vla, root) + [RUNTIME_FILE])


def _torch_outputs(vla: Any, observations: list[dict]) -> dict[str, np.ndarray]:
    """The chunk for the noise a fresh artifact processor draws first (same seed, same stream)."""
    import torch

    x = vla.preprocess(observations)
    gen = torch.Generator(device="cpu").manual_seed(vla.noise_seed)
    x["noise"] = torch.randn(vla.noise_shape(len(observations)), generator=gen, dtype=torch.float32)
    with torch.inference_mode():
        return {"actions": vla.predict_chunk(x).float().numpy()}


def _head_meta(vla: Any) -> dict:
    c = vla.cfg
    n_layers = len(vla.backbone.layers)
    return {"family": vla.family, "head": "flow", "policy_head": "flow", "chunk_size": c.chunk_size,
            "action_dim": c.action_dim, "integration_steps": c.num_inference_steps, "n_action_steps": c.n_action_steps,
            "num_layers": n_layers, "loop": flow_loop(c.num_inference_steps, n_layers)}


def flow_loop(steps: int, n_layers: int) -> dict:
    """The Euler loop around the two graphs, as data (artifact.json `model.loop`): what a runtime or an
    integrator needs to reproduce sample_actions (modeling_pi0.py) exactly."""
    dt = -1.0 / steps
    carry = {"prefix_pad": "prefix_pad"}
    carry.update({f"past_key_values.{i}.{kv}": f"present.{i}.{kv}" for i in range(n_layers) for kv in KV})
    return {"prefix": "prefix", "step": "denoise_step", "steps": int(steps), "dt": dt,
            # float32 as torch.full(..., 1.0 + k * dt, dtype=float32) rounds them; exact in JSON
            "times": [float(np.float32(1.0 + k * dt)) for k in range(steps)],
            "start": "noise", "x": "x_t", "t": "t", "velocity": "velocity", "carry": carry,
            "prefix_axis": {"name": "prefix", "output": "prefix_pad", "dim": 1},
            "rule": "run `prefix` once on the processor's inputs; x = the `start` input (float32); for each t in "
                    "`times`: x = x + float32(dt) * `step`(x_t = x, t = t repeated over the batch (float32), each "
                    "`carry` input = that prefix output, other inputs from the processor) -> `velocity`; "
                    "actions = x[:, :, :action_dim]"}


def _examples(vla: Any, n: int = 2) -> list[dict]:
    """Random observations with every camera, in-range state and two instructions of different lengths."""
    return randomized_examples(vla, n, ["pick up the object and place it at the goal", "open the door"])


def describe_processor(vla: Any) -> dict:
    """π0 / π0.5's processor (processor_pi0.py) as data (models/contracts.py PROCESSOR_VERSION)."""
    from ..contracts import PROCESSOR_VERSION, lerobot_normalization
    from .processor_pi0 import STATE_BINS, TOKENIZER_SUBDIR

    c, p = vla.cfg, vla.processor
    st, tok = p.settings, p.tokenizer
    s = c.image_size
    cams = [{"name": f.camera, "key": f.key, "height": int(f.shape[1]), "width": int(f.shape[2]),
             "normalization": {"kind": "identity"}} for f in c.image_features]
    return {
        "version": PROCESSOR_VERSION,
        "images": {"input": "pixel_values", "masks": "image_masks", "cameras": [x["name"] for x in cams],
                   "count": len(cams), "declared_cameras": len(cams), "empty_cameras": len(cams),
                   "frame": "H x W x 3 uint8 RGB (no flip or rotation) -> float (3, H, W) / 255", "center_crop": None,
                   "per_camera": cams, "padding": "centred", "clamp": True,
                   "branches": [{"height": s, "width": s, "scale": 1 / 255, "offset": 0.0}],
                   "steps": ["x / 255", "bilinear resize (align_corners=False) keeping the aspect ratio to fit height "
                             "x width, clamp to [0, 1], zero padding split evenly (the odd pixel bottom / right), "
                             "skipped when already that size", "x * 2 - 1"],
                   "layout": "float32 (B, N, 3, H, W): the configured cameras given, in config order, then an all -1 "
                             "image per configured camera not given; image_masks bool (B, N), false for those"},
        "prompt": {"template": "{instruction}", "newline": bool(st.newline),
                   "state_prompt": ({"bins": STATE_BINS, "template": "Task: {task}, State: {state};\nAction: ",
                                     "task": "stripped, '_' and newlines -> ' '",
                                     "state": "the normalised state, np.digitize(s, linspace(-1, 1, bins + 1)[:-1]) - 1,"
                                              " space-separated"} if st.state_prompt else None),
                   "tokenizer": f"{TOKENIZER_SUBDIR}/tokenizer.json", "add_special_tokens": True, "append": [],
                   "bos": None, "bos_if_missing": int(tok.bos_id) if tok.add_bos else None,
                   "eos_if_missing": int(tok.eos_id) if tok.add_eos and tok.eos_id is not None else None,
                   "padding": tok.padding_side, "pad_to": int(tok.max_length) if tok.padding == "max_length" else None,
                   "truncate_to": int(tok.max_length) if tok.truncation else None, "pad_id": int(tok.pad_id),
                   "ids": "lang_tokens", "mask": "lang_masks", "dtype": "ids int64, mask bool"},
        "state": {"input": "state", "dim": int(c.state_feature.shape[0]), "pad_to": int(c.max_state_dim),
                  "normalization": lerobot_normalization(st.normalizer, c.state_feature.key)},
        "actions": {"dim": int(c.action_dim), "chunk_size": int(c.chunk_size), "execute": int(c.n_action_steps),
                    "normalization": lerobot_normalization(st.unnormalizer, c.action_feature.key)},
        "noise": {"input": "noise", "shape": [int(c.chunk_size), int(c.max_action_dim)], "dtype": "float32",
                  "distribution": "standard normal, one draw per policy step (the project's runtime draws it from "
                                  "torch.Generator seeded with the runtime file's noise_seed)"},
    }


def export_family() -> ExportFamily:
    return ExportFamily(_save_processor, Pi0ArtifactProcessor, _torch_outputs, _head_meta, _examples,
                        onnx_graphs=flow_graphs, describe=describe_processor)


def _example_with_noise(vla: Any, example: dict) -> dict:
    import torch

    from ...errors import ConfigError

    if example["state"].shape[0] < 2:
        raise ConfigError("ONNX export needs an example batch of >= 2 observations (batch 1 would be baked in)")
    example = dict(example)
    gen = torch.Generator(device="cpu").manual_seed(vla.noise_seed)
    example["noise"] = torch.randn(vla.noise_shape(example["state"].shape[0]), generator=gen, dtype=torch.float32)
    return example


def _input_shapes(vla: Any) -> dict:
    from torch.export import Dim

    # the camera count is static: the processor always feeds every configured camera (a missing one as a
    # masked -1 image), so the graph has one fewer dynamic axis (TensorRT profiles need a range per axis)
    batch = Dim("batch", min=1, max=4096)
    shapes = {"pixel_values": {0: batch}, "image_masks": {0: batch}, "state": {0: batch},
              "noise": {0: batch}, "lang_tokens": {0: batch}, "lang_masks": {0: batch}}
    if vla.processor.tokenizer.padding != "max_length":
        text = Dim("text", min=1, max=4096)
        shapes.update(lang_tokens={0: batch, 1: text}, lang_masks={0: batch, 1: text})
    return shapes


def flow_graphs(vla: Any, example: dict) -> list[GraphSpec]:
    """The artifact's graphs (module docstring): "prefix" -> prefix_pad + present.{i}.key/value, and
    "denoise_step" -> velocity; the names agree with `flow_loop`."""
    import torch
    from torch import nn
    from torch.export import Dim

    n_layers = len(vla.backbone.layers)
    present = [f"present.{i}.{kv}" for i in range(n_layers) for kv in KV]
    past = [f"past_key_values.{i}.{kv}" for i in range(n_layers) for kv in KV]

    class Prefix(nn.Module):
        def __init__(self, vla):
            super().__init__()
            self.vla = vla

        def forward(self, pixel_values, image_masks, lang_tokens, lang_masks, state):
            inputs = {"pixel_values": pixel_values, "image_masks": image_masks, "lang_tokens": lang_tokens,
                      "lang_masks": lang_masks, "state": state}
            kv, pad = self.vla.prefill(inputs)
            return (pad, *[t for pair in kv for t in pair])

    class DenoiseStep(nn.Module):
        def __init__(self, vla):
            super().__init__()
            self.vla = vla

        def forward(self, prefix_pad, state, x_t, t, *kv):
            pairs = [(kv[2 * i], kv[2 * i + 1]) for i in range(len(kv) // 2)]
            v = self.vla.velocity({"state": state}, pairs, prefix_pad, x_t, t)
            return v

    example = _example_with_noise(vla, example)
    shapes = _input_shapes(vla)
    prefix = Prefix(vla).eval()
    args = tuple(example[k] for k in INPUTS[:-1])
    with torch.no_grad():
        pad, *kv = prefix(*args)
    batch = shapes["state"][0]
    plen = Dim("prefix", min=1, max=65536)
    kv_shape = {0: batch, 1: plen}
    step = DenoiseStep(vla).eval()
    t = torch.ones(args[0].shape[0], dtype=torch.float32)
    step_shapes = {"prefix_pad": {0: batch, 1: plen}, "state": {0: batch}, "x_t": {0: batch}, "t": {0: batch},
                   "kv": tuple(kv_shape for _ in kv)}
    return [GraphSpec("prefix", prefix, args, INPUTS[:-1], ["prefix_pad", *present],
                      {k: shapes[k] for k in INPUTS[:-1]},
                      weight_bytes(vla.vision_encoder) + weight_bytes(vla.projector) + weight_bytes(vla.backbone)),
            GraphSpec("denoise_step", step, (pad, example["state"], example["noise"], t, *kv),
                      ["prefix_pad", "state", "x_t", "t", *past], ["velocity"], step_shapes,
                      weight_bytes(vla.action_head) + (weight_bytes(vla.proprio_projector)
                                                       if vla.proprio_projector is not None else 0))]
