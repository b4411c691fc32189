"""Observation -> model inputs for the reference family (and its I/O contract).

Images: HxWx3 uint8 from the configured camera, resized to the model's resolution if needed,
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
        """(B, H, W, 3) uint8 -> (B, 3, S, S) float in [-1, 1]."""
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ObservationError(f"expected images of shape (H, W, 3), got {frames.shape[1:]}")
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        s = self.cfg.vision.image_size
        if x.shape[-1] != s or x.shape[-2] != s:
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return x

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
        cam = self.cfg.vision.camera
        frames, states, texts = [], [], []
        for obs in observations:
            images = obs.get("images", {})
            if cam not in images:
                raise ObservationError(f"observation has no image from camera {cam!r} (has {sorted(images)})")
            frames.append(np.asarray(images[cam]))
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
