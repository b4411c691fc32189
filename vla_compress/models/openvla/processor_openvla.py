"""Observation -> OpenVLA inputs, and normalised actions -> robot units.

Images follow `preprocessor_config.json` (openvla prismatic/extern/hf/processing_prismatic.py,
PrismaticImageProcessor): per vision branch a PIL resize (bicubic; "resize-naive" to S x S,
"resize-crop" shorter side then centre crop, "letterbox" pad-to-square first), `to_tensor`
(/255) and `normalize` with that branch's mean/std; branches are stacked along channels (6 for
DINOv2+SigLIP) and, for OFT's multi-image input, images after one another (12 for 2 images).
The prompt is tokenized with the checkpoint's own `tokenizer.json`; BOS is prepended and the
empty "▁" token (29871 in Llama-2) appended, as `predict_action` does. The instruction is
lower-cased, as OpenVLA's training data loader and evaluation scripts do.

Statistics are OpenVLA's `norm_stats` (or `dataset_statistics.json`), one entry per dataset;
`unnorm_key` picks the entry. OFT's formulas add 1e-8 to the range and clip the proprio state
after masking (openvla-oft experiments/robot/openvla_utils.py normalize_proprio,
modeling_prismatic.py _unnormalize_actions).

The arithmetic is numpy (`ImageTransform.array`, `OpenVLAProcessor.arrays`); the torch entry points
wrap those arrays, so an exported artifact's processor computes exactly what the torch model sees
without importing torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

from ...errors import CheckpointError, ConfigError, ObservationError
from .configuration_openvla import PROMPT_TEMPLATE

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["DatasetStats", "ImageTransform", "ObservationError", "OpenVLAProcessor", "PromptTokenizer"]


# ---------------------------------------------------------------------------------- tokenizer
class PromptTokenizer:
    """The checkpoint's Llama tokenizer (tokenizer.json via `tokenizers`) and OpenVLA's prompt."""

    def __init__(self, tok, bos_token: str = "<s>", eos_token: str = "</s>", source: Path | None = None):
        self.tok = tok
        self.bos_id = tok.token_to_id(bos_token)
        self.eos_id = tok.token_to_id(eos_token)
        self.empty_id = tok.token_to_id("\u2581")  # "▁": OpenVLA appends it after "Out:" (id 29871)
        if None in (self.bos_id, self.eos_id, self.empty_id):
            raise CheckpointError(source or Path("tokenizer.json"),
                                  f"tokenizer lacks {bos_token!r}, {eos_token!r} or the empty token '\u2581'")
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_dir(cls, path: Path) -> "PromptTokenizer":
        from tokenizers import Tokenizer

        from ...fileio import read_json

        file = path / "tokenizer.json"
        if not file.is_file():
            raise CheckpointError(file, "file not found (a Llama tokenizer.json is required; "
                                        "tokenizer.model alone is not supported)")
        try:
            tok = Tokenizer.from_file(str(file))
        except Exception as e:
            raise CheckpointError(file, f"not a valid tokenizer: {e}") from None
        names = {}
        for fname in ("special_tokens_map.json", "tokenizer_config.json"):
            if (path / fname).is_file():
                d = read_json(path / fname)
                for key in ("bos_token", "eos_token"):
                    v = d.get(key) if isinstance(d, dict) else None
                    v = v.get("content") if isinstance(v, dict) else v
                    if isinstance(v, str):
                        names.setdefault(key, v)
        return cls(tok, names.get("bos_token", "<s>"), names.get("eos_token", "</s>"), source=file)

    def prompt_ids(self, instruction: str) -> list[int]:
        """Token ids after BOS: the prompt, then "▁" unless the prompt already ends with it."""
        ids = self._cache.get(instruction)
        if ids is None:
            text = PROMPT_TEMPLATE.format(instruction=instruction.lower())
            ids = self.tok.encode(text, add_special_tokens=False).ids
            if not ids or ids[-1] != self.empty_id:
                ids = ids + [self.empty_id]
            self._cache[instruction] = ids
        return ids


# ------------------------------------------------------------------------------------- images
class ImageTransform:
    """PrismaticImageProcessor.apply_transform on an HxWx3 uint8 frame (PIL, as the original)."""

    def __init__(self, cfg_dict: dict, source: Path | None = None):
        src = source or Path("preprocessor_config.json")
        try:
            self.sizes = [(int(s[-2]), int(s[-1])) for s in cfg_dict["input_sizes"]]
            self.strategy = cfg_dict.get("image_resize_strategy", "resize-naive")
            norm = cfg_dict.get("tvf_normalize_params")
            means = [p["mean"] for p in norm] if norm else cfg_dict["means"]
            stds = [p["std"] for p in norm] if norm else cfg_dict["stds"]
            self.interp = list(cfg_dict.get("interpolations") or ["bicubic"] * len(self.sizes))
            self.fill = tuple(int(x * 255) for x in cfg_dict["means"][-1]) if self.strategy == "letterbox" else None
        except (KeyError, TypeError, IndexError, ValueError) as e:
            raise CheckpointError(src, f"malformed image processor config ({e!r})") from None
        if self.strategy not in ("resize-naive", "resize-crop", "letterbox"):
            raise CheckpointError(src, f"image_resize_strategy {self.strategy!r} is not supported")
        if not (len(self.sizes) == len(means) == len(stds) == len(self.interp)):
            raise CheckpointError(src, "input_sizes, means/stds and interpolations differ in length")
        self.mean = [np.asarray(m, dtype=np.float32)[:, None, None] for m in means]
        self.std = [np.asarray(s, dtype=np.float32)[:, None, None] for s in stds]
        self.raw = cfg_dict

    def __call__(self, frame: np.ndarray) -> "torch.Tensor":
        import torch

        return torch.from_numpy(self.array(frame))

    def array(self, frame: np.ndarray) -> np.ndarray:
        """(C, S, S) float32: the branches' normalised images stacked along channels."""
        from PIL import Image

        img = Image.fromarray(frame).convert("RGB")
        if self.fill is not None:  # letterbox: symmetric pad to square with the mean colour
            w, h = img.size
            m = max(w, h)
            pw, ph = int((m - w) / 2), int((m - h) / 2)
            padded = Image.new("RGB", (w + 2 * pw, h + 2 * ph), self.fill)
            padded.paste(img, (pw, ph))
            img = padded
        out = []
        for (th, tw), interp, mean, std in zip(self.sizes, self.interp, self.mean, self.std):
            resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}.get(interp, Image.BICUBIC)
            if self.strategy == "resize-naive":
                x = img.resize((tw, th), resample)
            else:  # torchvision Resize(int): shorter side to the size, then centre crop
                w, h = img.size
                s = min(th, tw)
                size = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
                x = img.resize(size, resample)
            w, h = x.size
            top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
            if (top, left, w, h) != (0, 0, tw, th):
                x = x.crop((left, top, left + tw, top + th))
            t = np.asarray(x, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255)
            out.append((t - mean) / std)
        return np.concatenate(out, axis=0)


