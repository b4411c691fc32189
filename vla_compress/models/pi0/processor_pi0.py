"""π0 / π0.5 observation and action processing: LeRobot's policy_preprocessor.json /
policy_postprocessor.json (and their statistics files), the PaliGemma tokenizer, and the image
preprocessing of PI0Policy._preprocess_images.

Pipelines LeRobot 0.6 writes (registry names; every other step is refused by name):
  π0   pre:  rename_observations_processor, to_batch_processor, pi0_new_line_processor,
             tokenizer_processor, device_processor, relative_actions_processor, normalizer_processor
  π0.5 pre:  rename_observations_processor, to_batch_processor, relative_actions_processor,
             normalizer_processor, pi05_prepare_state_tokenizer_processor_step, tokenizer_processor,
             device_processor
  post:      unnormalizer_processor, absolute_actions_processor, device_processor
Relative actions (relative_actions_processor / absolute_actions_processor "enabled": true, LeRobot's
use_relative_actions): the model predicts a chunk relative to the raw (unnormalised) state of the
observation it was predicted from, a_abs = unnormalize(a_rel) + mask * state[:action_dim], the same
offset for every step of the chunk (openpi's semantics; LeRobot's select_action queue re-adds the
state of each later tick instead, which its own rollout code calls drift). The mask: every action
dimension, except those whose `action_names` entry contains one of `exclude_joints` (lower-cased
substring; the gripper by default); no names: every dimension. The processor keeps the raw states of
its last call and `unnormalize_actions` adds them back. π0.5's prompt: the normalised state (the normalizer must come first)
is cut into 256 bins over [-1, 1] (np.digitize(s, linspace(-1, 1, 257)[:-1]) - 1) and written as
"Task: {task}, State: {b1 b2 ...};\\nAction: " (task stripped, "_" and "\\n" -> " ").

The PaliGemma tokenizer is never downloaded: `tokenizer.json` (+ tokenizer_config.json) is read from
the first of: the `tokenizer_path` given to the loader; $VLA_COMPRESS_PALIGEMMA_TOKENIZER; the
checkpoint's `tokenizer/` folder (written by vla-compress when it saves); the step's
`tokenizer_name` as a local folder (absolute, or relative to the checkpoint); the Hugging Face hub
cache snapshot of that name. Prompts get <bos> (Gemma's add_bos_token) and are padded on the right
with <pad> to `max_length`.

Images (HxWx3 uint8, or float in [0, 1]) are resized to image_resolution keeping the aspect ratio
(bilinear, clamped to [0, 1]) and padded with black *centred* (openpi), then scaled to [-1, 1].
Cameras are ordered as LeRobot does: the configured cameras given, in config order, then one
all -1 image (masked out) per configured camera not given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import CheckpointError, ObservationError
from ..lerobot_layout import FeatureNormalizer
from ..lerobot_layout import normalizer_from_step as _normalizer
from .configuration_pi0 import DEFAULT_TOKENIZER, Pi0Config

PREPROCESSOR, POSTPROCESSOR = "policy_preprocessor.json", "policy_postprocessor.json"
TOKENIZER_SUBDIR = "tokenizer"
TOKENIZER_ENV = "VLA_COMPRESS_PALIGEMMA_TOKENIZER"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")
NO_OP_STEPS = ("to_batch_processor", "device_processor")
PRE_STEPS = ("rename_observations_processor", "pi0_new_line_processor", "tokenizer_processor",
             "relative_actions_processor", "normalizer_processor", "pi05_prepare_state_tokenizer_processor_step")
POST_STEPS = ("unnormalizer_processor", "absolute_actions_processor")
STATE_BINS = 256


# --------------------------------------------------------------------------------------- tokenizer
def _hub_snapshots(repo_id: str) -> list[Path]:
    if repo_id.count("/") != 1:
        return []
    caches = [Path(os.environ[v]) for v in ("HF_HUB_CACHE",) if os.environ.get(v)]
    caches += [Path(os.environ["HF_HOME"]) / "hub"] if os.environ.get("HF_HOME") else []
    caches.append(Path.home() / ".cache" / "huggingface" / "hub")
    found = []
    for cache in caches:
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        if (repo / "refs" / "main").is_file():
            found.append(repo / "snapshots" / (repo / "refs" / "main").read_text().strip())
        if (repo / "snapshots").is_dir():
            found += sorted(p for p in (repo / "snapshots").iterdir() if p.is_dir())
    return found


def resolve_tokenizer_dir(root: Path, name: str, tokenizer_path: str | Path | None = None) -> Path:
    """The local folder holding the PaliGemma tokenizer (see the module docstring)."""
    if tokenizer_path is not None:
        candidates = [Path(tokenizer_path)]
    else:
        local = Path(name).expanduser()
        candidates = ([Path(os.environ[TOKENIZER_ENV])] if os.environ.get(TOKENIZER_ENV) else [])
        candidates += [root / TOKENIZER_SUBDIR, local if local.is_absolute() else root / local, local,
                       *_hub_snapshots(name)]
    for c in candidates:
        if (c / "tokenizer.json").is_file():
            return c
    raise CheckpointError(root / PREPROCESSOR, f"the PaliGemma tokenizer {name!r} (its tokenizer.json) is not "
                                               f"available locally; tried {', '.join(map(str, candidates))}. "
                                               f"Nothing is downloaded: pass tokenizer_path=<folder with "
                                               f"tokenizer.json and tokenizer_config.json> (e.g. the files of "
                                               f"{DEFAULT_TOKENIZER}) or set ${TOKENIZER_ENV} to that folder")


class PaliGemmaTokenizer:
    """tokenizer.json with Gemma's special-token rules and LeRobot's tokenizer-step settings."""

    def __init__(self, folder: Path, max_length: int, padding: str = "max_length", padding_side: str = "right",
                 truncation: bool = True):
        from tokenizers import Tokenizer

        from ...fileio import read_json

        file = folder / "tokenizer.json"
        try:
            self.tok = Tokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise CheckpointError(file, f"not a valid tokenizer: {e}") from None
        conf = read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
        conf = conf if isinstance(conf, dict) else {}

        def token(key: str, default: str) -> str:
            v = conf.get(key, default)
            return v.get("content", default) if isinstance(v, dict) else (v or default)

        self.bos_id = self.tok.token_to_id(token("bos_token", "<bos>"))
        self.pad_id = self.tok.token_to_id(token("pad_token", "<pad>"))
        self.eos_id = self.tok.token_to_id(token("eos_token", "<eos>"))
        if self.pad_id is None or self.bos_id is None:
            raise CheckpointError(file, "the tokenizer has no <pad> / <bos> token (PaliGemma's are needed)")
        if padding not in ("max_length", "longest") or padding_side not in ("left", "right"):
            raise CheckpointError(file, f"unsupported padding {padding!r} / padding_side {padding_side!r}")
        self.add_bos, self.add_eos = bool(conf.get("add_bos_token", True)), bool(conf.get("add_eos_token", False))
        self.max_length, self.padding, self.padding_side, self.truncation = max_length, padding, padding_side, truncation
        self.folder = folder
        # kept in memory: a save writes them as the checkpoint's tokenizer/ after the folder is gone
        self._files = {n: (folder / n).read_bytes() for n in TOKENIZER_FILES if (folder / n).is_file()}

    def ids(self, text: str) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=True).ids
        if self.add_bos and (not ids or ids[0] != self.bos_id):
            ids = [self.bos_id] + ids
        if self.add_eos and self.eos_id is not None and (not ids or ids[-1] != self.eos_id):
            ids = ids + [self.eos_id]
        return ids[: self.max_length] if self.truncation else ids

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, T) int64 and attention mask (B, T) bool."""
        rows = [self.ids(t) for t in texts]
        n = self.max_length if self.padding == "max_length" else max(len(r) for r in rows)
        n = max(n, max(len(r) for r in rows))
        ids = torch.full((len(rows), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), n, dtype=torch.bool)
        for i, r in enumerate(rows):
            sl = slice(0, len(r)) if self.padding_side == "right" else slice(n - len(r), n)
            ids[i, sl], mask[i, sl] = torch.tensor(r, dtype=torch.long), True
        return ids, mask

    def files(self) -> dict[str, bytes]:
        return dict(self._files)


