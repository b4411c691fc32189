"""Observation -> SmolVLA inputs, and normalised actions -> robot units, from LeRobot's processor files.

The checkpoint's `policy_preprocessor.json` lists LeRobot's steps (rename -> batch -> newline ->
tokenizer -> device -> normalizer); `policy_postprocessor.json` (unnormalizer -> device). What each
one does here, written from LeRobot's processor definitions:
- rename_observations_processor: incoming keys renamed by `rename_map` (cameras here);
- smolvla_new_line_processor: the task gets a trailing "\\n" unless it has one;
- tokenizer_processor: the VLM's tokenizer.json, truncated to `max_length`, padded on the right to
  `max_length` ("max_length") or to the longest task in the batch ("longest");
- normalizer_processor / unnormalizer_processor: per feature *type* a mode (norm_map), per feature
  *key* statistics in `<pipeline>_step_<i>_<name>.safetensors` as "<key>.<stat>":
    MEAN_STD   (x - mean) / (std + eps)        inverse x * std + mean
    MIN_MAX    2 (x - min) / (max - min) - 1   inverse (x + 1) / 2 (max - min) + min
    QUANTILES  / QUANTILE10: the same with q01/q99 / q10/q90 (a zero range becomes eps)
  A feature without statistics in the file passes through unchanged, as in LeRobot (lerobot/
  smolvla_base ships statistics only under robot-prefixed keys, so its state and actions are not
  normalised); `FeatureNormalizer.describe()` says which features that is. `normalize_observation_keys`
  (when the step has it) limits the *observation* features normalised to those keys; the action
  is (un)normalised either way. Image statistics of shape (C,) act per channel, as (C, 1, 1).
- batch / device steps: nothing to do (numpy in, torch on the CPU out).
Images: HxWx3 uint8 (or float already in [0, 1]) -> float (B, 3, H, W) in [0, 1]; the normalizer
step (VISUAL mode, at the camera's own resolution, as LeRobot's preprocessor runs before the model);
then the model's prepare_images: bilinear resize keeping the aspect ratio so it fits
`resize_imgs_with_padding` (width, height), zero padding on the left and top, then x * 2 - 1.
Cameras are taken in config order among those present; up to `empty_cameras` missing ones become
all -1 images with a false mask (LeRobot declares them as `observation.images.empty_camera_<i>`
features that no observation carries). State: normalised, zero-padded to max_state_dim.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import CheckpointError, ObservationError
from ..lerobot_layout import FeatureNormalizer  # noqa: F401  (re-exported)
from ..lerobot_layout import normalizer_from_step as _normalizer
from .configuration_smolvla import SmolVLAConfig

PREPROCESSOR = "policy_preprocessor.json"
POSTPROCESSOR = "policy_postprocessor.json"
NO_OP_STEPS = ("to_batch_processor", "device_processor", "smolvla_new_line_processor")
# --------------------------------------------------------------------------------------- tokenizer
class LanguageTokenizer:
    """The VLM's tokenizer.json with LeRobot's tokenizer-step settings applied."""

    def __init__(self, tok, pad_token: str, max_length: int, padding: str = "max_length", truncation: bool = True,
                 padding_side: str = "right", source: Path | None = None):
        from tokenizers import Tokenizer

        src = source or Path("tokenizer.json")
        self.pad_id = tok.token_to_id(pad_token)
        if self.pad_id is None:
            raise CheckpointError(src, f"tokenizer has no pad token {pad_token!r}")
        if padding not in ("max_length", "longest") or padding_side not in ("left", "right"):
            raise CheckpointError(src, f"unsupported padding {padding!r} / padding_side {padding_side!r}")
        self.raw = tok
        self.max_length, self.padding, self.truncation, self.padding_side = max_length, padding, truncation, padding_side
        self.tok = Tokenizer.from_str(tok.to_str())  # a private copy carrying the pipeline's settings
        if truncation:
            self.tok.enable_truncation(max_length=max_length)
        self.tok.enable_padding(direction=padding_side, pad_id=self.pad_id, pad_token=pad_token,
                                length=max_length if padding == "max_length" else None)
        self.pad_token = pad_token

    @classmethod
    def from_dir(cls, vlm_dir: Path, max_length: int, padding: str = "max_length", truncation: bool = True,
                 padding_side: str = "right") -> "LanguageTokenizer":
        from tokenizers import Tokenizer

        from ...fileio import read_json

        file = vlm_dir / "tokenizer.json"
        if not file.is_file():
            raise CheckpointError(file, "file not found (the VLM's tokenizer.json is required)")
        try:
            tok = Tokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise CheckpointError(file, f"not a valid tokenizer: {e}") from None
        pad = None
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            d = read_json(vlm_dir / name) if (vlm_dir / name).is_file() else {}
            v = d.get("pad_token") if isinstance(d, dict) else None
            v = v.get("content") if isinstance(v, dict) else v
            pad = pad or (v if isinstance(v, str) else None)
        if pad is None:
            raise CheckpointError(vlm_dir / "tokenizer_config.json", "no pad_token (needed to pad the task)")
        return cls(tok, pad, max_length, padding, truncation, padding_side, source=file)

    def token_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, T) int64 and attention mask (B, T) bool."""
        enc = self.tok.encode_batch(texts)
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.bool)
        return ids, mask


