"""SmolVLA configuration: the policy's config.json (LeRobot `SmolVLAConfig`, "type": "smolvla") and the
SmolVLM backbone's config.json (vision / text / pixel-shuffle sizes), and what follows from them.

What the files say, and what we derive (LeRobot src/lerobot/policies/smolvla/, read for the format):
- the VLM text model is truncated to its first `num_vlm_layers` layers;
- the action expert is a Llama stack `expert_width_multiplier` times as wide as the VLM text model
  (int(960 * 0.75) = 720 for SmolVLA-base), with an MLP of 4 * int(2 * width / 3) rounded up to a
  multiple of 256 (2048), `num_expert_layers` layers (<= 0: as many as the VLM), and the VLM's
  attention geometry (heads, KV heads, head dim: 15 x 64 queries, 5 x 64 keys/values);
- in "cross_attn" mode VLM layer i is a self-attention layer when i % self_attn_every_n_layers == 0
  (the expert attends to [prefix K/V ; its own K/V]) and a cross-attention layer otherwise (the
  expert's k/v projections, of input width num_kv_heads * head_dim, map the cached VLM keys and
  values). Expert layer j has cross-attention-shaped k/v when j % n != 0; with fewer expert layers
  than VLM layers, expert layer j serves VLM layer j * (vlm_layers // expert_layers) and the other
  VLM layers leave the action tokens unchanged.
The VLM config is parsed by transformers' own config class (SmolVLMConfig / Idefics3Config), so
keys a file leaves out take the defaults LeRobot would get from `AutoConfig`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ...errors import ConfigError
from ..config_keys import as_int, require_keys

FEATURE_TYPES = ("VISUAL", "STATE", "ACTION", "ENV", "LANGUAGE", "REWARD")
NORM_MODES = ("IDENTITY", "MEAN_STD", "MIN_MAX", "QUANTILES", "QUANTILE10")
VLM_MODEL_TYPES = ("smolvlm", "idefics3")


def expert_intermediate_size(width: int, multiple_of: int = 256) -> int:
    """The expert MLP width: 4 * int(2 * width / 3), rounded up to a multiple of 256 (Llama's rule)."""
    hidden = 4 * int(2 * width / 3)
    return multiple_of * math.ceil(hidden / multiple_of)


@dataclass(frozen=True)
class Feature:
    key: str  # "observation.images.top", "observation.state", "action"
    type: str
    shape: tuple[int, ...]

    @property
    def camera(self) -> str:
        """Camera name of a VISUAL feature: the key without "observation.images." / "observation."."""
        for prefix in ("observation.images.", "observation."):
            if self.key.startswith(prefix):
                return self.key[len(prefix):]
        return self.key


def _features(raw: Any, what: str) -> tuple[Feature, ...]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} must be a mapping of feature name -> {{type, shape}}")
    out = []
    for key, f in raw.items():
        if not isinstance(f, dict) or f.get("type") not in FEATURE_TYPES or not isinstance(f.get("shape"), list):
            raise ConfigError(f"{what}.{key} must be {{'type': one of {FEATURE_TYPES}, 'shape': [ints]}}, got {f!r}")
        out.append(Feature(key, f["type"], tuple(int(s) for s in f["shape"])))
    return tuple(out)


