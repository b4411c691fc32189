"""Configuration of the reference family: a small Prismatic-style VLA.

SigLIP-style ViT -> GELU MLP projector -> Llama backbone -> action head, where the head is
either OFT-style parallel decoding with an L1 regression MLP ("regression") or OpenVLA-style
autoregressive action tokens on the last 256 vocabulary ids ("tokens").

Sizes: the backbone's hidden and MLP widths are multiples of 256 because llama.cpp's
K-quants pack 256-element super-blocks per row (other widths fall back to Q5_0).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ...errors import ConfigError
from ..config_keys import check_types, require_keys

FORMAT_VERSION = 1
PROMPT_TEMPLATE = "In: What action should the robot take to {instruction}?\nOut:"


@dataclass(frozen=True)
class VisionConfig:
    image_size: int = 128
    patch_size: int = 16
    hidden_size: int = 192
    intermediate_size: int = 768
    num_layers: int = 4
    num_heads: int = 3
    # Cameras read, in this order (e.g. a third-person "corner" view and a wrist "gripperPOV").
    # Every camera goes through the same ViT; their visual tokens are concatenated, camera by
    # camera, and pixel_values stacks the cameras on the channel axis: (B, 3 * cameras, S, S).
    cameras: tuple[str, ...] = ("corner",)
    # Set by structured pruning (vla_compress.passes.prune): the width of one head once heads
    # were removed (0 = hidden_size // num_heads), and each layer's size when layers were pruned
    # unevenly (empty = every layer has num_heads / intermediate_size).
    head_dim: int = 0
    layer_num_heads: tuple[int, ...] = ()
    layer_intermediate_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _tuples(self, "cameras", "layer_num_heads", "layer_intermediate_sizes")
        if not self.cameras or len(set(self.cameras)) != len(self.cameras) or not all(
                isinstance(c, str) and c for c in self.cameras):
            raise ConfigError(f"vision.cameras must be distinct, non-empty camera names, got {list(self.cameras)}")

    @property
    def num_cameras(self) -> int:
        return len(self.cameras)

    @property
    def num_patches(self) -> int:
        """Patches of one camera's image."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def attention_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    def layer_heads(self, i: int) -> int:
        return self.layer_num_heads[i] if self.layer_num_heads else self.num_heads

    def layer_intermediate(self, i: int) -> int:
        return self.layer_intermediate_sizes[i] if self.layer_intermediate_sizes else self.intermediate_size


@dataclass(frozen=True)
class BackboneConfig:
    hidden_size: int = 256
    intermediate_size: int = 768
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2  # grouped-query attention, as in Llama-2-70B/Llama-3: passes must respect it
    vocab_size: int = 740
    max_position: int = 512
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    # Set by structured pruning, as for VisionConfig (layer_num_kv_heads: KV heads per layer).
    head_dim: int = 0
    layer_num_heads: tuple[int, ...] = ()
    layer_num_kv_heads: tuple[int, ...] = ()
    layer_intermediate_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _tuples(self, "layer_num_heads", "layer_num_kv_heads", "layer_intermediate_sizes")

    @property
    def attention_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    def layer_heads(self, i: int) -> int:
        return self.layer_num_heads[i] if self.layer_num_heads else self.num_heads

    def layer_kv_heads(self, i: int) -> int:
        return self.layer_num_kv_heads[i] if self.layer_num_kv_heads else self.num_kv_heads

    def layer_intermediate(self, i: int) -> int:
        return self.layer_intermediate_sizes[i] if self.layer_intermediate_sizes else self.intermediate_size


def _tuples(cfg: Any, *names: str) -> None:
    """JSON gives lists; keep tuples so configs compare equal after a round trip."""
    for n in names:
        object.__setattr__(cfg, n, tuple(getattr(cfg, n)))


def _check_layers(prefix: str, cfg: Any, names: tuple[str, ...]) -> None:
    for n in names:
        values = getattr(cfg, n)
        if values and (len(values) != cfg.num_layers or min(values) < 1):
            raise ConfigError(f"{prefix}.{n} must list num_layers={cfg.num_layers} sizes >= 1, got {list(values)}")


