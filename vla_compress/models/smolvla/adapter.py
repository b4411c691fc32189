"""SmolVLA behind the adapter contract, loading LeRobot's files unchanged (checkpoint_smolvla.py).

`predict_chunk` returns the whole flow-matching chunk (B, chunk_size, action_dim), normalised;
`act` returns what LeRobot's `select_action` executes of it: the first `n_action_steps` actions in
robot units; `select_action` / `reset` serve them one at a time from a queue, refilled only when
empty. The Euler start noise comes from `inputs["noise"]` when given (ONNX parity, reproducible
runs), else from the model's own torch.Generator (seeded with `noise_seed`, default 0), so two
loads of a checkpoint act identically.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import CheckpointError, ConfigError, ObservationError
from ...fileio import read_json, save_safetensors, write_json
from ..sidecars import restore_modules, restore_state, save_sidecars
from ..base import ActionSpec, TokenCounts, VLAAdapter
from ..common import load_strict
from . import checkpoint_smolvla as ckpt
from .configuration_smolvla import (SmolVLAArch, SmolVLAConfig, VLMConfig, smolvla_base_config_dict,
                                    smolvlm2_500m_config_dict)
from .modeling_smolvla import SmolVLAModule, checkpoint_view
from .processor_smolvla import (FeatureNormalizer, LanguageTokenizer, ProcessorSettings, SmolVLAProcessor,
                                placeholder_cameras, read_pipelines, with_newline)

DEFAULT_INSTRUCTION = "pick up the object and place it at the goal"
IMAGE_TOKENS = ("<fake_token_around_image>", "<global-img>")


def read_processor_files(root: Path, vlm_path: str | Path | None = None) -> tuple[SmolVLAConfig, SmolVLAProcessor, Path]:
    """The processor of a checkpoint (or of an exported artifact, which carries the same files)
    without building the network: (policy config, processor, VLM directory)."""
    raw = ckpt.read_config(root)
    try:
        cfg = SmolVLAConfig.from_dict(raw)
    except ConfigError as e:
        raise CheckpointError(root / "config.json", str(e)) from None
    vlm_dir = ckpt.resolve_vlm_dir(root, cfg.vlm_model_name, vlm_path)
    settings = read_pipelines(root, cfg)
    t = settings.tokenizer
    tokenizer = LanguageTokenizer.from_dir(vlm_dir, int(t["max_length"]), t["padding"], bool(t["truncation"]),
                                           t["padding_side"])
    return cfg, SmolVLAProcessor(cfg, tokenizer, settings), vlm_dir


def write_processor_files(vla: "SmolVLA", root: Path) -> list[str]:
    """config.json, the pipeline files and their statistics, and vlm/ (config + tokenizer): what
    `read_processor_files` needs. Returns the names written."""
    names = ckpt.write_files(vla.side_files(), root)
    names += ckpt.write_files({f"{ckpt.VLM_SUBDIR}/{n}": b for n, b in vla.vlm_files.items()}, root)
    write_json(root / "config.json", vla.cfg.to_dict())
    return sorted(names + ["config.json"])


class SmolVLA(SmolVLAModule, VLAAdapter):
    family = "smolvla"
    COMPONENTS = ("vision_encoder", "projector", "backbone", "action_head", "proprio_projector")

    def __init__(self, arch: SmolVLAArch, processor: SmolVLAProcessor, files: dict[str, bytes] | None = None,
                 vlm_files: dict[str, bytes] | None = None, noise_seed: int = 0):
        super().__init__(arch)
        self.cfg = arch.policy
        self.processor = processor
        self.files = dict(files or {})  # processor + side files, carried through save_pretrained
        self.vlm_files = dict(vlm_files or {})  # the VLM's config.json / tokenizer files
        self.noise_seed = noise_seed
        self.noise_generator = torch.Generator(device="cpu").manual_seed(noise_seed)
        self._queue: deque = deque()
        if self.cfg.add_image_special_tokens:
            ids = tuple(processor.tokenizer.token_id(t) for t in IMAGE_TOKENS)
            if None in ids:
                raise ConfigError(f"add_image_special_tokens needs tokens {IMAGE_TOKENS} in the VLM tokenizer")
            self.image_token_ids = ids  # type: ignore[assignment]

    # --- contract ----------------------------------------------------------------------------------
    @property
    def action_spec(self) -> ActionSpec:
        c = self.cfg
        return ActionSpec(c.action_dim, c.chunk_size, "flow", integration_steps=c.num_steps)

    def token_counts(self, instruction: str | None = None) -> TokenCounts:
        """Visual tokens for every configured camera (+ empty cameras), the task's tokens as padded
        by the pipeline, one state token; `action`: the chunk's tokens, per Euler step."""
        visual = len(self.cfg.image_features) * self.arch.tokens_per_image
        if self.visual_keep.numel():  # a token-pruned model: the kept ones, and every image special token
            visual = self.visual_keep.numel() + len(self.cfg.image_features) * 3 * self.cfg.add_image_special_tokens
        text = self.processor.tokenizer([with_newline(instruction or DEFAULT_INSTRUCTION)])[0].shape[1]
        return TokenCounts(visual=visual, text=text, proprio=1, action=self.cfg.chunk_size)

    def preprocess(self, observations: list[dict]) -> dict:
        return self.processor(observations)

    def _model_inputs(self, inputs: dict) -> dict:
        w = self.proprio_projector.weight
        return {k: v.to(w.device, w.dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()}

    def predict_chunk(self, inputs: dict) -> torch.Tensor:
        """(B, chunk_size, action_dim) normalised actions from `num_steps` Euler steps."""
        inputs = self._model_inputs(inputs)
        cams = len(self.cfg.image_features)
        if self.visual_keep.numel() and inputs["pixel_values"].shape[1] != cams:
            raise ObservationError(f"this token-pruned SmolVLA's visual keep set spans all {cams} cameras; the "
                                   f"inputs hold {inputs['pixel_values'].shape[1]} (give every camera, or set "
                                   f"empty_cameras)")
        noise = inputs.pop("noise", None)
        if noise is None:
            b = inputs["state"].shape[0]
            noise = torch.randn(self.noise_shape(b), generator=self.noise_generator, dtype=torch.float32)
        return self.sample_actions(inputs, noise.to(inputs["state"].device))[:, :, : self.cfg.action_dim]

    def unnormalize_actions(self, chunk: np.ndarray) -> np.ndarray:
        return self.processor.unnormalize_actions(chunk)

    def act(self, observation: dict) -> np.ndarray:
        """The actions LeRobot's select_action executes of one chunk: (n_action_steps, A), robot units."""
        with torch.inference_mode():
            chunk = self.predict_chunk(self.preprocess([observation]))[0]
        return self.unnormalize_actions(chunk.float().cpu().numpy())[: self.cfg.n_action_steps]

    def select_action(self, observation: dict) -> np.ndarray:
        """One action (A,): a new chunk is predicted only when the queue of n_action_steps is empty."""
        if not self._queue:
            self._queue.extend(self.act(observation))
        return self._queue.popleft()

    def reset(self) -> None:
        """Forget queued actions (call at every episode start)."""
        self._queue.clear()

    def dummy_observation(self, instruction: str | None = None) -> dict:
        """A valid all-zero observation with every configured camera at its feature shape, except
        LeRobot's empty-camera placeholders (no observation has those: they become empty slots)."""
        empty = placeholder_cameras(self.cfg)
        feats = [f for f in self.cfg.image_features if f.key not in empty] or list(self.cfg.image_features)
        obs: dict[str, Any] = {"images": {f.camera: np.zeros((f.shape[1], f.shape[2], 3), np.uint8) for f in feats},
                               "instruction": instruction or DEFAULT_INSTRUCTION}
        if self.cfg.state_feature is not None:
            obs["state"] = np.zeros(self.cfg.state_dim, np.float32)
        return obs

    # --- persistence -------------------------------------------------------------------------------
    def side_files(self) -> dict[str, bytes]:
        if any(n.startswith("policy_preprocessor") for n in self.files):
            return dict(self.files)
        from .fixtures import processor_files  # a model built without files (realistic): identity stats

        return {**processor_files(self.cfg.to_dict(), {}), **self.files}

    def save_pretrained(self, path: str | Path) -> Path:
        """LeRobot's layout again (config.json last: it marks a complete checkpoint), plus vlm/.
        A quantized model's model.safetensors holds its integer weights and scales under the module
        names quantization.json lists: vla-compress reloads it, LeRobot's own loader would not."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        ckpt.write_files(self.side_files(), path)
        ckpt.write_files({f"{ckpt.VLM_SUBDIR}/{n}": b for n, b in self.vlm_files.items()}, path)
        save_safetensors(checkpoint_view(self).state_dict(), path / ckpt.WEIGHTS, metadata={"format": "pt"})
        save_sidecars(self, path)  # quantization.json / token_reduction.json / compression.json, when compressed
        write_json(path / "config.json", self.cfg.to_dict())
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, vlm_path: str | Path | None = None, dtype: torch.dtype | None = None,
                        noise_seed: int = 0, allow_pickle: bool = False) -> "SmolVLA":
        """Load a LeRobot SmolVLA directory (float32 unless `dtype`); `vlm_path`: where the VLM's
        config.json / tokenizer are, when not found as checkpoint_smolvla describes."""
        path = Path(path)
        cfg, processor, vlm_dir = read_processor_files(path, vlm_path)
        vlm_file = vlm_dir / "config.json"
        try:
            vlm = VLMConfig.from_dict(read_json(vlm_file))
        except ConfigError as e:
            raise CheckpointError(vlm_file, str(e)) from None
        try:
            arch = SmolVLAArch(cfg, vlm)
        except ConfigError as e:
            raise CheckpointError(path / "config.json", str(e)) from None
        state, weights_file = ckpt.read_weights(path)
        from ...checkpoint.layer_sizes import parse_layer_sizes
        from ..sidecars import restore_layer_sizes

        try:  # structured pruning records per-layer sizes under the config's `vla_compress` key
            sizes = parse_layer_sizes((cfg.raw.get("vla_compress") or {}).get("layer_sizes"), "vla_compress")
            with torch.device("meta"):  # no random init of what the file overwrites
                model = cls(arch, processor, ckpt.read_side_files(path), ckpt.read_vlm_files(vlm_dir), noise_seed)
                restore_layer_sizes(model, sizes, "vla_compress")
        except ConfigError as e:
            raise CheckpointError(path / "config.json", str(e)) from None
        model = model.to(dtype or torch.float32).to_empty(device="cpu")
        restore_modules(model, path)  # quantized modules, before the strict load
        load_strict(checkpoint_view(model), state, weights_file)
        return restore_state(model, path).eval()  # keep set, ToMe schedule, the pass log

    @classmethod
    def tiny(cls, seed: int = 0, **kwargs: Any) -> "SmolVLA":
        """A tiny random SmolVLA, loaded from a tiny checkpoint (and VLM directory) in the real layout."""
        from .fixtures import write_tiny_smolvla

        with tempfile.TemporaryDirectory() as d:
            return cls.from_pretrained(write_tiny_smolvla(Path(d) / "tiny", seed=seed, **kwargs))

    @classmethod
    def realistic(cls, device: str | torch.device = "meta", dtype: torch.dtype = torch.bfloat16) -> "SmolVLA":
        """SmolVLA-base's architecture (lerobot/smolvla_base config.json, SmolVLM2-500M sizes: 450M
        parameters) on `device`, random weights (none on the meta device), identity normalisation.
        The tokenizer is the tiny fixture one (carried as vlm/ by save_pretrained and exports, so
        those work offline); the prompt is padded to 48 tokens either way."""
        from tokenizers import Tokenizer

        from .fixtures import tiny_vlm_files

        cfg = dataclasses.replace(SmolVLAConfig.from_dict(smolvla_base_config_dict()), preset="smolvla-450m")
        vlm_files = tiny_vlm_files(smolvlm2_500m_config_dict())
        arch = SmolVLAArch(cfg, VLMConfig.from_dict(json.loads(vlm_files["config.json"])))
        identity = lambda feats: FeatureNormalizer({f.key: f.type for f in feats}, dict(cfg.normalization_mapping))  # noqa: E731
        settings = ProcessorSettings(identity(cfg.input_features), identity(cfg.output_features), {}, {})
        tokenizer = LanguageTokenizer(Tokenizer.from_str(vlm_files["tokenizer.json"].decode()), "<|im_end|>",
                                      cfg.tokenizer_max_length, cfg.pad_language_to)
        with torch.device(device):
            model = cls(arch, SmolVLAProcessor(cfg, tokenizer, settings), vlm_files=vlm_files)
        return model.to(dtype).eval()


def load_smolvla(path: str | Path, **kwargs: Any) -> SmolVLA:
    """Registry loader."""
    return SmolVLA.from_pretrained(path, **kwargs)
