"""OpenVLA and OpenVLA-OFT behind the adapter contract, loading the original checkpoints unchanged.

`OpenVLA`: the 7-token autoregressive model (openvla/openvla-7b and its fine-tunes).
`OpenVLAOFT`: the same network decoding a K x A chunk in one bidirectional pass through an L1
regression head (moojink/openvla-7b-oft-*), optionally with a proprio token.

Components: vision_encoder = `vision_backbone`, projector, backbone = `language_model.model`,
action_head = `language_model.lm_head` (OpenVLA) or the L1 head (OFT), proprio_projector (OFT).
The component names are aliases of the checkpoint's module names, so state dicts keep the
checkpoint's tensor names; assigning a component (a pass swapping a module) replaces the aliased
module.

What the files do not say, and how we fill it in (written to config.json's `vla_compress` key on
save): OFT's chunk size and image count are constants of its code (prismatic/vla/constants.py,
run_*_eval.py), not in any tensor shape. Given neither by the config nor by a keyword, they
follow OFT's platform table from (action_dim, proprio_dim): LIBERO (7, 8) -> chunk 8, 2 images
(run_libero_eval.py); ALOHA (14, 14) -> chunk 25, 3 images (vla-scripts/deploy.py); Bridge (7, 7)
-> chunk 5 and, as no OFT Bridge script says otherwise, 1 image. Anything else must be given
(`num_actions_chunk=`, `num_images_in_input=`).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import CheckpointError, ConfigError
from ...fileio import read_json, write_json
from ..sidecars import restore_modules, restore_state, save_sidecars
from ..base import ActionSpec, TokenCounts, VLAAdapter
from ..common import load_strict
from . import checkpoint_openvla as ckpt
from .configuration_openvla import OpenVLAConfig, openvla_7b_config_dict, preprocessor_config_dict
from .modeling_openvla import L1RegressionActionHead, OpenVLAModule, ProprioProjector
from .processor_openvla import DatasetStats, ImageTransform, OpenVLAProcessor, PromptTokenizer

DEFAULT_INSTRUCTION = "pick up the object and place it at the goal"
OFT_PLATFORMS = {(7, 8): (8, 2), (14, 14): (25, 3), (7, 7): (5, 1)}  # (A, proprio) -> (chunk, images)
_SETTING_KWARGS = ("cameras", "num_images_in_input", "num_actions_chunk", "unnorm_key", "center_crop", "normalization")


def _alias(path: tuple[str, ...]) -> property:
    return property(lambda self: functools.reduce(getattr, path, self))


class _OpenVLABase(OpenVLAModule, VLAAdapter):
    """What both heads share: I/O, statistics, persistence."""

    _ALIASES: dict[str, tuple[str, ...]] = {"vision_encoder": ("vision_backbone",),
                                            "backbone": ("language_model", "model")}
    STATS_EPS = 0.0
    vision_encoder = _alias(("vision_backbone",))
    backbone = _alias(("language_model", "model"))

    def __init__(self, cfg: OpenVLAConfig, tokenizer: PromptTokenizer, images: ImageTransform,
                 norm_stats: dict | None = None, files: dict[str, bytes] | None = None,
                 stats_source: Path | None = None, num_images: int = 1):
        super().__init__(cfg, num_images)
        self.tokenizer = tokenizer
        self.image_transform = images
        self.stats = DatasetStats(cfg.norm_stats if norm_stats is None else norm_stats, cfg.settings.unnorm_key,
                                  cfg.settings.normalization, self.STATS_EPS, stats_source)
        self.files = dict(files or {})  # side files carried through save_pretrained
        self.processor = OpenVLAProcessor(tokenizer, images, num_images, cfg.settings.cameras, self.stats,
                                          cfg.settings.center_crop)

    def __setattr__(self, name: str, value: Any) -> None:
        path = type(self)._ALIASES.get(name)
        if path is None:
            super().__setattr__(name, value)
        else:  # a pass replacing a component replaces the module the checkpoint names
            setattr(functools.reduce(getattr, path[:-1], self), path[-1], value)

    # --- contract --------------------------------------------------------------------------------
    def preprocess(self, observations: list[dict]) -> dict:
        return self.processor(observations, with_state=self.uses_state)

    def unnormalize_actions(self, chunk: np.ndarray) -> np.ndarray:
        return self.stats.unnormalize_actions(chunk)

    @property
    def uses_state(self) -> bool:
        return False

    def _text_tokens(self, instruction: str | None) -> int:
        return 1 + len(self.tokenizer.prompt_ids(instruction or DEFAULT_INSTRUCTION))  # BOS + prompt + "▁"

    def dummy_observation(self, instruction: str | None = None) -> dict:
        """A valid all-zero observation (for FLOP counting and smoke tests)."""
        n = self.vision_backbone.num_images
        cams = self.cfg.settings.cameras or (("primary", "wrist", "wrist_right")[:n] if n <= 3
                                             else tuple(f"camera_{i}" for i in range(n)))
        s = self.cfg.image_size
        obs = {"images": {c: np.zeros((s, s, 3), np.uint8) for c in cams},
               "instruction": instruction or DEFAULT_INSTRUCTION}
        if self.uses_state:
            obs["state"] = np.zeros(self.proprio_projector.fc1.in_features, np.float32)
        return obs

    def _model_inputs(self, inputs: dict) -> dict:
        """Inputs on the model's device, floating ones in its dtype (bf16 checkpoints, GPU)."""
        w = self.projector.fc1.weight
        return {k: v.to(w.device, w.dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()}

    # --- persistence -----------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, max_shard_bytes: int = 5 * 1024**3) -> Path:
        """The Hugging Face layout again: sharded safetensors + index, side files, OFT .pt parts."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        ckpt.write_passthrough(self.files, path)
        if "tokenizer.json" not in self.files:
            (path / "tokenizer.json").write_text(self.tokenizer.tok.to_str(), encoding="utf-8")
        if "preprocessor_config.json" not in self.files:
            write_json(path / "preprocessor_config.json", self.image_transform.raw)
        parts = {p for p in ckpt.OFT_PARTS if getattr(self, p, None) is not None and p in self._modules}
        main = {k: v for k, v in self.state_dict().items() if k.split(".", 1)[0] not in parts}
        ckpt.write_weights(main, path, max_shard_bytes)
        self._save_parts(path)
        save_sidecars(self, path)  # quantization.json / token_reduction.json / compression.json, when compressed
        write_json(path / "config.json", self.cfg.to_dict())  # last: config.json marks a complete checkpoint
        return path

    def _save_parts(self, path: Path) -> None:
        pass

    @classmethod
    def from_pretrained(cls, path: str | Path, allow_pickle: bool = False, dtype: torch.dtype | None = None,
                        **settings: Any) -> "_OpenVLABase":
        """Load a checkpoint directory. Keywords: unnorm_key, cameras, num_images_in_input,
        num_actions_chunk, center_crop, normalization (override config.json's `vla_compress` key)."""
        path = Path(path)
        if not path.exists():
            raise CheckpointError(path, "checkpoint not found")
        if not path.is_dir():
            raise CheckpointError(path, "expected a checkpoint directory (with config.json)")
        raw = read_json(path / "config.json")
        if not isinstance(raw, dict):
            raise CheckpointError(path / "config.json", "expected a JSON object")
        unknown = set(settings) - set(_SETTING_KWARGS)
        if unknown:
            raise ConfigError(f"unknown OpenVLA loading options {sorted(unknown)}; known: {_SETTING_KWARGS}")
        try:
            cfg = OpenVLAConfig.from_dict(raw)
            given = {k: (tuple(v) if k == "cameras" else v) for k, v in settings.items() if v is not None}
            cfg = cfg.with_settings(**given)
        except ConfigError as e:
            raise CheckpointError(path / "config.json", str(e)) from None
        stats_file = path / "dataset_statistics.json"
        norm_stats = read_json(stats_file) if stats_file.is_file() else None
        if norm_stats is not None and not isinstance(norm_stats, dict):
            raise CheckpointError(stats_file, "expected {dataset: {action: {...}, proprio: {...}}}")
        tokenizer = PromptTokenizer.from_dir(path)
        pre_file = path / "preprocessor_config.json"
        images = ImageTransform(read_json(pre_file), pre_file)
        if any(s != (v.image_size, v.image_size) for s, v in zip(images.sizes, cfg.vision)) \
                or len(images.sizes) != len(cfg.vision):
            raise CheckpointError(pre_file, f"input_sizes {images.sizes} do not match config.json image_sizes")
        ckpt.check_supported_parts(path)
        head_file = ckpt.find_part(path, "action_head")
        if cls is OpenVLAOFT and head_file is None:
            raise CheckpointError(path, "no action_head--*.pt file: not an OpenVLA-OFT checkpoint")
        target = OpenVLAOFT if head_file is not None else OpenVLA
        # the small OFT parts first: a refused pickle fails before gigabytes of shards are read
        parts = {}
        for part in ckpt.OFT_PARTS if head_file is not None else ():
            f = ckpt.find_part(path, part)
            if f is not None:
                parts[part] = (f, *ckpt.read_part(f, allow_pickle))
        common = dict(files=ckpt.read_passthrough(path), norm_stats=norm_stats,
                      stats_source=stats_file if norm_stats is not None else path / "config.json")
        state, weights_file = ckpt.read_weights(path)
        dtype = dtype or next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
        try:
            model = target._load(cfg, tokenizer, images, common, parts, dtype)
        except ConfigError as e:
            raise CheckpointError(path, str(e)) from None
        restore_modules(model, path)  # quantized modules, before the strict load
        load_strict(_WeightsView(model), state, weights_file)
        return restore_state(model, path).eval()  # keep set, ToMe schedule, the pass log

    @classmethod
    def _load(cls, cfg, tokenizer, images, common, parts, dtype) -> "_OpenVLABase":
        """Build the model for `cfg`; `parts` maps OFT part -> (file, state dict, had DDP prefix)."""
        raise NotImplementedError

    @classmethod
    def _materialize(cls, dtype: torch.dtype, *args: Any, **kwargs: Any) -> "_OpenVLABase":
        """Build on the meta device (no 7B random init), then allocate; the weights are loaded next.
        Non-persistent buffers (Llama's rotary inv_freq) are rebuilt since to_empty leaves them unset."""
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        from ..sidecars import restore_layer_sizes

        with torch.device("meta"):
            model = cls(*args, **kwargs)
            restore_layer_sizes(model, model.cfg.settings.layer_sizes, "config.json vla_compress")  # pruned shapes
        model.to(dtype).to_empty(device="cpu")
        lm = model.language_model
        lm.model.rotary_emb = LlamaRotaryEmbedding(config=lm.config)
        return model

    @classmethod
    def realistic(cls, device: str | torch.device = "meta", dtype: torch.dtype = torch.bfloat16,
                  **kwargs: Any) -> "_OpenVLABase":
        """The OpenVLA-7B architecture (exact config.json) on `device` — by default the meta device,
        for FLOP/byte counting without allocating. The tokenizer is the tiny fixture one (the real
        Llama-2 tokenizer is not shipped), so prompt lengths are approximate."""
        from .fixtures import build_tiny_tokenizer

        cfg = OpenVLAConfig.from_dict(openvla_7b_config_dict())
        images = ImageTransform(preprocessor_config_dict(cfg))
        tokenizer = PromptTokenizer(build_tiny_tokenizer())
        with torch.device(device):
            model = cls._realistic(cfg, tokenizer, images, **kwargs)
        return model.to(dtype).eval()

    @classmethod
    def tiny(cls, seed: int = 0, **kwargs: Any) -> "_OpenVLABase":
        """A tiny random model, loaded from a tiny checkpoint written in the real layout."""
        from .fixtures import write_tiny_openvla, write_tiny_openvla_oft

        writer = write_tiny_openvla_oft if cls is OpenVLAOFT else write_tiny_openvla
        load = {k: kwargs.pop(k) for k in _SETTING_KWARGS if k in kwargs}
        if cls is not OpenVLAOFT and "norm_stats" not in kwargs:
            load.setdefault("unnorm_key", "bridge_orig")  # the fixture holds two datasets, as openvla-7b does
        with tempfile.TemporaryDirectory() as d:
            return cls.from_pretrained(writer(Path(d) / "tiny", seed=seed, **kwargs), **load)


class _WeightsView(nn.Module):
    """The modules stored in the safetensors shards (everything but OFT's .pt parts)."""

    def __init__(self, model: OpenVLAModule):
        super().__init__()
        self.vision_backbone, self.projector, self.language_model = (
            model.vision_backbone, model.projector, model.language_model)


class OpenVLA(_OpenVLABase):
    family = "openvla"
    COMPONENTS = ("vision_encoder", "projector", "backbone", "action_head")
    _ALIASES = {**_OpenVLABase._ALIASES, "action_head": ("language_model", "lm_head")}
    action_head = _alias(("language_model", "lm_head"))

    @property
    def action_spec(self) -> ActionSpec:
        dim = self.stats.action_dim()
        if dim is None:
            self.stats.key()  # raises: the datasets disagree and no unnorm_key was chosen
        return ActionSpec(dim, 1, "tokens", n_bins=self.cfg.n_action_bins, tokens_per_step=dim)

    def token_counts(self, instruction: str | None = None) -> TokenCounts:
        visual = self.visual_keep.numel() or self.cfg.patches_per_image
        return TokenCounts(visual=visual, text=self._text_tokens(instruction), proprio=0,
                           action=self.action_spec.tokens_per_step)

    def predict_chunk(self, inputs: dict) -> torch.Tensor:
        """(B, 1, A) normalised actions from A greedily decoded action tokens."""
        dim = self.action_spec.dim
        tokens = self.generate_action_tokens(self._model_inputs(inputs), dim)
        return self.tokens_to_actions(tokens).reshape(tokens.shape[0], 1, dim)

    @classmethod
    def _load(cls, cfg, tokenizer, images, common, parts, dtype) -> "OpenVLA":
        if cfg.settings.num_images_in_input not in (None, 1):
            raise ConfigError("OpenVLA (token head) takes exactly one image")
        return cls._materialize(dtype, cfg, tokenizer, images, **common)

    @classmethod
    def _realistic(cls, cfg, tokenizer, images, **kwargs) -> "OpenVLA":
        return cls(cfg, tokenizer, images, files={})


class OpenVLAOFT(_OpenVLABase):
    family = "openvla-oft"
    COMPONENTS = ("vision_encoder", "projector", "backbone", "action_head", "proprio_projector")
    STATS_EPS = 1e-8  # OFT's _unnormalize_actions: (high - low + 1e-8)

    def __init__(self, cfg: OpenVLAConfig, tokenizer: PromptTokenizer, images: ImageTransform, action_dim: int,
                 chunk_size: int, proprio_dim: int = 0, head_blocks: int = 2, part_names: dict | None = None,
                 **kwargs: Any):
        num_images = cfg.settings.num_images_in_input or 1
        if num_images > 1 and not cfg.use_fused_vision_backbone:
            raise ConfigError("multi-image input needs the fused (DINOv2 + SigLIP) vision backbone, as in OFT")
        super().__init__(cfg, tokenizer, images, num_images=num_images, **kwargs)
        self.action_head = L1RegressionActionHead(cfg.llm_dim, action_dim, chunk_size, head_blocks)
        self.proprio_projector = ProprioProjector(proprio_dim, cfg.llm_dim) if proprio_dim else None
        self.part_names = dict(part_names or {})  # part -> (file name, had DDP "module." prefix)
        if self.stats.unnorm_key is not None and self.stats.action_dim() != action_dim:
            raise ConfigError(f"the action head predicts {action_dim} dims but statistics "
                              f"{self.stats.unnorm_key!r} have {self.stats.action_dim()}")

    @property
    def uses_state(self) -> bool:
        return self.proprio_projector is not None

    @property
    def action_spec(self) -> ActionSpec:
        return ActionSpec(self.action_head.action_dim, self.action_head.chunk_size, "regression")

    def token_counts(self, instruction: str | None = None) -> TokenCounts:
        spec = self.action_spec
        # action: K*A zero placeholders plus the stop token OFT appends after them
        visual = self.visual_keep.numel() or self.cfg.patches_per_image * self.vision_backbone.num_images
        return TokenCounts(visual=visual,
                           text=self._text_tokens(instruction), proprio=int(self.uses_state),
                           action=spec.chunk_size * spec.dim + 1)

    def predict_chunk(self, inputs: dict) -> torch.Tensor:
        """(B, K, A) normalised actions in one bidirectional pass."""
        inputs = self._model_inputs(inputs)
        prop = self.proprio_projector(inputs["state"]).unsqueeze(1) if self.uses_state else None
        spec = self.action_spec
        hidden = self.parallel_action_hidden(inputs, prop, spec.chunk_size * spec.dim, self.tokenizer.eos_id)
        return self.action_head(hidden)

    def _save_parts(self, path: Path) -> None:
        for part in ckpt.OFT_PARTS:
            module = getattr(self, part)
            if module is None:
                continue
            name, prefixed = self.part_names.get(part, (None, True))
            ckpt.write_part(module.state_dict(), path / ckpt.part_name(part, name), prefixed)

    @classmethod
    def _load(cls, cfg, tokenizer, images, common, parts, dtype) -> "OpenVLAOFT":
        head_file, head, head_prefixed = parts["action_head"]
        try:
            action_dim = head["model.fc2.weight"].shape[0]
            head_blocks = len({k.split(".")[2] for k in head if k.startswith("model.mlp_resnet_blocks.")})
        except (KeyError, AttributeError, IndexError):
            raise CheckpointError(head_file, "not an L1RegressionActionHead state dict (no model.fc2.weight)") from None
        prop_file, prop, prop_prefixed = parts.get("proprio_projector", (None, {}, True))
        if prop_file is not None and "fc1.weight" not in prop:
            raise CheckpointError(prop_file, "not a ProprioProjector state dict (no fc1.weight)")
        proprio_dim = prop["fc1.weight"].shape[1] if prop_file else 0
        chunk, n_images = cfg.settings.num_actions_chunk, cfg.settings.num_images_in_input
        if chunk is None or n_images is None:
            known = OFT_PLATFORMS.get((action_dim, proprio_dim))
            if known is None:
                raise ConfigError(f"cannot tell the OFT chunk size / image count for action_dim={action_dim}, "
                                  f"proprio_dim={proprio_dim}; pass num_actions_chunk= and num_images_in_input=")
            chunk, n_images = chunk or known[0], n_images or known[1]
        cfg = cfg.with_settings(num_actions_chunk=chunk, num_images_in_input=n_images)
        names = {"action_head": (head_file.name, head_prefixed)}
        if prop_file:
            names["proprio_projector"] = (prop_file.name, prop_prefixed)
        model = cls._materialize(dtype, cfg, tokenizer, images, action_dim, chunk, proprio_dim, head_blocks,
                                 part_names=names, **common)
        load_strict(model.action_head, head, head_file)
        if prop_file:
            load_strict(model.proprio_projector, prop, prop_file)
        return model

    @classmethod
    def _realistic(cls, cfg, tokenizer, images, chunk_size: int = 8, num_images: int = 2, proprio_dim: int = 8,
                   action_dim: int = 7) -> "OpenVLAOFT":
        """OpenVLA-OFT on LIBERO by default (chunk 8, 2 images, 8-d proprio, 7-d actions)."""
        stats = {"libero": {"action": {"q01": [-1.0] * action_dim, "q99": [1.0] * action_dim},
                            "proprio": {"q01": [-1.0] * proprio_dim, "q99": [1.0] * proprio_dim}}}
        cfg = cfg.with_settings(num_actions_chunk=chunk_size, num_images_in_input=num_images)
        return cls(cfg, tokenizer, images, action_dim, chunk_size, proprio_dim, norm_stats=stats, files={})


def load_openvla(path: str | Path, **kwargs: Any) -> _OpenVLABase:
    """Registry loader: OpenVLA, or OpenVLA-OFT when the directory holds an action_head--*.pt."""
    return OpenVLA.from_pretrained(path, **kwargs)
