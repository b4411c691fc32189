"""π0 / π0.5 configuration: LeRobot's policy config.json ("type": "pi0" / "pi05") and the network
sizes that follow from it.

What the file says, and what is fixed by LeRobot's code (src/lerobot/policies/pi0/, pi05/, v0.6):
- `paligemma_variant` / `action_expert_variant` name a Gemma size ("gemma_2b": width 2048, MLP
  16384; "gemma_300m": width 1024, MLP 4096; both 18 layers, 8 query heads, 1 KV head of 256):
  the sizes are not in the file;
- the vision tower is SigLIP so400m/14 (1152 wide, 27 layers, 16 heads, MLP 4304) at
  `image_resolution` (224: 16 x 16 = 256 tokens per camera), the projector a Linear to the
  backbone width; the vocabulary has 257152 ids;
- π0 feeds the state through `state_proj` as one token of the expert's suffix and the time through
  an MLP on [action; time]; π0.5 writes the state into the prompt (256 bins) and conditions every
  expert norm on the time (adaptive RMSNorm).
Sizes LeRobot cannot express (tiny test models, a pruned network) live under config.json's
`vla_compress.architecture` key: {"vision": {...}, "paligemma": {...}, "action_expert": {...},
"vocab_size": N}; without it the variant names decide everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from ...errors import ConfigError
from ..config_keys import as_int, require_keys

KINDS = ("pi0", "pi05")
FEATURE_TYPES = ("VISUAL", "STATE", "ACTION", "ENV", "LANGUAGE", "REWARD")
NORM_MODES = ("IDENTITY", "MEAN_STD", "MIN_MAX", "QUANTILES", "QUANTILE10")
SETTINGS_KEY = "vla_compress"
PALIGEMMA_VOCAB = 257152
ROPE_THETA = 10_000.0
RMS_EPS = 1e-6  # Gemma's rms_norm_eps
DEFAULT_TOKENIZER = "google/paligemma-3b-pt-224"


@dataclass(frozen=True)
class GemmaSize:
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class VisionSize:
    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_layers: int = 27
    num_heads: int = 16
    patch_size: int = 14
    layer_norm_eps: float = 1e-6


VARIANTS = {"gemma_2b": GemmaSize(2048, 18, 16_384, 8, 1, 256),
            "gemma_300m": GemmaSize(1024, 18, 4096, 8, 1, 256)}


@dataclass(frozen=True)
class Feature:
    key: str
    type: str
    shape: tuple[int, ...]

    @property
    def camera(self) -> str:
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
class Pi0Config:
    """The policy config.json (LeRobot's field names); `raw` is written back unchanged."""

    kind: str  # "pi0" | "pi05"
    input_features: tuple[Feature, ...]
    output_features: tuple[Feature, ...]
    normalization_mapping: dict[str, str]
    paligemma_variant: str = "gemma_2b"
    action_expert_variant: str = "gemma_300m"
    dtype: str = "float32"
    chunk_size: int = 50
    n_action_steps: int = 50
    max_state_dim: int = 32
    max_action_dim: int = 32
    num_inference_steps: int = 10
    image_resolution: tuple[int, int] = (224, 224)
    empty_cameras: int = 0
    tokenizer_max_length: int = 48
    min_period: float = 4e-3
    max_period: float = 4.0
    raw: dict = field(default_factory=dict, compare=False, repr=False)
    preset: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"type {self.kind!r} is not one of {KINDS}")
        if self.n_action_steps > self.chunk_size or min(self.chunk_size, self.n_action_steps,
                                                         self.num_inference_steps) < 1:
            raise ConfigError(f"need 1 <= n_action_steps ({self.n_action_steps}) <= chunk_size ({self.chunk_size}) "
                              f"and num_inference_steps ({self.num_inference_steps}) >= 1")
        for name in ("paligemma_variant", "action_expert_variant"):
            if getattr(self, name) not in VARIANTS:
                raise ConfigError(f"{name} {getattr(self, name)!r} is not one of {sorted(VARIANTS)}")
        if self.dtype not in ("bfloat16", "float32"):
            raise ConfigError(f"dtype {self.dtype!r} is not 'bfloat16' or 'float32'")
        if self.image_resolution[0] != self.image_resolution[1]:
            raise ConfigError(f"image_resolution {list(self.image_resolution)} is not square (PaliGemma needs it)")
        bad = {k: v for k, v in self.normalization_mapping.items() if v not in NORM_MODES}
        if bad:
            raise ConfigError(f"normalization_mapping: unknown modes {bad}; known: {NORM_MODES}")
        if not self.image_features:
            raise ConfigError("input_features has no VISUAL feature (and empty_cameras is 0): π0 needs a camera")
        if self.action_feature is None or len(self.action_feature.shape) != 1:
            raise ConfigError("output_features needs an 'action' feature of shape [dim]")
        if self.action_dim > self.max_action_dim or self.state_dim > self.max_state_dim:
            raise ConfigError(f"action dim {self.action_dim} / state dim {self.state_dim} exceed max_action_dim "
                              f"{self.max_action_dim} / max_state_dim {self.max_state_dim}")

    # --- features (as LeRobot's validate_features completes them) ------------------------------------
    @property
    def image_features(self) -> tuple[Feature, ...]:
        feats = [f for f in self.input_features if f.type == "VISUAL"]
        keys = {f.key for f in feats}
        for i in range(self.empty_cameras):
            key = f"observation.images.empty_camera_{i}"
            if key not in keys:
                feats.append(Feature(key, "VISUAL", (3, *self.image_resolution)))
        return tuple(feats)

    @property
    def state_feature(self) -> Feature:
        found = next((f for f in self.input_features if f.type == "STATE"), None)
        return found or Feature("observation.state", "STATE", (self.max_state_dim,))

    @property
    def action_feature(self) -> Feature | None:
        return next((f for f in self.output_features if f.type == "ACTION"), None)

    @property
    def action_dim(self) -> int:
        return self.action_feature.shape[0]  # type: ignore[union-attr]

    @property
    def state_dim(self) -> int:
        return self.state_feature.shape[0]

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(f.camera for f in self.image_features)

    @property
    def image_size(self) -> int:
        return self.image_resolution[0]

    @property
    def settings(self) -> dict:
        s = self.raw.get(SETTINGS_KEY)
        return s if isinstance(s, dict) else {}

    # --- (de)serialisation -----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> "Pi0Config":
        if not isinstance(d, dict) or d.get("type") not in KINDS:
            raise ConfigError(f"not a π0 / π0.5 config (type={d.get('type') if isinstance(d, dict) else None!r})")
        # LeRobot's dataclass defaults stand for the other keys; without its features a policy has no inputs
        require_keys(d, ("input_features", "output_features"))
        if as_int(d, "n_obs_steps", 1) != 1:
            raise ConfigError(f"n_obs_steps={d['n_obs_steps']} is not supported (π0 uses 1)")
        if isinstance(d.get("rtc_config"), dict) and d["rtc_config"].get("enabled"):
            raise ConfigError("real-time chunking (rtc_config.enabled) is not supported")
        kw: dict[str, Any] = {}
        for name, kind in (("paligemma_variant", str), ("action_expert_variant", str), ("dtype", str),
                           ("chunk_size", int), ("n_action_steps", int), ("max_state_dim", int),
                           ("max_action_dim", int), ("num_inference_steps", int), ("empty_cameras", int),
                           ("tokenizer_max_length", int), ("min_period", float), ("max_period", float)):
            if d.get(name) is not None:
                try:
                    kw[name] = kind(d[name])
                except (TypeError, ValueError):
                    raise ConfigError(f"{name}: expected {kind.__name__}, got {d[name]!r}") from None
        if d.get("image_resolution") is not None:
            res = d["image_resolution"]
            if not (isinstance(res, list) and len(res) == 2):
                raise ConfigError(f"image_resolution: expected [height, width], got {res!r}")
            kw["image_resolution"] = (int(res[0]), int(res[1]))
        if d["type"] == "pi05" and "tokenizer_max_length" not in kw:
            kw["tokenizer_max_length"] = 200
        default_mode = "MEAN_STD" if d["type"] == "pi0" else "QUANTILES"
        mapping = d.get("normalization_mapping") or {"VISUAL": "IDENTITY", "STATE": default_mode,
                                                      "ACTION": default_mode}
        return cls(kind=d["type"], input_features=_features(d.get("input_features", {}), "input_features"),
                   output_features=_features(d.get("output_features", {}), "output_features"),
                   normalization_mapping=dict(mapping), raw=dict(d), **kw)

    def to_dict(self) -> dict:
        return dict(self.raw)


