"""What the exporters need of SmolVLA (export/family.py's hooks) and its ONNX graph.

One graph, "policy_step", holds the whole policy step with the Euler loop unrolled (num_steps
copies of the action expert reading one prefix K/V computation):
    pixel_values (B, N, 3, S, S), image_masks (B, N) bool, lang_tokens (B, T) int64,
    lang_masks (B, T) bool, state (B, max_state_dim), noise (B, chunk, max_action_dim)
    -> actions (B, chunk, action_dim), normalised
Dynamic axes: batch, cameras, text length. The start noise is an input, so the graph is
deterministic and parity against torch is exact up to float rounding. Runtimes drive it like a
regression head's single graph (head_meta "head": "regression" names that *graph protocol*;
"policy_head": "flow" says what the network is). The artifact's processor draws the noise from a
torch.Generator seeded with the model's `noise_seed` (smolvla_runtime.json), the same stream the
torch adapter draws from, so an ONNX policy and a torch policy started alike act alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..contracts import (PROCESSOR_VERSION, ArtifactProcessor, ExportFamily, GraphSpec, lerobot_normalization,
                         randomized_examples, weight_bytes)
from ...fileio import read_json, write_json

RUNTIME_FILE = "smolvla_runtime.json"
INPUTS = ["pixel_values", "image_masks", "lang_tokens", "lang_masks", "state", "noise"]


class SmolVLAArtifactProcessor(ArtifactProcessor):
    """The checkpoint's own processor, rebuilt from the artifact's files (no network is built)."""

    def __init__(self, root: Path):
        import torch

        from .adapter import read_processor_files

        self.cfg, self.processor, _ = read_processor_files(root)
        runtime = read_json(root / RUNTIME_FILE)
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


def _save_processor(vla: Any, root: Path) -> list[str]:
    from .adapter import write_processor_files

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
    return {"family": vla.family, "head": "regression", "policy_head": "flow", "chunk_size": c.chunk_size,
            "action_dim": c.action_dim, "integration_steps": c.num_steps, "n_action_steps": c.n_action_steps}


def _examples(vla: Any, n: int = 2) -> list[dict]:
    """Random observations with every camera, in-range state and two instructions of different lengths."""
    return randomized_examples(vla, n, ["pick up the object and place it at the goal", "open the door"])


def describe_processor(vla: Any) -> dict:
    """SmolVLA's processor (processor_smolvla.py: LeRobot's pipeline steps, the model's prepare_images)
    as data (models/contracts.py PROCESSOR_VERSION)."""
    from ..lerobot_layout import EMPTY_CAMERA

    c, p = vla.cfg, vla.processor
    st = p.settings
    size = c.image_size()
    cams = [{"name": f.camera, "key": f.key, "height": int(f.shape[1]), "width": int(f.shape[2]),
             "normalization": lerobot_normalization(st.normalizer, f.key)}
            for f in c.image_features if not f.key.startswith(EMPTY_CAMERA)]
    t = st.tokenizer
    out = {
        "version": PROCESSOR_VERSION,
        "images": {"input": "pixel_values", "masks": "image_masks", "cameras": [x["name"] for x in cams],
                   "count": len(cams), "empty_cameras": int(c.empty_cameras),
                   "declared_cameras": len(c.image_features),
                   "frame": "H x W x 3 uint8 RGB (no flip or rotation) -> float (3, H, W) / 255", "center_crop": None,
                   "per_camera": cams,
                   "branches": [{"height": size, "width": size, "scale": 1 / 255, "offset": 0.0}],
                   "steps": ["x / 255", "the camera's normalization (per channel, at the frame's own size)",
                             "bilinear resize (align_corners=False, no antialiasing) keeping the aspect ratio to "
                             "fit height x width, zero padding on the left and top (skipped when already that size)",
                             "x * 2 - 1"],
                   "layout": "float32 (B, N, 3, H, W): the cameras present in config order, then up to empty_cameras "
                             "all -1 images for missing ones; image_masks bool (B, N), false for those"},
        "prompt": {"template": "{instruction}", "instruction": "a trailing newline added unless present",
                   "tokenizer": "vlm/tokenizer.json", "add_special_tokens": True, "append": [], "bos": None,
                   "padding": t["padding_side"], "pad_to": int(t["max_length"]) if t["padding"] == "max_length" else None,
                   "truncate_to": int(t["max_length"]) if t["truncation"] else None, "pad_id": int(p.tokenizer.pad_id),
                   "ids": "lang_tokens", "mask": "lang_masks", "dtype": "ids int64, mask bool"},
        "state": None,
        "actions": {"dim": int(c.action_dim), "chunk_size": int(c.chunk_size), "execute": int(c.n_action_steps),
                    "normalization": lerobot_normalization(st.unnormalizer, c.action_feature.key)},
        "noise": {"input": "noise", "shape": [int(c.chunk_size), int(c.max_action_dim)], "dtype": "float32",
                  "distribution": "standard normal, one draw per policy step (the project's runtime draws it from "
                                  "torch.Generator seeded with smolvla_runtime.json noise_seed)"},
    }
    if c.state_feature is not None:
        out["state"] = {"input": "state", "dim": int(c.state_feature.shape[0]), "pad_to": int(c.max_state_dim),
                        "normalization": lerobot_normalization(st.normalizer, c.state_feature.key)}
    else:
        out["state"] = {"input": "state", "dim": 0, "pad_to": int(c.max_state_dim), "normalization": {"kind": "identity"},
                        "note": "the model reads no state: feed zeros"}
    return out


def export_family() -> ExportFamily:
    return ExportFamily(_save_processor, SmolVLAArtifactProcessor, _torch_outputs, _head_meta, _examples,
                        onnx_graphs=smolvla_graphs, describe=describe_processor)


def smolvla_graphs(vla: Any, example: dict) -> list[GraphSpec]:
    import torch
    from torch import nn
    from torch.export import Dim

    from ...errors import ConfigError

    class PolicyStep(nn.Module):
        def __init__(self, vla):
            super().__init__()
            self.vla = vla

        def forward(self, pixel_values, image_masks, lang_tokens, lang_masks, state, noise):
            inputs = {"pixel_values": pixel_values, "image_masks": image_masks, "lang_tokens": lang_tokens,
                      "lang_masks": lang_masks, "state": state}
            return self.vla.sample_actions(inputs, noise)[:, :, : self.vla.cfg.action_dim]

    b = example["state"].shape[0]
    if b < 2:
        raise ConfigError("ONNX export needs an example batch of >= 2 observations (batch 1 would be baked in)")
    example = dict(example)
    gen = torch.Generator(device="cpu").manual_seed(vla.noise_seed)
    example["noise"] = torch.randn(vla.noise_shape(b), generator=gen, dtype=torch.float32)
    batch = Dim("batch", min=1, max=4096)
    cams = Dim("cameras", min=1, max=64)
    shapes = {"pixel_values": {0: batch, 1: cams}, "image_masks": {0: batch, 1: cams}, "state": {0: batch},
              "noise": {0: batch}}
    if vla.cfg.pad_language_to == "max_length":  # T is the fixed max_length
        shapes.update(lang_tokens={0: batch}, lang_masks={0: batch})
    else:
        text = Dim("text", min=1, max=4096)
        shapes.update(lang_tokens={0: batch, 1: text}, lang_masks={0: batch, 1: text})
    # the exporter pairs dynamic_shapes with forward()'s parameters by position: give them in
    # forward()'s order, by name (a dict built in another order pairs noise's shapes with state's)
    shapes = {name: shapes[name] for name in INPUTS}
    step = PolicyStep(vla).eval()
    return [GraphSpec("policy_step", step, tuple(example[k] for k in INPUTS), list(INPUTS), ["actions"], shapes,
                      weight_bytes(step))]