# -------------------------------------------------------------------------------------- pipelines
@dataclass
class ProcessorSettings:
    """What the two pipeline files configure."""

    normalizer: FeatureNormalizer
    unnormalizer: FeatureNormalizer
    tokenizer: dict  # tokenizer_processor config (max_length, padding, padding_side, truncation, tokenizer_name)
    rename_map: dict[str, str] = field(default_factory=dict)
    newline: bool = False  # pi0_new_line_processor present
    state_prompt: bool = False  # pi05_prepare_state_tokenizer_processor_step present
    relative_mask: np.ndarray | None = None  # relative actions: which action dims carry the state offset


def relative_mask(conf: dict, action_dim: int) -> np.ndarray:
    """LeRobot's relative-action mask: True (relative) unless the dimension's name contains an
    excluded joint name (case-insensitive); names missing or shorter than action_dim: relative."""
    names = conf.get("action_names")
    exclude = [str(t).lower() for t in conf.get("exclude_joints") or []]
    mask = np.ones(action_dim, dtype=bool)
    if names and exclude:
        for i, n in enumerate(list(names)[:action_dim]):
            mask[i] = not any(t in str(n).lower() for t in exclude)
    return mask


def _steps(file: Path) -> list[dict]:
    from ...fileio import read_json

    if not file.is_file():
        raise CheckpointError(file, "file not found: checkpoints from LeRobot < 0.4 (normalisation inside "
                                    "model.safetensors) are not supported; re-save with LeRobot's "
                                    "migrate_policy_normalization")
    pipeline = read_json(file)
    steps = pipeline.get("steps") if isinstance(pipeline, dict) else None
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise CheckpointError(file, "expected {'steps': [{registry_name, config}, ...]}")
    return steps