def _size(base: Any, override: Any, what: str) -> Any:
    if override is None:
        return base
    if not isinstance(override, dict):
        raise ConfigError(f"{SETTINGS_KEY}.architecture.{what} must be a mapping")
    known = {f.name for f in fields(base)}
    unknown = sorted(set(override) - known)
    if unknown:
        raise ConfigError(f"{SETTINGS_KEY}.architecture.{what}: unknown keys {unknown} (known: {sorted(known)})")
    try:
        return replace(base, **{k: type(getattr(base, k))(v) for k, v in override.items()})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{SETTINGS_KEY}.architecture.{what}: {e}") from None


@dataclass(frozen=True)
class Pi0Arch:
    """Every shape of the network: the config plus the fixed variant sizes (or their overrides)."""

    policy: Pi0Config
    vision: VisionSize
    backbone: GemmaSize
    expert: GemmaSize
    vocab_size: int

    @classmethod
    def from_config(cls, cfg: Pi0Config) -> "Pi0Arch":
        arch = cfg.settings.get("architecture") or {}
        if not isinstance(arch, dict):
            raise ConfigError(f"{SETTINGS_KEY}.architecture must be a mapping")
        unknown = sorted(set(arch) - {"vision", "paligemma", "action_expert", "vocab_size"})
        if unknown:
            raise ConfigError(f"{SETTINGS_KEY}.architecture: unknown keys {unknown}")
        return cls(cfg, _size(VisionSize(), arch.get("vision"), "vision"),
                   _size(VARIANTS[cfg.paligemma_variant], arch.get("paligemma"), "paligemma"),
                   _size(VARIANTS[cfg.action_expert_variant], arch.get("action_expert"), "action_expert"),
                   int(arch.get("vocab_size", PALIGEMMA_VOCAB)))

    def __post_init__(self) -> None:
        b, e, v = self.backbone, self.expert, self.vision
        # the expert's queries attend to the backbone's keys/values at every layer
        if (b.depth, b.num_kv_heads, b.head_dim) != (e.depth, e.num_kv_heads, e.head_dim):
            raise ConfigError(f"the backbone (depth {b.depth}, {b.num_kv_heads} KV heads of {b.head_dim}) and the "
                              f"action expert (depth {e.depth}, {e.num_kv_heads} KV heads of {e.head_dim}) must "
                              "match: the expert attends to the backbone's keys/values at every layer")
        for name, g in (("paligemma", b), ("action_expert", e)):
            if g.num_heads % g.num_kv_heads:
                raise ConfigError(f"{name}: {g.num_heads} heads are not a multiple of {g.num_kv_heads} KV heads")
        if e.width % 2:
            raise ConfigError(f"action expert width {e.width} must be even (sinusoidal time embedding)")
        if self.policy.image_size % v.patch_size:
            raise ConfigError(f"image_resolution {self.policy.image_size} is not a multiple of the patch size "
                              f"{v.patch_size}")
        if v.hidden_size % v.num_heads:
            raise ConfigError(f"vision width {v.hidden_size} is not a multiple of its {v.num_heads} heads")

    @property
    def tokens_per_image(self) -> int:
        return (self.policy.image_size // self.vision.patch_size) ** 2

    @property
    def adaptive(self) -> bool:
        """π0.5: the expert's norms are conditioned on the time (adaptive RMSNorm)."""
        return self.policy.kind == "pi05"