@dataclass(frozen=True)
class SmolVLAConfig:
    """The policy config.json (LeRobot's field names); `raw` is kept to be written back unchanged."""

    input_features: tuple[Feature, ...]
    output_features: tuple[Feature, ...]
    normalization_mapping: dict[str, str]
    chunk_size: int = 50
    n_action_steps: int = 50
    max_state_dim: int = 32
    max_action_dim: int = 32
    resize_imgs_with_padding: tuple[int, int] | None = (512, 512)  # (width, height)
    empty_cameras: int = 0
    tokenizer_max_length: int = 48
    pad_language_to: str = "longest"
    num_steps: int = 10
    vlm_model_name: str = "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"
    add_image_special_tokens: bool = False
    attention_mode: str = "cross_attn"
    prefix_length: int = -1
    num_expert_layers: int = -1
    num_vlm_layers: int = 16
    self_attn_every_n_layers: int = 2
    expert_width_multiplier: float = 0.75
    min_period: float = 4e-3
    max_period: float = 4.0
    raw: dict = field(default_factory=dict, compare=False, repr=False)
    preset: str | None = None

    def __post_init__(self) -> None:
        if self.n_action_steps > self.chunk_size or min(self.chunk_size, self.n_action_steps, self.num_steps) < 1:
            raise ConfigError(f"need 1 <= n_action_steps ({self.n_action_steps}) <= chunk_size ({self.chunk_size}) "
                              f"and num_steps ({self.num_steps}) >= 1")
        if self.pad_language_to not in ("longest", "max_length"):
            raise ConfigError(f"pad_language_to must be 'longest' or 'max_length', got {self.pad_language_to!r}")
        if self.attention_mode not in ("cross_attn", "self_attn"):
            raise ConfigError(f"attention_mode must be 'cross_attn' or 'self_attn', got {self.attention_mode!r}")
        bad = {k: v for k, v in self.normalization_mapping.items() if v not in NORM_MODES}
        if bad:
            raise ConfigError(f"normalization_mapping: unknown modes {bad}; known: {NORM_MODES}")
        if not self.image_features:
            raise ConfigError("input_features has no VISUAL feature: SmolVLA needs at least one camera")
        if self.action_feature is None or len(self.action_feature.shape) != 1:
            raise ConfigError("output_features needs an 'action' feature of shape [dim]")
        if self.action_dim > self.max_action_dim or self.state_dim > self.max_state_dim:
            raise ConfigError(f"action dim {self.action_dim} / state dim {self.state_dim} exceed max_action_dim "
                              f"{self.max_action_dim} / max_state_dim {self.max_state_dim}")
        if self.resize_imgs_with_padding is not None and self.resize_imgs_with_padding[0] != self.resize_imgs_with_padding[1]:
            raise ConfigError(f"resize_imgs_with_padding {list(self.resize_imgs_with_padding)} is not square: the "
                              "connector's pixel shuffle needs a square patch grid")

    # --- features ------------------------------------------------------------------------------
    @property
    def image_features(self) -> tuple[Feature, ...]:
        return tuple(f for f in self.input_features if f.type == "VISUAL")

    @property
    def state_feature(self) -> Feature | None:
        return next((f for f in self.input_features if f.type == "STATE"), None)

    @property
    def action_feature(self) -> Feature | None:
        return next((f for f in self.output_features if f.type == "ACTION"), None)

    @property
    def action_dim(self) -> int:
        return self.action_feature.shape[0]  # type: ignore[union-attr]

    @property
    def state_dim(self) -> int:
        return self.state_feature.shape[0] if self.state_feature is not None else 0

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(f.camera for f in self.image_features)

    def image_size(self) -> int:
        """Side of the square image fed to the vision encoder (after resizing with padding)."""
        if self.resize_imgs_with_padding is not None:
            return self.resize_imgs_with_padding[1]
        sizes = {f.shape[1:] for f in self.image_features}
        if len(sizes) != 1 or any(h != w for h, w in sizes):
            raise ConfigError(f"resize_imgs_with_padding is null and the cameras are not one square size: {sizes}")
        return next(iter(sizes))[0]

    # --- (de)serialisation -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> "SmolVLAConfig":
        if not isinstance(d, dict) or d.get("type") != "smolvla":
            raise ConfigError(f"not a SmolVLA config (type={d.get('type') if isinstance(d, dict) else None!r})")
        # LeRobot's dataclass defaults stand for the other keys; without its features a policy has no inputs
        require_keys(d, ("input_features", "output_features"))
        if as_int(d, "n_obs_steps", 1) != 1:
            raise ConfigError(f"n_obs_steps={d['n_obs_steps']} is not supported (SmolVLA uses 1)")
        for flag in ("adapt_to_pi_aloha", "use_delta_joint_actions_aloha"):
            if d.get(flag):
                raise ConfigError(f"{flag}=true (ALOHA joint/gripper conversions) is not supported")
        if d.get("rtc_config") and d["rtc_config"].get("enabled"):
            raise ConfigError("real-time chunking (rtc_config.enabled) is not supported")
        resize = d.get("resize_imgs_with_padding", (512, 512))
        kw: dict[str, Any] = {}
        for name, kind in (("chunk_size", int), ("n_action_steps", int), ("max_state_dim", int),
                           ("max_action_dim", int), ("empty_cameras", int), ("tokenizer_max_length", int),
                           ("pad_language_to", str), ("num_steps", int), ("vlm_model_name", str),
                           ("add_image_special_tokens", bool), ("attention_mode", str), ("prefix_length", int),
                           ("num_expert_layers", int), ("num_vlm_layers", int), ("self_attn_every_n_layers", int),
                           ("expert_width_multiplier", float), ("min_period", float), ("max_period", float)):
            if d.get(name) is not None:
                try:
                    kw[name] = kind(d[name])
                except (TypeError, ValueError):
                    raise ConfigError(f"{name}: expected {kind.__name__}, got {d[name]!r}") from None
        mapping = d.get("normalization_mapping") or {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"}
        return cls(input_features=_features(d.get("input_features", {}), "input_features"),
                   output_features=_features(d.get("output_features", {}), "output_features"),
                   normalization_mapping=dict(mapping),
                   resize_imgs_with_padding=None if resize is None else (int(resize[0]), int(resize[1])),
                   raw=dict(d), **kw)

    def to_dict(self) -> dict:
        """The config.json to write: the file as read (every LeRobot key kept)."""
        return dict(self.raw)


@dataclass(frozen=True)
class VisionConfig:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    patch_size: int
    image_size: int
    layer_norm_eps: float
    hidden_act: str
    num_channels: int = 3


@dataclass(frozen=True)
class TextConfig:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    vocab_size: int
    hidden_act: str = "silu"
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False


@dataclass(frozen=True)
class VLMConfig:
    """The SmolVLM config.json, as transformers' config class reads it."""

    vision: VisionConfig
    text: TextConfig
    scale_factor: int
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, d: dict) -> "VLMConfig":
        if not isinstance(d, dict) or d.get("model_type") not in VLM_MODEL_TYPES:
            raise ConfigError(f"not a SmolVLM config (model_type={d.get('model_type') if isinstance(d, dict) else None!r}; "
                              f"expected one of {VLM_MODEL_TYPES})")
        import transformers

        klass = transformers.SmolVLMConfig if d["model_type"] == "smolvlm" else transformers.Idefics3Config
        try:
            c = klass.from_dict(dict(d))
        except Exception as e:  # transformers raises TypeError/ValueError/KeyError on malformed sub-configs
            raise ConfigError(f"transformers could not read the VLM config: {type(e).__name__}: {e}") from None
        v, t = c.vision_config, c.text_config
        if t.model_type != "llama":
            raise ConfigError(f"text_config.model_type {t.model_type!r}: only Llama text models are supported")
        head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
        vision = VisionConfig(v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads,
                              v.patch_size, v.image_size, float(v.layer_norm_eps), v.hidden_act, v.num_channels)
        tie = bool(getattr(t, "tie_word_embeddings", False) or d.get("tie_word_embeddings", False))
        text = TextConfig(t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads,
                          t.num_key_value_heads, head_dim, float(t.rms_norm_eps), t.vocab_size, t.hidden_act,
                          bool(getattr(t, "attention_bias", False)), bool(getattr(t, "mlp_bias", False)), tie)
        for name, value in (("vision hidden_act", v.hidden_act), ("text hidden_act", t.hidden_act)):
            if value not in ("gelu_pytorch_tanh", "gelu", "silu"):
                raise ConfigError(f"{name} {value!r} is not supported")
        return cls(vision, text, int(c.scale_factor), raw=dict(d))


