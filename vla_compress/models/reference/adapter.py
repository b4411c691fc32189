"""ReferenceVLA: the reference network plus tokenizer and normalisation, behind the adapter contract.

Checkpoint layout (a directory):
    config.json               ReferenceConfig (model_type "vla-compress-reference", format_version)
    model.safetensors         all weights
    tokenizer.json            the instruction tokenizer (byte-level BPE + 256 action tokens)
    dataset_statistics.json   OpenVLA-style {dataset: {"action": {q01, q99, mask}, "proprio": {...}}}
    training.json             optional: how it was trained (data, steps, seed, time, hardware)
    quantization.json         when quantized: module name -> scheme (checkpoint/quantization.py)
    token_reduction.json      when token-reduced: the visual keep set, ToMe's schedule (checkpoint/tokens.py)
    compression.json          when compressed: the compression log (checkpoint/compression.py)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import CheckpointError, ConfigError
from ...fileio import load_safetensors, read_json, save_safetensors, write_json
from ..common import load_strict  # noqa: F401  (re-exported: older imports name it here)
from ..sidecars import restore_modules, restore_state, save_sidecars
from ..base import ActionSpec, Normalizer, TokenCounts, VLAAdapter
from ..tokenizer import InstructionTokenizer
from .configuration_reference import PRESETS, BackboneConfig, ReferenceConfig, VisionConfig
from .modeling_reference import ReferenceVLAModule
from .processor_reference import ReferenceProcessor

DEFAULT_INSTRUCTION = "pick up the object and place it at the goal"


class ReferenceVLA(ReferenceVLAModule, VLAAdapter):
    family = "reference"
    COMPONENTS = ("vision_encoder", "projector", "backbone", "action_head", "proprio_projector")

    def __init__(self, cfg: ReferenceConfig, tokenizer: InstructionTokenizer, action_norm: Normalizer,
                 state_norm: Normalizer, dataset_name: str = "metaworld_mt10", training: dict | None = None):
        if tokenizer.vocab_size != cfg.backbone.vocab_size:
            raise ConfigError(f"tokenizer has {tokenizer.vocab_size} ids, backbone.vocab_size is {cfg.backbone.vocab_size}")
        super().__init__(cfg)
        self.tokenizer = tokenizer
        self.action_norm = action_norm
        self.dataset_name = dataset_name
        self.training_info = training or {}
        self.processor = ReferenceProcessor(cfg, tokenizer, state_norm)

    @property
    def state_norm(self) -> Normalizer:
        # one copy, owned by the processor that applies it
        return self.processor.state_norm

    @state_norm.setter
    def state_norm(self, value: Normalizer) -> None:
        self.processor.state_norm = value

    # --- contract ------------------------------------------------------------------------------
    @property
    def action_spec(self) -> ActionSpec:
        c = self.cfg
        if c.head == "tokens":
            return ActionSpec(c.action_dim, c.chunk_size, "tokens", n_bins=c.n_bins, tokens_per_step=c.action_tokens)
        return ActionSpec(c.action_dim, c.chunk_size, "regression")

    def token_counts(self, instruction: str | None = None) -> TokenCounts:
        text = 1 + len(self.processor.prompt_ids(instruction or DEFAULT_INSTRUCTION))  # BOS + prompt
        return TokenCounts(visual=self.cfg.visual_tokens, text=text, proprio=1, action=self.cfg.action_tokens)

    def dummy_observation(self, instruction: str | None = None) -> dict:
        s = self.cfg.vision.image_size
        return {"images": {cam: np.zeros((s, s, 3), np.uint8) for cam in self.cfg.vision.cameras},
                "state": np.zeros(self.cfg.proprio_dim, np.float32), "instruction": instruction or DEFAULT_INSTRUCTION}

    def preprocess(self, observations: list[dict]) -> dict:
        return self.processor(observations)

    def predict_chunk(self, inputs: dict) -> torch.Tensor:
        return self.forward(inputs["pixel_values"], inputs["text_ids"], inputs["text_mask"], inputs["state"])

    def unnormalize_actions(self, chunk: np.ndarray) -> np.ndarray:
        return self.action_norm.unnormalize(chunk)

    # --- persistence -----------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_safetensors(self.state_dict(), path / "model.safetensors", metadata={"format": "pt"})
        save_sidecars(self, path)  # quantization.json / token_reduction.json / compression.json, when compressed
        if self.training_info:
            write_json(path / "training.json", self.training_info)
        write_processor_files(self, path)  # config.json last: a directory with it is complete
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, allow_pickle: bool = False, **_: Any) -> "ReferenceVLA":
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(path, "checkpoint directory not found")
        cfg, tokenizer, action_norm, state_norm, name = read_processor_files(path)
        training = read_json(path / "training.json") if (path / "training.json").is_file() else None
        try:
            model = cls(cfg, tokenizer, action_norm, state_norm, dataset_name=name, training=training)
        except ConfigError as e:
            raise CheckpointError(path, str(e)) from None
        restore_modules(model, path)  # quantized modules, before the strict load
        state = load_safetensors(path / "model.safetensors", allow_pickle)  # or, opted in, a lone pytorch_model.bin
        if "visual_keep" in state:  # a token-pruned checkpoint: size the buffer before loading
            model.visual_keep = torch.zeros_like(state["visual_keep"])
        load_strict(model, state, path / "model.safetensors")
        return restore_state(model, path).eval()  # keep set, ToMe schedule, the pass log

    @classmethod
    def build(cls, cfg: ReferenceConfig, tokenizer: InstructionTokenizer | None = None, seed: int = 0,
              action_norm: Normalizer | None = None, state_norm: Normalizer | None = None) -> "ReferenceVLA":
        """A randomly initialised model (seeded) for training or latency work."""
        tokenizer = tokenizer or default_tokenizer()
        if cfg.backbone.vocab_size != tokenizer.vocab_size:
            cfg = replace_backbone(cfg, vocab_size=tokenizer.vocab_size)
        torch.manual_seed(seed)
        an = action_norm or Normalizer(-np.ones(cfg.action_dim), np.ones(cfg.action_dim))
        sn = state_norm or Normalizer(-np.ones(cfg.proprio_dim), np.ones(cfg.proprio_dim))
        return cls(cfg, tokenizer, an, sn).eval()

    @classmethod
    def from_preset(cls, name: str, head: str | None = None, seed: int = 0) -> "ReferenceVLA":
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
        cfg = PRESETS[name]
        if head:
            cfg = ReferenceConfig(**{**cfg.__dict__, "head": head})
        return cls.build(cfg, seed=seed)

    @classmethod
    def tiny(cls, seed: int = 0, head: str = "regression", cameras: tuple[str, ...] = ("corner",),
             **overrides: Any) -> "ReferenceVLA":
        cfg = ReferenceConfig(
            vision=VisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                                cameras=tuple(cameras)),
            backbone=BackboneConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2),
            head=head, chunk_size=2, preset="tiny", **overrides,
        )
        return cls.build(cfg, seed=seed)


def read_processor_files(path: Path) -> tuple[ReferenceConfig, InstructionTokenizer, Normalizer, Normalizer, str]:
    """config.json, tokenizer.json and dataset_statistics.json of a checkpoint or an exported
    artifact: everything needed to pre/post-process without building the network."""
    try:
        cfg = ReferenceConfig.from_dict(read_json(path / "config.json"))
    except ConfigError as e:
        raise CheckpointError(path / "config.json", str(e)) from None
    tokenizer = InstructionTokenizer.from_file(path / "tokenizer.json")
    stats = read_json(path / "dataset_statistics.json")
    if not isinstance(stats, dict) or len(stats) != 1:
        raise CheckpointError(path / "dataset_statistics.json", "expected exactly one dataset entry")
    (name, entry), = stats.items()
    try:
        action_norm, state_norm = Normalizer.from_dict(entry["action"]), Normalizer.from_dict(entry["proprio"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(path / "dataset_statistics.json", f"malformed statistics ({e})") from None
    return cfg, tokenizer, action_norm, state_norm, name


def write_processor_files(vla: "ReferenceVLA", path: Path) -> list[str]:
    """Write what `read_processor_files` reads, from the in-memory model (config.json last)."""
    vla.tokenizer.save(path / "tokenizer.json")
    write_json(path / "dataset_statistics.json", {
        vla.dataset_name: {"action": vla.action_norm.to_dict(), "proprio": vla.state_norm.to_dict()}
    })
    write_json(path / "config.json", vla.cfg.to_dict())
    return ["tokenizer.json", "dataset_statistics.json", "config.json"]


def replace_backbone(cfg: ReferenceConfig, **kw: Any) -> ReferenceConfig:
    return ReferenceConfig(**{**cfg.__dict__, "backbone": BackboneConfig(**{**cfg.backbone.__dict__, **kw})})


_DEFAULT_TOKENIZER: InstructionTokenizer | None = None


def default_tokenizer() -> InstructionTokenizer:
    """The tokenizer trained on every MetaWorld instruction (language-world's 50 descriptions)."""
    global _DEFAULT_TOKENIZER
    if _DEFAULT_TOKENIZER is None:
        from .configuration_reference import PROMPT_TEMPLATE

        try:
            from language_world import TASK_DESCRIPTIONS

            corpus = list(TASK_DESCRIPTIONS.values())
        except ImportError:  # the simulator extra is not installed: a small built-in corpus
            corpus = [DEFAULT_INSTRUCTION, "reach to the target location", "open the door", "push the button"]
        texts = [PROMPT_TEMPLATE.format(instruction=t) for t in corpus]
        _DEFAULT_TOKENIZER = InstructionTokenizer.train(texts, vocab_size=512)
    return _DEFAULT_TOKENIZER




def load_reference(path: str | Path, **kwargs: Any) -> ReferenceVLA:
    """The family spec's loader (`allow_pickle`: read a lone pickle weight file where model.safetensors is missing)."""
    return ReferenceVLA.from_pretrained(path, **kwargs)