def with_newline(task: str) -> str:
    return task if task.endswith("\n") else task + "\n"


# ------------------------------------------------------------------------------------- normaliser
@dataclass
class ProcessorSettings:
    """What the two pipeline files configure."""

    normalizer: FeatureNormalizer
    unnormalizer: FeatureNormalizer
    tokenizer: dict  # tokenizer_processor config (max_length, padding, padding_side, truncation)
    rename_map: dict[str, str]


def read_pipelines(root: Path, cfg: SmolVLAConfig) -> ProcessorSettings:
    """Parse policy_preprocessor.json / policy_postprocessor.json (and their statistics) in `root`."""
    from ...fileio import read_json

    pre_file, post_file = root / PREPROCESSOR, root / POSTPROCESSOR
    if not pre_file.is_file():
        raise CheckpointError(pre_file, "file not found: checkpoints from LeRobot < 0.4 (normalisation inside "
                                        "model.safetensors) are not supported; re-save with LeRobot's "
                                        "migrate_policy_normalization")
    tokenizer = {"max_length": cfg.tokenizer_max_length, "padding": cfg.pad_language_to, "padding_side": "right",
                 "truncation": True}
    rename: dict[str, str] = {}
    found: dict[str, FeatureNormalizer] = {}
    for file, known in ((pre_file, ("normalizer_processor", "tokenizer_processor", "rename_observations_processor")),
                        (post_file, ("unnormalizer_processor",))):
        pipeline = read_json(file)
        steps = pipeline.get("steps") if isinstance(pipeline, dict) else None
        if not isinstance(steps, list):
            raise CheckpointError(file, "expected {'steps': [...]}")
        for i, step in enumerate(steps):
            name = step.get("registry_name") if isinstance(step, dict) else None
            if name in NO_OP_STEPS:
                continue
            if name not in known:
                raise CheckpointError(file, f"step {i} ({name or step.get('class') if isinstance(step, dict) else step!r})"
                                            " is not supported")
            conf = step.get("config") or {}
            if name == "tokenizer_processor":
                tokenizer.update({k: conf[k] for k in ("max_length", "padding", "padding_side", "truncation") if k in conf})
            elif name == "rename_observations_processor":
                rename = dict(conf.get("rename_map") or {})
            else:
                found[name] = _normalizer(step, root, file)
    if "normalizer_processor" not in found or "unnormalizer_processor" not in found:
        raise CheckpointError(pre_file, "needs a normalizer_processor step (and the postprocessor an "
                                        "unnormalizer_processor step)")
    return ProcessorSettings(found["normalizer_processor"], found["unnormalizer_processor"], tokenizer, rename)