def center_crop_tf(frame: np.ndarray, crop_scale: float = 0.9) -> np.ndarray:
    """OFT/OpenVLA LIBERO evaluation's centre crop (90% area) resized back to the input size:
    tf.image.crop_and_resize (bilinear) on the image as float in [0, 1], then back to uint8 the way
    tf.image.convert_image_dtype(saturate=True) does (x * 255.5, truncated). Re-implemented from
    TensorFlow's documented kernel; TensorFlow itself is not a dependency."""
    img = frame.astype(np.float32) * np.float32(1.0 / 255.0)
    h, w = img.shape[:2]
    side = np.float32(np.sqrt(np.float32(crop_scale)))
    off = (np.float32(1.0) - side) / np.float32(2.0)
    y1 = x1 = off
    y2 = x2 = off + side

    def grid(lo, hi, n_in, n_out):
        scale = np.float32((hi - lo) * (n_in - 1) / (n_out - 1))
        pos = np.float32(lo * (n_in - 1)) + np.arange(n_out, dtype=np.float32) * scale
        low = np.floor(pos).astype(np.int64)
        return low, np.ceil(pos).astype(np.int64), (pos - low).astype(np.float32)

    t, b, yl = grid(y1, y2, h, h)
    le, r, xl = grid(x1, x2, w, w)
    top = img[t][:, le] + (img[t][:, r] - img[t][:, le]) * xl[None, :, None]
    bot = img[b][:, le] + (img[b][:, r] - img[b][:, le]) * xl[None, :, None]
    out = np.clip(top + (bot - top) * yl[:, None, None], 0.0, 1.0)
    return np.clip(out * np.float32(255.5), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------- statistics
class DatasetStats:
    """norm_stats {dataset: {"action": {...}, "proprio": {...}}} and the chosen `unnorm_key`."""

    def __init__(self, norm_stats: dict, unnorm_key: str | None, normalization: str = "bounds_q99",
                 eps: float = 0.0, source: Path | None = None):
        self.norm_stats, self.normalization, self.eps = norm_stats, normalization, eps
        self.source = source or Path("config.json")
        if unnorm_key is not None and unnorm_key not in norm_stats:
            raise ConfigError(f"unnorm_key {unnorm_key!r} is not in the dataset statistics of {self.source}; "
                              f"choose from: {sorted(norm_stats)}")
        self.unnorm_key = unnorm_key if unnorm_key is not None else (
            next(iter(norm_stats)) if len(norm_stats) == 1 else None)

    def key(self) -> str:
        if self.unnorm_key is None:
            raise ConfigError(f"{self.source} holds statistics for {len(self.norm_stats)} datasets; pass "
                              f"unnorm_key= one of: {sorted(self.norm_stats)}")
        return self.unnorm_key

    def _bounds(self, kind: str, key: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        entry = self.norm_stats[key or self.key()].get(kind)
        lo_name, hi_name = ("q01", "q99") if self.normalization == "bounds_q99" else ("min", "max")
        try:
            lo = np.asarray(entry[lo_name], dtype=np.float64)
            hi = np.asarray(entry[hi_name], dtype=np.float64)
            mask = np.asarray(entry.get("mask", np.ones_like(lo, dtype=bool)), dtype=bool)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(self.source, f"statistics {key or self.key()!r}/{kind} lack {e}") from None
        return lo, hi, mask

    def action_dim(self) -> int | None:
        """Action size of the chosen dataset; with no key, the size all datasets share (else None)."""
        keys = [self.unnorm_key] if self.unnorm_key else list(self.norm_stats)
        dims = {len(self._bounds("action", k)[0]) for k in keys}
        return dims.pop() if len(dims) == 1 else None

    def unnormalize_actions(self, actions: np.ndarray) -> np.ndarray:
        lo, hi, mask = self._bounds("action")
        a = np.asarray(actions, dtype=np.float64)
        if a.shape[-1] != lo.shape[0]:
            raise ObservationError(f"actions have {a.shape[-1]} dims, statistics {self.key()!r} have {lo.shape[0]}")
        return np.where(mask, 0.5 * (a + 1.0) * (hi - lo + self.eps) + lo, a).astype(np.float32)

    def proprio_dim(self) -> int:
        return len(self._bounds("proprio")[0])

    def normalize_proprio(self, state: np.ndarray) -> np.ndarray:
        lo, hi, mask = self._bounds("proprio")
        x = np.asarray(state, dtype=np.float64).reshape(-1)
        if x.shape[0] != lo.shape[0]:
            raise ObservationError(f"state has {x.shape[0]} values, the model expects {lo.shape[0]}")
        return np.clip(np.where(mask, 2.0 * (x - lo) / (hi - lo + 1e-8) - 1.0, x), -1.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------- processor
class OpenVLAProcessor:
    """Batches observations: pixel_values (B, C*n_images, S, S), bos_ids, left-padded text, state."""

    def __init__(self, tokenizer: PromptTokenizer, images: ImageTransform, num_images: int,
                 cameras: tuple[str, ...] | None, stats: DatasetStats | None = None, center_crop: bool = False):
        self.tokenizer, self.images, self.num_images = tokenizer, images, num_images
        self.cameras, self.stats, self.center_crop = cameras, stats, center_crop

    def frames(self, obs: dict) -> list[np.ndarray]:
        images = obs.get("images")
        if not isinstance(images, Mapping) or not images:
            raise ObservationError("observation has no 'images' dict")
        if self.cameras:
            missing = [c for c in self.cameras if c not in images]
            if missing:
                raise ObservationError(f"observation has no image from camera(s) {missing} (has {sorted(images)})")
            frames = [images[c] for c in self.cameras]
        elif len(images) == self.num_images:
            frames = list(images.values())  # insertion order: primary first (OFT: then wrist)
        else:
            raise ObservationError(f"the model takes {self.num_images} image(s) but the observation has "
                                   f"{len(images)} ({sorted(images)}); set cameras= to choose")
        out = []
        for f in frames:
            f = np.asarray(f)
            if f.ndim != 3 or f.shape[-1] != 3 or f.dtype != np.uint8:
                raise ObservationError(f"expected HxWx3 uint8 images, got shape {f.shape} dtype {f.dtype}")
            out.append(center_crop_tf(f) if self.center_crop else f)
        return out

    def __call__(self, observations: list[dict], with_state: bool = False) -> dict[str, "torch.Tensor"]:
        import torch

        return {k: torch.from_numpy(v) for k, v in self.arrays(observations, with_state).items()}

    def arrays(self, observations: list[dict], with_state: bool = False) -> dict[str, np.ndarray]:
        """The batch as numpy arrays (float32 pixels/state, int64 ids and mask)."""
        if not observations:
            raise ObservationError("no observations to preprocess")
        pixels, ids = [], []
        for obs in observations:
            pixels.append(np.concatenate([self.images.array(f) for f in self.frames(obs)], axis=0))
            ids.append(self.tokenizer.prompt_ids(str(obs.get("instruction", ""))))
        n = max(len(i) for i in ids)
        text = np.zeros((len(ids), n), dtype=np.int64)
        mask = np.zeros((len(ids), n), dtype=np.int64)
        for r, i in enumerate(ids):  # left-pad: the last prompt token sits at the same index in every row
            text[r, n - len(i):] = i
            mask[r, n - len(i):] = 1
        out = {"pixel_values": np.stack(pixels), "bos_ids": np.full((len(ids), 1), self.tokenizer.bos_id, np.int64),
               "text_ids": text, "text_mask": mask}
        if with_state:
            states = []
            for obs in observations:
                if obs.get("state") is None:
                    raise ObservationError("this model takes the robot state (proprio) but the observation has none")
                states.append(self.stats.normalize_proprio(obs["state"]))
            out["state"] = np.stack(states)
        return out