def read_pipelines(root: Path, cfg: Pi0Config) -> ProcessorSettings:
    """Parse policy_preprocessor.json / policy_postprocessor.json (and their statistics) in `root`."""
    pre_file, post_file = root / PREPROCESSOR, root / POSTPROCESSOR
    tokenizer = {"max_length": cfg.tokenizer_max_length, "padding": "max_length", "padding_side": "right",
                 "truncation": True, "tokenizer_name": DEFAULT_TOKENIZER}
    found: dict = {"rename_map": {}, "newline": False, "state_prompt": False, "relative": {}}
    seen: list[str] = []
    for file, known in ((pre_file, PRE_STEPS), (post_file, POST_STEPS)):
        for i, step in enumerate(_steps(file)):
            name = step.get("registry_name") or step.get("class")
            conf = step.get("config") or {}
            if name == "device_processor" and conf.get("float_dtype") not in (None, "float32"):
                raise CheckpointError(file, f"step {i} ({name!r}) with float_dtype={conf['float_dtype']!r} (inputs "
                                            "cast before normalisation) is not supported")
            if name in NO_OP_STEPS:
                continue
            if name not in known:
                raise CheckpointError(file, f"step {i} ({name!r}) is not supported; supported steps: "
                                            f"{', '.join(known + NO_OP_STEPS)}")
            seen.append(name)
            if name in ("relative_actions_processor", "absolute_actions_processor"):
                found["relative"][name] = (bool(conf.get("enabled")), conf, file)
            elif name == "tokenizer_processor":
                tokenizer.update({k: conf[k] for k in ("max_length", "padding", "padding_side", "truncation",
                                                       "tokenizer_name") if k in conf})
            elif name == "rename_observations_processor":
                found["rename_map"] = dict(conf.get("rename_map") or {})
            elif name == "pi0_new_line_processor":
                found["newline"] = True
            elif name == "pi05_prepare_state_tokenizer_processor_step":
                if "normalizer_processor" not in seen:
                    raise CheckpointError(file, f"step {i} ({name!r}) comes before normalizer_processor: it "
                                                "discretises the normalised state, this order is not supported")
                found["state_prompt"] = True
            else:
                found[name] = norm = _normalizer(step, root, file)
                only = conf.get("normalize_observation_keys")
                if only is not None:  # observations outside the list stay as given (actions are not observations)
                    for key, kind in norm.features.items():
                        if kind != "ACTION" and key not in only:
                            norm.stats.pop(key, None)
    if "normalizer_processor" not in found or "unnormalizer_processor" not in found:
        raise CheckpointError(pre_file, "needs a normalizer_processor step (and the postprocessor an "
                                        "unnormalizer_processor step)")
    return ProcessorSettings(found["normalizer_processor"], found["unnormalizer_processor"], tokenizer,
                             found["rename_map"], found["newline"], found["state_prompt"],
                             _relative_actions(found["relative"], cfg, pre_file, post_file))