@dataclass(frozen=True)
class LayerPlan:
    """How one VLM layer index runs during denoising: kind "self" / "cross", and its expert layer."""

    kind: str
    expert: int | None


@dataclass(frozen=True)
class SmolVLAArch:
    """Everything the network's shapes follow from: the policy config plus the VLM config."""

    policy: SmolVLAConfig
    vlm: VLMConfig

    def __post_init__(self) -> None:
        p, t = self.policy, self.vlm.text
        if p.num_expert_layers > 0 and self.vlm_layers % p.num_expert_layers:
            raise ConfigError(f"num_vlm_layers {self.vlm_layers} is not a multiple of num_expert_layers "
                              f"{p.num_expert_layers}")
        if self.expert_hidden % 2:
            raise ConfigError(f"expert width {self.expert_hidden} must be even (sinusoidal time embedding)")
        if t.num_heads % t.num_kv_heads:
            raise ConfigError(f"{t.num_heads} attention heads are not a multiple of {t.num_kv_heads} KV heads")
        v = self.vlm.vision
        grid = self.policy.image_size() // v.patch_size
        if self.policy.image_size() % v.patch_size or grid % self.vlm.scale_factor:
            raise ConfigError(f"image side {self.policy.image_size()} must be a multiple of patch_size {v.patch_size} "
                              f"x scale_factor {self.vlm.scale_factor}")
        for i, plan in enumerate(self.plan):
            if plan.expert is None:
                if plan.kind == "self":
                    raise ConfigError(f"VLM layer {i} is a self-attention layer without an expert layer: "
                                      "LeRobot's SmolVLMWithExpertModel cannot run this layout either")
                continue
            if (plan.kind == "cross") != self.expert_is_cross(plan.expert):
                raise ConfigError(f"VLM layer {i} runs {plan.kind}-attention but expert layer {plan.expert} has "
                                  f"{'cross' if self.expert_is_cross(plan.expert) else 'self'}-attention k/v "
                                  "projections: LeRobot cannot run this layout either")

    @property
    def vlm_layers(self) -> int:
        n = self.policy.num_vlm_layers
        return min(n, self.vlm.text.num_layers) if n > 0 else self.vlm.text.num_layers

    @property
    def expert_layers(self) -> int:
        n = self.policy.num_expert_layers
        return n if n > 0 else self.vlm_layers

    @property
    def expert_hidden(self) -> int:
        return int(self.vlm.text.hidden_size * self.policy.expert_width_multiplier)

    @property
    def expert_intermediate(self) -> int:
        return expert_intermediate_size(self.expert_hidden)

    @property
    def cross(self) -> bool:
        return "cross" in self.policy.attention_mode

    def expert_is_cross(self, j: int) -> bool:
        n = self.policy.self_attn_every_n_layers
        return self.cross and not (n > 0 and j % n == 0)

    @property
    def plan(self) -> tuple[LayerPlan, ...]:
        n = self.policy.self_attn_every_n_layers
        every = self.vlm_layers // self.expert_layers
        out = []
        for i in range(self.vlm_layers):
            kind = "self" if not self.cross or (n > 0 and i % n == 0) else "cross"
            expert = None if every > 0 and i > 0 and i % every else (i // every if every > 0 else i)
            out.append(LayerPlan(kind, expert))
        return tuple(out)

    @property
    def kv_dim(self) -> int:
        return self.vlm.text.num_kv_heads * self.vlm.text.head_dim

    @property
    def tokens_per_image(self) -> int:
        grid = self.policy.image_size() // self.vlm.vision.patch_size
        return (grid // self.vlm.scale_factor) ** 2 + (3 if self.policy.add_image_special_tokens else 0)


# --- the published SmolVLA-base shape ------------------------------------------------------------

def smolvla_base_config_dict() -> dict:
    """lerobot/smolvla_base's config.json (the architecture keys; training keys left out): three
    256 x 256 cameras, 6-d state and action, chunk 50, 10 Euler steps, 16 VLM layers."""
    cams = ("observation.image", "observation.image2", "observation.image3")
    return {
        "type": "smolvla", "n_obs_steps": 1,
        "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"},
        "input_features": {"observation.state": {"type": "STATE", "shape": [6]},
                           **{c: {"type": "VISUAL", "shape": [3, 256, 256]} for c in cams}},
        "output_features": {"action": {"type": "ACTION", "shape": [6]}},
        "chunk_size": 50, "n_action_steps": 50, "max_state_dim": 32, "max_action_dim": 32,
        "resize_imgs_with_padding": [512, 512], "empty_cameras": 0, "adapt_to_pi_aloha": False,
        "use_delta_joint_actions_aloha": False, "tokenizer_max_length": 48, "num_steps": 10, "use_cache": True,
        "vlm_model_name": "HuggingFaceTB/SmolVLM2-500M-Video-Instruct", "load_vlm_weights": True,
        "add_image_special_tokens": False, "attention_mode": "cross_attn", "prefix_length": 0,
        "pad_language_to": "max_length", "num_expert_layers": 0, "num_vlm_layers": 16,
        "self_attn_every_n_layers": 2, "expert_width_multiplier": 0.75, "min_period": 0.004, "max_period": 4.0,
    }


def smolvlm2_500m_config_dict() -> dict:
    """The SmolVLM2-500M-Video-Instruct sizes SmolVLA-base's weights have (every shape below is one
    of the checkpoint's tensor shapes): SigLIP 12 x 768 (MLP 3072, 12 heads of 64, 16 px patches,
    512 px), pixel shuffle 4 (12288 -> 960), SmolLM2-360M-style Llama 960 wide (MLP 2560, 15 heads,
    5 KV heads of 64, 32 layers of which SmolVLA keeps 16, vocabulary 49280, RMSNorm eps 1e-5)."""
    return {
        "architectures": ["SmolVLMForConditionalGeneration"], "model_type": "smolvlm", "scale_factor": 4,
        "image_token_id": 49190, "tie_word_embeddings": False,
        "vision_config": {"model_type": "smolvlm_vision", "hidden_size": 768, "intermediate_size": 3072,
                          "num_hidden_layers": 12, "num_attention_heads": 12, "patch_size": 16, "image_size": 512,
                          "layer_norm_eps": 1e-6, "hidden_act": "gelu_pytorch_tanh"},
        "text_config": {"model_type": "llama", "hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32,
                        "num_attention_heads": 15, "num_key_value_heads": 5, "head_dim": 64, "rms_norm_eps": 1e-5,
                        "vocab_size": 49280, "hidden_act": "silu", "tie_word_embeddings": False,
                        "rope_theta": 100000.0, "max_position_embeddings": 8192},
    }
