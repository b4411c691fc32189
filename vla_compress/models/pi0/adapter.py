"""π0 / π0.5 behind the adapter contract, loading LeRobot's files unchanged.

A LeRobot π0 / π0.5 checkpoint directory:
    config.json                 "type": "pi0" | "pi05" (configuration_pi0.Pi0Config)
    model.safetensors           every weight, LeRobot's names (model.paligemma_with_expert...,
                                model.action_in_proj, ...); bf16 in published checkpoints, fp32 too
    policy_preprocessor.json    + its normalizer statistics (processor_pi0 lists the steps)
    policy_postprocessor.json   + its unnormalizer statistics
    train_config.json, README.md  carried through a save unchanged
    tokenizer/                  written by vla-compress: the PaliGemma tokenizer files, so a saved
                                checkpoint loads offline (processor_pi0 says where else it is found)

`predict_chunk` returns the whole chunk (B, chunk_size, action_dim), normalised; `act` returns what
LeRobot's select_action executes of it (the first n_action_steps, robot units). The Euler start
noise is `inputs["noise"]` when given (parity, reproducible runs), else drawn from the model's own
torch.Generator (seeded with `noise_seed`, default 0), so two loads act identically. Weights load
in float32 unless `dtype` is given; dtype="config" follows config.json's `dtype` as LeRobot does
(bfloat16: every paligemma_with_expert weight in bf16 but the vision tower, the projector and the
norms, which stay float32; the action/state/time projections float32).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import CheckpointError, ConfigError
from ...fileio import load_safetensors, read_json, save_safetensors, write_json
from ..base import ActionSpec, TokenCounts, VLAAdapter
from ..common import load_strict
from ..sidecars import restore_modules, restore_state, save_sidecars
from ..lerobot_layout import processor_file_names, write_files
from .configuration_pi0 import Pi0Arch, Pi0Config
from .modeling_pi0 import Pi0Module, checkpoint_view
from .processor_pi0 import TOKENIZER_SUBDIR, PaliGemmaTokenizer, Pi0Processor, read_pipelines, resolve_tokenizer_dir

WEIGHTS = "model.safetensors"
SIDE_FILES = ("train_config.json", "README.md")
DEFAULT_INSTRUCTION = "pick up the object and place it at the goal"
EMPTY_CAMERA = "observation.images.empty_camera_"
_PG = "model.paligemma_with_expert.paligemma."
EMBED_KEY, LM_HEAD_KEY = _PG + "model.language_model.embed_tokens.weight", _PG + "lm_head.weight"
EXPERT_LM_HEAD_KEY = "model.paligemma_with_expert.gemma_expert.lm_head.weight"


def read_config(root: Path) -> Pi0Config:
    from .. import detect_family

    family = detect_family(root)
    if family not in ("pi0", "pi05"):
        raise CheckpointError(root / "config.json", f"a {family} checkpoint, not a π0 / π0.5 one")
    try:
        return Pi0Config.from_dict(read_json(root / "config.json"))
    except ConfigError as e:
        raise CheckpointError(root / "config.json", str(e)) from None


def read_processor_files(root: Path, tokenizer_path: str | Path | None = None) -> tuple[Pi0Config, Pi0Processor]:
    """The processor of a checkpoint (or of an artifact carrying the same files), no network built."""
    cfg = read_config(root)
    settings = read_pipelines(root, cfg)
    t = settings.tokenizer
    folder = resolve_tokenizer_dir(root, str(t["tokenizer_name"]), tokenizer_path)
    tokenizer = PaliGemmaTokenizer(folder, int(t["max_length"]), t["padding"], t["padding_side"], bool(t["truncation"]))
    return cfg, Pi0Processor(cfg, tokenizer, settings)


def _embed_layout(state: dict) -> str:
    has_embed, has_head = EMBED_KEY in state, LM_HEAD_KEY in state
    return "both" if has_embed and has_head else "embed_tokens" if has_embed else "lm_head"


class Pi0(Pi0Module, VLAAdapter):
    family = "pi0"
    COMPONENTS = ("vision_encoder", "projector", "backbone", "action_head", "proprio_projector")

    def __init__(self, arch: Pi0Arch, processor: Pi0Processor, files: dict[str, bytes] | None = None,
                 embed_layout: str = "lm_head", expert_lm_head: bool = True, noise_seed: int = 0):
        super().__init__(arch)
        self.cfg = arch.policy
        self.processor = processor
        self.files = dict(files or {})  # processor + side files, carried through save_pretrained
        self.embed_layout = embed_layout
        if embed_layout == "both":
            self.vlm_lm_head = torch.nn.Linear(arch.backbone.width, arch.vocab_size, bias=False)
        if expert_lm_head:
            self.expert_lm_head = torch.nn.Linear(arch.expert.width, arch.vocab_size, bias=False)
        self.noise_seed = noise_seed
        self.noise_generator = torch.Generator(device="cpu").manual_seed(noise_seed)
        self.compression_log: list = []
        self._queue: deque = deque()

    # --- contract ----------------------------------------------------------------------------------
    @property
    def action_spec(self) -> ActionSpec:
        c = self.cfg
        return ActionSpec(c.action_dim, c.chunk_size, "flow", integration_steps=c.num_inference_steps)

    def token_counts(self, instruction: str | None = None) -> TokenCounts:
        """Visual tokens of every camera (missing ones are masked, not removed), the prompt as
        padded by the tokenizer step; π0's state token (in the expert's suffix) counts as proprio."""
        visual = self.visual_keep.numel() or len(self.cfg.image_features) * self.arch.tokens_per_image
        obs = self.dummy_observation(instruction)
        state = self.processor.normalized_state([obs])
        text = self.processor.tokenizer(self.processor.prompts([obs], state))[0].shape[1]
        return TokenCounts(visual=visual, text=text, proprio=0 if self.arch.adaptive else 1,
                           action=self.cfg.chunk_size)

    def dummy_observation(self, instruction: str | None = None) -> dict:
        """A valid all-zero observation: every configured camera at its feature shape (not LeRobot's
        `empty_camera_*` slots, which are always masked -1 images), the state."""
        s = self.cfg.image_size
        images = {f.camera: np.zeros((f.shape[1], f.shape[2], 3) if len(f.shape) == 3 else (s, s, 3), np.uint8)
                  for f in self.cfg.image_features if not f.key.startswith(EMPTY_CAMERA)}
        return {"images": images, "instruction": instruction or DEFAULT_INSTRUCTION,
                "state": np.zeros(self.cfg.state_dim, np.float32)}

    def preprocess(self, observations: list[dict]) -> dict:
        return self.processor(observations)

    def _model_inputs(self, inputs: dict) -> dict:
        w = self.action_head.action_in_proj.weight
        return {k: v.to(w.device, w.dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()}

    def predict_chunk(self, inputs: dict) -> torch.Tensor:
        """(B, chunk_size, action_dim) normalised actions from num_inference_steps Euler steps."""
        inputs = dict(inputs)
        noise = inputs.pop("noise", None)
        inputs = self._model_inputs(inputs)
        if noise is None:
            noise = torch.randn(self.noise_shape(inputs["state"].shape[0]), generator=self.noise_generator,
                                dtype=torch.float32)
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
        self._queue.clear()

    # --- persistence -------------------------------------------------------------------------------
    def side_files(self) -> dict[str, bytes]:
        if any(n.startswith("policy_preprocessor") for n in self.files):
            return dict(self.files)
        from .checkpoint_pi0 import processor_files  # a model built without files (a preset): identity stats

        return {**processor_files(self.cfg.to_dict(), {}), **self.files}

    def state_view(self) -> torch.nn.Module:
        return checkpoint_view(self, self.embed_layout)

    def save_pretrained(self, path: str | Path) -> Path:
        """LeRobot's layout again (config.json last: it marks a complete checkpoint), plus tokenizer/.
        A quantized model's model.safetensors holds its integer weights under the names
        quantization.json lists: vla-compress reloads it, LeRobot's loader would not."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        write_files(self.side_files(), path)
        write_files({f"{TOKENIZER_SUBDIR}/{n}": b for n, b in self.processor.tokenizer.files().items()}, path)
        save_safetensors(self.state_view().state_dict(), path / WEIGHTS, metadata={"format": "pt"})
        save_sidecars(self, path)
        write_json(path / "config.json", self.cfg.to_dict())
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, tokenizer_path: str | Path | None = None,
                        dtype: torch.dtype | str | None = None, noise_seed: int = 0,
                        allow_pickle: bool = False) -> "Pi0":
        """Load a LeRobot π0 / π0.5 directory; `tokenizer_path`: a local folder with the PaliGemma
        tokenizer.json (processor_pi0 lists where it is looked for otherwise; nothing is downloaded)."""
        path = Path(path)
        cfg, processor = read_processor_files(path, tokenizer_path)
        try:
            arch = Pi0Arch.from_config(cfg)
        except ConfigError as e:
            raise CheckpointError(path / "config.json", str(e)) from None
        file = path / WEIGHTS
        if not file.is_file():
            shards = sorted(path.glob("model-*-of-*.safetensors"))
            raise CheckpointError(file, "file not found" + (" (sharded weights are not supported)" if shards else ""))
        from .checkpoint_pi0 import normalize_keys

        try:
            state = normalize_keys(load_safetensors(file), cfg.kind)
        except ValueError as e:
            raise CheckpointError(file, str(e)) from None
        names = processor_file_names(path) + [n for n in SIDE_FILES if (path / n).is_file()]
        files = {n: (path / n).read_bytes() for n in names if (path / n).is_file()}
        from ...checkpoint.layer_sizes import parse_layer_sizes
        from ..sidecars import restore_layer_sizes

        klass = Pi05 if cfg.kind == "pi05" else Pi0
        try:  # structured pruning records per-layer sizes under the config's `vla_compress` key
            sizes = parse_layer_sizes(cfg.settings.get("layer_sizes"), "vla_compress")
            with torch.device("meta"):  # no random init of what the file overwrites
                model = klass(arch, processor, files, _embed_layout(state), EXPERT_LM_HEAD_KEY in state, noise_seed)
                restore_layer_sizes(model, sizes, "vla_compress")
        except ConfigError as e:
            raise CheckpointError(path / "config.json", str(e)) from None
        if dtype not in (None, "config") and not isinstance(dtype, torch.dtype):
            raise ConfigError(f"dtype must be a torch.dtype, None or 'config', got {dtype!r}")
        mixed = dtype == "config" and cfg.dtype == "bfloat16"
        model = model.to(torch.float32 if dtype in (None, "config") else dtype).to_empty(device="cpu")
        restore_modules(model, path)  # quantized modules, before the strict load
        load_strict(model.state_view(), state, file)
        if mixed:
            model.to_lerobot_bfloat16()
        return restore_state(model, path).eval()

    def to_lerobot_bfloat16(self) -> "Pi0":
        """LeRobot's `dtype: bfloat16` model: bf16 inside paligemma_with_expert except the parameters
        whose checkpoint names hold one of its params_to_keep_float32 selectors."""
        from .checkpoint_pi0 import stored_dtype

        for name, p in self.state_view().named_parameters():
            p.data = p.data.to(stored_dtype(name))
        return self

    @classmethod
    def tiny(cls, seed: int = 0, **kwargs: Any) -> "Pi0":
        """A tiny random model, loaded from a tiny checkpoint in LeRobot's layout (kind="pi05" for π0.5)."""
        from .fixtures import write_tiny_pi0

        with tempfile.TemporaryDirectory() as d:
            return cls.from_pretrained(write_tiny_pi0(Path(d) / "tiny", seed=seed, **kwargs))

    @classmethod
    def realistic(cls, kind: str = "pi0", device: str | torch.device = "meta",
                  dtype: torch.dtype = torch.bfloat16) -> "Pi0":
        """lerobot/pi0_base's / pi05_base's architecture (PaliGemma 3B + Gemma 300M expert) on `device`,
        random weights (none on the meta device), identity normalisation, the tiny fixture tokenizer
        (prompts padded to tokenizer_max_length either way)."""
        from .checkpoint_pi0 import base_policy_config, processor_files, write_tiny_tokenizer

        raw = {**base_policy_config(kind)}
        cfg = Pi0Config.from_dict(raw)
        cfg = dataclasses.replace(cfg, preset=f"{kind}-3b")
        with tempfile.TemporaryDirectory() as d:
            root = Path(d)
            write_files(processor_files(raw, {}), root)
            folder = write_tiny_tokenizer(root / TOKENIZER_SUBDIR)
            settings = read_pipelines(root, cfg)
            tokenizer = PaliGemmaTokenizer(folder, cfg.tokenizer_max_length)
        klass = Pi05 if kind == "pi05" else Pi0
        with torch.device(device):
            model = klass(Pi0Arch.from_config(cfg), Pi0Processor(cfg, tokenizer, settings))
        return model.to(dtype).eval()


class Pi05(Pi0):
    """π0.5: the same network with the adaptive-norm expert and the state in the prompt."""

    family = "pi05"
    COMPONENTS = ("vision_encoder", "projector", "backbone", "action_head")


def load_pi0(path: str | Path, **kwargs: Any) -> Pi0:
    """Registry loader (both specs)."""
    return Pi0.from_pretrained(path, **kwargs)


__all__ = ["Pi0", "Pi05", "load_pi0", "read_processor_files"]