def _relative_actions(steps: dict, cfg: Pi0Config, pre_file: Path, post_file: Path) -> np.ndarray | None:
    """The relative-action mask when the pipelines turn relative actions on (both steps enabled), else
    None; one step enabled without the other would add back an offset never removed (or the reverse)."""
    rel = steps.get("relative_actions_processor", (False, {}, pre_file))
    ab = steps.get("absolute_actions_processor", (False, {}, post_file))
    if rel[0] != ab[0]:
        on, off = (rel, ab) if rel[0] else (ab, rel)
        name = {pre_file: "relative_actions_processor", post_file: "absolute_actions_processor"}
        raise CheckpointError(on[2], f"{name[on[2]]} is enabled but {name[off[2]]} in {off[2].name} is not: "
                                     "the actions would be offset by the state one way only")
    if not rel[0]:
        return None
    if cfg.state_dim < cfg.action_dim:
        raise CheckpointError(pre_file, f"relative actions pair state and action dimensions by index, but the state "
                                        f"has {cfg.state_dim} values and the action {cfg.action_dim}")
    return relative_mask(rel[1], cfg.action_dim)


# ------------------------------------------------------------------------------------------ images
def resize_with_pad_centered(img: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> (B, C, height, width): bilinear resize by one ratio so the image
    fits, clamp to [0, 1], zero padding split evenly (the odd pixel at the bottom / right)."""
    h, w = img.shape[-2:]
    ratio = max(w / width, h / height)
    rh, rw = int(h / ratio), int(w / ratio)
    out = F.interpolate(img, size=(rh, rw), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    top, left = (height - rh) // 2, (width - rw) // 2
    return F.pad(out, (left, width - rw - left, top, height - rh - top), value=0.0)


def discretize_state(state: np.ndarray) -> np.ndarray:
    """π0.5's state bins: 256 bins over [-1, 1] (values outside fall to -1 / 255, as LeRobot's)."""
    return np.digitize(state, bins=np.linspace(-1, 1, STATE_BINS + 1)[:-1]) - 1


def state_prompt(task: str, bins: np.ndarray) -> str:
    cleaned = task.strip().replace("_", " ").replace("\n", " ")
    return f"Task: {cleaned}, State: {' '.join(map(str, bins))};\nAction: "


# --------------------------------------------------------------------------------------- processor
class Pi0Processor:
    """Observations -> {pixel_values (B, N, 3, S, S), image_masks (B, N), lang_tokens (B, T),
    lang_masks (B, T), state (B, max_state_dim)}; actions back to robot units."""

    def __init__(self, cfg: Pi0Config, tokenizer: PaliGemmaTokenizer, settings: ProcessorSettings):
        self.cfg, self.tokenizer, self.settings = cfg, tokenizer, settings
        names = {f.camera: f.key for f in cfg.image_features}  # incoming camera name -> feature key
        keys = set(names.values())
        for src, dst in settings.rename_map.items():
            if dst in keys:
                for prefix in ("observation.images.", "observation."):
                    if src.startswith(prefix):
                        names[src[len(prefix):]] = dst
                        break
        self.camera_names = names
        self.last_raw_state: np.ndarray | None = None  # (B, state_dim) of the last call, robot units

    def _image(self, im, cam: str) -> torch.Tensor:
        a = np.asarray(im)
        if a.ndim != 3 or a.shape[-1] != 3:
            raise ObservationError(f"camera {cam!r}: expected an HxWx3 image, got shape {a.shape}")
        t = torch.from_numpy(a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32))
        return t.permute(2, 0, 1)

    def images(self, observations: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        by_key = []
        for obs in observations:
            given = obs.get("images") or {}
            unknown = [c for c in given if c not in self.camera_names]
            if unknown:
                raise ObservationError(f"unknown camera(s) {unknown}; this model takes {sorted(self.camera_names)}")
            by_key.append({self.camera_names[c]: im for c, im in given.items()})
        if any(d.keys() != by_key[0].keys() for d in by_key):
            raise ObservationError("every observation in a batch must carry the same cameras")
        present = [f for f in self.cfg.image_features if f.key in by_key[0]]
        if not present:
            raise ObservationError(f"no camera given; this model takes {sorted(self.camera_names)}")
        s, b = self.cfg.image_size, len(observations)
        imgs = []
        for f in present:
            batch = torch.stack([self._image(d[f.key], f.camera) for d in by_key])
            if batch.shape[-2:] != (s, s):
                batch = resize_with_pad_centered(batch, s, s)
            imgs.append(batch * 2.0 - 1.0)
        n_missing = len(self.cfg.image_features) - len(present)
        masks = [torch.ones(b, dtype=torch.bool)] * len(imgs) + [torch.zeros(b, dtype=torch.bool)] * n_missing
        imgs += [torch.full_like(imgs[0], -1.0)] * n_missing
        return torch.stack(imgs, dim=1), torch.stack(masks, dim=1)

    def raw_state(self, observations: list[dict]) -> np.ndarray:
        """(B, state_dim) float32 states in robot units, checked against the state feature."""
        feat = self.cfg.state_feature
        rows = []
        for obs in observations:
            if obs.get("state") is None:
                raise ObservationError(f"observation has no 'state' (this model takes {feat.shape[0]} values)")
            s = np.asarray(obs["state"], dtype=np.float32).reshape(-1)
            if s.shape != feat.shape:
                raise ObservationError(f"state has {s.shape[0]} values, expected {feat.shape[0]}")
            rows.append(s)
        return np.stack(rows)

    def normalized_state(self, observations: list[dict], raw: np.ndarray | None = None) -> torch.Tensor:
        raw = self.raw_state(observations) if raw is None else raw
        return self.settings.normalizer(self.cfg.state_feature.key, torch.from_numpy(raw.copy()))

    def prompts(self, observations: list[dict], state: torch.Tensor) -> list[str]:
        for obs in observations:
            if not isinstance(obs.get("instruction"), str):
                raise ObservationError("every observation needs an 'instruction' string")
        tasks = [o["instruction"] for o in observations]
        if self.settings.state_prompt:
            bins = discretize_state(state.numpy())
            return [state_prompt(t, bins[i]) for i, t in enumerate(tasks)]
        if self.settings.newline:
            return [t if t.endswith("\n") else t + "\n" for t in tasks]
        return tasks

    def __call__(self, observations: list[dict]) -> dict[str, torch.Tensor]:
        if not observations:
            raise ObservationError("no observations given")
        pixels, masks = self.images(observations)
        raw = self.raw_state(observations)
        self.last_raw_state = raw  # what relative actions are offset by (unnormalize_actions)
        state = self.normalized_state(observations, raw)
        ids, lang_mask = self.tokenizer(self.prompts(observations, state))
        return {"pixel_values": pixels, "image_masks": masks, "lang_tokens": ids, "lang_masks": lang_mask,
                "state": F.pad(state, (0, self.cfg.max_state_dim - state.shape[1]))}

    def unnormalize_actions(self, chunk: np.ndarray) -> np.ndarray:
        key = self.cfg.action_feature.key  # type: ignore[union-attr]
        out = self.settings.unnormalizer(key, torch.as_tensor(np.asarray(chunk, dtype=np.float32)), inverse=True)
        out = out.numpy().astype(np.float32)
        mask = self.settings.relative_mask
        if mask is None:
            return out
        state = self.last_raw_state
        if state is None:
            raise ObservationError("relative actions: no state to add back (preprocess the observation the chunk "
                                   "was predicted from first)")
        rows = state[:, None, :] if out.ndim == 3 else state
        if out.ndim not in (2, 3) or (out.ndim == 2 and len(state) != 1) or (out.ndim == 3 and len(out) != len(state)):
            raise ObservationError(f"relative actions: a chunk of shape {out.shape} does not match the last "
                                   f"preprocessed batch of {len(state)} observation(s)")
        return (out + rows[..., : mask.size] * mask).astype(np.float32)