@dataclass(frozen=True)
class ReferenceConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: str = "regression"  # "regression" (OFT-style L1 chunk) | "tokens" (OpenVLA-style)
    action_dim: int = 4
    chunk_size: int = 4
    proprio_dim: int = 4
    n_bins: int = 256
    # 2 = merge each 2x2 block of patches into one token before the projector (pixel
    # unshuffle, as SmolVLM does): 4x fewer visual tokens for the backbone.
    token_merge: int = 1
    # Visual tokens kept for the backbone after attention-guided pruning (0 = all);
    # set by the token-reduction pass, kept static so exports have fixed shapes.
    visual_token_budget: int = 0
    prompt_template: str = PROMPT_TEMPLATE
    preset: str = "custom"

    def __post_init__(self) -> None:
        if self.head not in ("regression", "tokens"):
            raise ConfigError(f"head must be 'regression' or 'tokens', got {self.head!r}")
        if self.vision.image_size % self.vision.patch_size:
            raise ConfigError("vision.image_size must be a multiple of vision.patch_size")
        grid = self.vision.image_size // self.vision.patch_size
        if self.token_merge < 1 or grid % self.token_merge:
            raise ConfigError(f"token_merge={self.token_merge} must divide the {grid}x{grid} patch grid")
        if self.backbone.num_heads % self.backbone.num_kv_heads:
            raise ConfigError("backbone.num_heads must be a multiple of backbone.num_kv_heads")
        if (not self.vision.head_dim and self.vision.hidden_size % self.vision.num_heads) or \
                (not self.backbone.head_dim and self.backbone.hidden_size % self.backbone.num_heads):
            raise ConfigError("hidden sizes must be divisible by their head counts")
        if self.vision.head_dim and self.vision.hidden_size % self.vision.head_dim:
            raise ConfigError("vision.hidden_size must be a multiple of vision.head_dim")
        _check_layers("vision", self.vision, ("layer_num_heads", "layer_intermediate_sizes"))
        _check_layers("backbone", self.backbone, ("layer_num_heads", "layer_num_kv_heads", "layer_intermediate_sizes"))
        b = self.backbone
        if any(b.layer_heads(i) % b.layer_kv_heads(i) for i in range(b.num_layers)):
            raise ConfigError("each backbone layer's head count must be a multiple of its num_kv_heads")
        if min(self.action_dim, self.chunk_size, self.proprio_dim) < 1:
            raise ConfigError("action_dim, chunk_size and proprio_dim must be >= 1")

    @property
    def visual_tokens(self) -> int:
        """Visual tokens the backbone sees, all cameras together."""
        full = self.vision.num_cameras * self.vision.num_patches // (self.token_merge**2)
        return min(full, self.visual_token_budget) if self.visual_token_budget else full

    @property
    def action_tokens(self) -> int:
        return self.chunk_size * self.action_dim if self.head == "tokens" else self.chunk_size

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model_type"] = "vla-compress-reference"
        d["format_version"] = FORMAT_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ReferenceConfig":
        d = dict(d)
        if d.pop("model_type", "vla-compress-reference") != "vla-compress-reference":
            raise ConfigError("config.json is not a vla-compress reference config (model_type mismatch)")
        version = d.pop("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise ConfigError(f"config format_version {version} is newer than this vla-compress ({FORMAT_VERSION})")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown config keys: {sorted(unknown)}")
        # what shapes the network or its numerics has no default here: every written config has it
        require_keys(d, REQUIRED + (("n_bins",) if d.get("head") == "tokens" else ()))
        check_types(cls, d)
        for name in ("vision", "backbone"):
            if not isinstance(d[name], dict):
                raise ConfigError(f"{name}: expected a JSON object, got {d[name]!r}")
        v = dict(d.pop("vision"))
        if "camera" in v:  # format 1 checkpoints written before multi-camera support: one camera
            if "cameras" in v:
                raise ConfigError("vision has both 'camera' and 'cameras'")
            v["cameras"] = [v.pop("camera")]
        b = dict(d.pop("backbone"))
        for section, cls_, keys in (("vision", VisionConfig, VISION_REQUIRED), ("backbone", BackboneConfig,
                                                                                  BACKBONE_REQUIRED)):
            raw = v if section == "vision" else b
            require_keys(raw, keys, f"{section}.")
            check_types(cls_, raw, f"{section}.")
        try:
            vision = VisionConfig(**v)
            backbone = BackboneConfig(**b)
        except TypeError as e:
            raise ConfigError(f"bad vision/backbone section: {e}") from None
        return cls(vision=vision, backbone=backbone, **d)


# keys a config.json must hold (the others are optional: pruning's per-layer sizes, the token budget,
# the preset name, the prompt template and max_position default to "not set" / the canonical value)
REQUIRED = ("vision", "backbone", "head", "action_dim", "chunk_size", "proprio_dim", "token_merge")
VISION_REQUIRED = ("image_size", "patch_size", "hidden_size", "intermediate_size", "num_layers", "num_heads")
BACKBONE_REQUIRED = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "vocab_size",
                     "rope_theta", "rms_norm_eps")


# Size presets. Only reference-small is trained and shipped; the others are random-weight
# models at realistic scale for latency and memory work.
PRESETS: dict[str, ReferenceConfig] = {
    # 128x128 corner camera, 16x16 patches (64 patches), 2x2 merge -> 16 visual tokens (what
    # ships). `train-reference --cameras corner,gripperPOV` adds the wrist view: 32 tokens.
    "reference-small": ReferenceConfig(token_merge=2, preset="reference-small"),
    # ~100M: ViT 512-d x 8 layers (~25M) + Llama 768-d x 12 layers (~75M)
    "reference-100m": ReferenceConfig(
        vision=VisionConfig(image_size=224, patch_size=16, hidden_size=512, intermediate_size=2048, num_layers=8, num_heads=8),
        backbone=BackboneConfig(hidden_size=768, intermediate_size=2048, num_layers=12, num_heads=12, num_kv_heads=4),
        preset="reference-100m",
    ),
    # ~500M: ViT-B/16 at 224 (~86M) + Llama 1536-d x 16 layers (~400M)
    "reference-500m": ReferenceConfig(
        vision=VisionConfig(image_size=224, patch_size=16, hidden_size=768, intermediate_size=3072, num_layers=12, num_heads=12),
        backbone=BackboneConfig(hidden_size=1536, intermediate_size=4096, num_layers=16, num_heads=12, num_kv_heads=4),
        preset="reference-500m",
    ),
    # OpenVLA-7B's shape for counting FLOPs/bytes (built on the meta device, never allocated):
    # SigLIP-so400m/14 at 224 (256 patches) + Llama-2-7B, 7 action tokens, one action per step.
    # (OpenVLA also runs a DINOv2 ViT-L beside SigLIP; the openvla family models that exactly.)
    "openvla-7b-shape": ReferenceConfig(
        vision=VisionConfig(image_size=224, patch_size=14, hidden_size=1152, intermediate_size=4304, num_layers=27, num_heads=16),
        backbone=BackboneConfig(hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32, num_kv_heads=32, vocab_size=32064, max_position=2048),
        head="tokens", action_dim=7, chunk_size=1, proprio_dim=7, preset="openvla-7b-shape",
    ),
}