# ------------------------------------------------------------------------------------------ images
def resize_with_pad(img: torch.Tensor, height: int, width: int, pad_value: float = 0.0) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, height, width): bilinear resize by one ratio so the image fits, then
    padding on the left and top."""
    h, w = img.shape[-2:]
    if (h, w) == (height, width):
        return img
    ratio = max(w / width, h / height)
    rh, rw = int(h / ratio), int(w / ratio)
    out = F.interpolate(img, size=(rh, rw), mode="bilinear", align_corners=False)
    return F.pad(out, (max(0, width - rw), 0, max(0, height - rh), 0), value=pad_value)


# --------------------------------------------------------------------------------------- processor
def placeholder_cameras(cfg: SmolVLAConfig) -> frozenset[str]:
    """The image features LeRobot's SmolVLAConfig.validate_features adds for `empty_cameras`
    (`observation.images.empty_camera_<i>`): declared, never in an observation."""
    return frozenset(f"observation.images.empty_camera_{i}" for i in range(cfg.empty_cameras))


class SmolVLAProcessor:
    """Observations -> {pixel_values (B, N, 3, S, S), image_masks (B, N), lang_tokens (B, T),
    lang_masks (B, T), state (B, max_state_dim)}; actions back to robot units."""

    def __init__(self, cfg: SmolVLAConfig, tokenizer: LanguageTokenizer, settings: ProcessorSettings):
        self.cfg, self.tokenizer, self.settings = cfg, tokenizer, settings
        self.size = cfg.image_size()
        names: dict[str, str] = {}  # incoming camera name -> config feature key
        for f in cfg.image_features:
            names[f.camera] = f.key
        for src, dst in settings.rename_map.items():
            if dst in {f.key for f in cfg.image_features}:
                for prefix in ("observation.images.", "observation."):
                    if src.startswith(prefix):
                        names[src[len(prefix):]] = dst
                        break
        self.camera_names = names

    def _image(self, im, cam: str) -> torch.Tensor:
        a = np.asarray(im)
        if a.ndim != 3 or a.shape[-1] != 3:
            raise ObservationError(f"camera {cam!r}: expected an HxWx3 image, got shape {a.shape}")
        t = torch.from_numpy(a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32))
        return t.permute(2, 0, 1)

    def images(self, observations: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        by_key = []  # per observation: config feature key -> image
        for obs in observations:
            given = obs.get("images") or {}
            unknown = [c for c in given if c not in self.camera_names]
            if unknown:
                raise ObservationError(f"unknown camera(s) {unknown}; this SmolVLA takes {sorted(self.camera_names)}")
            by_key.append({self.camera_names[c]: im for c, im in given.items()})
        if any(d.keys() != by_key[0].keys() for d in by_key):
            raise ObservationError("every observation in a batch must carry the same cameras")
        present = [f for f in self.cfg.image_features if f.key in by_key[0]]
        if not present:
            raise ObservationError(f"no camera given; this SmolVLA takes {sorted(self.camera_names)}")
        imgs = []
        for f in present:
            batch = torch.stack([self._image(d[f.key], f.camera) for d in by_key])
            batch = self.settings.normalizer(f.key, batch)  # LeRobot's normalizer step, before the model
            if self.cfg.resize_imgs_with_padding is not None:
                batch = resize_with_pad(batch, self.size, self.size)
            elif batch.shape[-2:] != (self.size, self.size):
                raise ObservationError(f"camera {f.camera!r}: images must be {self.size}x{self.size}, "
                                       f"got {tuple(batch.shape[-2:])}")
            imgs.append(batch * 2.0 - 1.0)
        b = len(observations)
        masks = [torch.ones(b, dtype=torch.bool)] * len(imgs)
        n_empty = min(len(self.cfg.image_features) - len(present), self.cfg.empty_cameras)
        imgs += [torch.full_like(imgs[0], -1.0)] * n_empty
        masks += [torch.zeros(b, dtype=torch.bool)] * n_empty
        return torch.stack(imgs, dim=1), torch.stack(masks, dim=1)

    def state(self, observations: list[dict]) -> torch.Tensor:
        feat, n = self.cfg.state_feature, self.cfg.max_state_dim
        if feat is None:
            return torch.zeros(len(observations), n)
        rows = []
        for obs in observations:
            if obs.get("state") is None:
                raise ObservationError(f"observation has no 'state' (this SmolVLA takes {feat.shape[0]} values)")
            s = np.asarray(obs["state"], dtype=np.float32).reshape(-1)
            if s.shape != feat.shape:
                raise ObservationError(f"state has {s.shape[0]} values, expected {feat.shape[0]}")
            rows.append(torch.from_numpy(s.copy()))
        state = self.settings.normalizer(feat.key, torch.stack(rows))
        return F.pad(state, (0, n - state.shape[1]))

    def __call__(self, observations: list[dict]) -> dict[str, torch.Tensor]:
        if not observations:
            raise ObservationError("no observations given")
        pixels, masks = self.images(observations)
        for obs in observations:
            if not isinstance(obs.get("instruction"), str):
                raise ObservationError("every observation needs an 'instruction' string")
        ids, lang_mask = self.tokenizer([with_newline(o["instruction"]) for o in observations])
        return {"pixel_values": pixels, "image_masks": masks, "lang_tokens": ids, "lang_masks": lang_mask,
                "state": self.state(observations)}

    def unnormalize_actions(self, chunk: np.ndarray) -> np.ndarray:
        key = self.cfg.action_feature.key  # type: ignore[union-attr]
        out = self.settings.unnormalizer(key, torch.as_tensor(np.asarray(chunk, dtype=np.float32)), inverse=True)
        return out.numpy().astype(np.float32)
