"""Observation -> model inputs for the reference family (and its I/O contract).

Images: HxWx3 uint8 from each configured camera (stacked on the channel axis in config order), resized to the model's resolution if needed,
scaled to [-1, 1] (SigLIP's mean=std=0.5). Instruction: formatted with OpenVLA's prompt and
tokenized. State: normalised with the checkpoint's proprio statistics.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import ObservationError
from ..base import Normalizer
from ..tokenizer import InstructionTokenizer
from .configuration_reference import ReferenceConfig


class ReferenceProcessor:
    def __init__(self, cfg: ReferenceConfig, tokenizer: InstructionTokenizer, state_norm: Normalizer):
        self.cfg, self.tokenizer, self.state_norm = cfg, tokenizer, state_norm
        self._prompt_cache: dict[str, list[int]] = {}

    def prompt_ids(self, instruction: str) -> list[int]:
        ids = self._prompt_cache.get(instruction)
        if ids is None:
            ids = self.tokenizer.encode(self.cfg.prompt_template.format(instruction=instruction.lower().strip()))
            self._prompt_cache[instruction] = ids
        return ids

    def images(self, frames: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 for one camera, or (B, cameras, H, W, 3) -> (B, 3 * cameras, S, S)
        float in [-1, 1]."""
        n = self.cfg.vision.num_cameras
        if frames.ndim == 4 and n == 1:
            frames = frames[:, None]
        if frames.ndim != 5 or frames.shape[1] != n or frames.shape[-1] != 3:
            raise ObservationError(f"expected {n} camera image(s) of shape (H, W, 3) per observation, "
                                   f"got an array of shape {frames.shape[1:]}")
        b, _, h, w, _ = frames.shape
        x = torch.from_numpy(np.ascontiguousarray(frames)).reshape(b * n, h, w, 3)
        x = x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        s = self.cfg.vision.image_size
        if x.shape[-1] != s or x.shape[-2] != s:
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return x.reshape(b, n * 3, s, s)

    def text(self, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompt ids and mask (padding is masked out and takes no position)."""
        ids = [self.prompt_ids(t) for t in instructions]
        n = max(len(i) for i in ids)
        out = torch.full((len(ids), n), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), n), dtype=torch.long)
        for r, i in enumerate(ids):
            out[r, n - len(i):] = torch.tensor(i)
            mask[r, n - len(i):] = 1
        return out, mask

    def __call__(self, observations: list[dict]) -> dict[str, torch.Tensor]:
        cams = self.cfg.vision.cameras
        frames, states, texts = [], [], []
        for obs in observations:
            images = obs.get("images", {})
            missing = [c for c in cams if c not in images]
            if missing:
                raise ObservationError(f"observation has no image from camera(s) {missing} (has {sorted(images)}); "
                                       f"the model reads {list(cams)}")
            per_cam = [np.asarray(images[c]) for c in cams]
            for c, f in zip(cams, per_cam):
                if f.ndim != 3 or f.shape[-1] != 3:
                    raise ObservationError(f"camera {c!r}: expected an image of shape (H, W, 3), got {f.shape}")
            if len({f.shape for f in per_cam}) != 1:
                raise ObservationError(f"the cameras' images must share a shape, got "
                                       f"{ {c: f.shape for c, f in zip(cams, per_cam)} }")
            frames.append(np.stack(per_cam))
            state = np.asarray(obs.get("state", np.zeros(self.cfg.proprio_dim)), dtype=np.float32).reshape(-1)
            if state.shape[0] != self.cfg.proprio_dim:
                raise ObservationError(f"state has {state.shape[0]} values, the model expects {self.cfg.proprio_dim}")
            states.append(self.state_norm.normalize(state))
            texts.append(str(obs.get("instruction", "")))
        if len({f.shape for f in frames}) != 1:
            raise ObservationError("images in one batch must share a shape")
        text_ids, text_mask = self.text(texts)
        return {
            "pixel_values": self.images(np.stack(frames)),
            "text_ids": text_ids,
            "text_mask": text_mask,
            "state": torch.from_numpy(np.stack(states)),
        }
