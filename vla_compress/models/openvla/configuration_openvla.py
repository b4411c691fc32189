"""Configuration of the OpenVLA family, read from (and written back to) the Hugging Face `config.json`.

The file is the one `openvla/openvla-7b` ships (model_type "openvla"; see
openvla/openvla prismatic/extern/hf/configuration_prismatic.py): vision backbone and LLM ids,
timm model ids per vision branch, image sizes, `text_config` (a LlamaConfig *diff*), the action
bins, `pad_to_multiple_of` and the per-dataset `norm_stats`. We keep the parsed dict as-is and
write it back unchanged, adding only one namespaced key, `vla_compress`, for what the original
files cannot express (OFT chunk size and image count, camera names, tiny fixture ViT sizes).

Architecture facts that come from *code*, not from config.json, are pinned here with their source:
the timm ViT definitions (timm 0.9.x `vit_large_patch14_reg4_dinov2`, `vit_so400m_patch14_siglip_*`)
and the transformers-4.40 `LlamaConfig` defaults that fill in whatever the `text_config` diff leaves
out (OpenVLA-7B's text_config only sets vocab_size/pad_token_id, so e.g. rms_norm_eps is 4.40's
default 1e-6, not Llama-2's 1e-5).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ...errors import ConfigError
from ..config_keys import as_int, require_keys

SETTINGS_KEY = "vla_compress"
PROMPT_TEMPLATE = "In: What action should the robot take to {instruction}?\nOut:"

# vision_backbone_id -> timm model ids, one per (fused) branch (configuration_prismatic.py).
# CLIP / IN1K backbones (quick_gelu, pre-norm, class-token pos-embed) are not implemented.
VISION_BACKBONES: dict[str, tuple[str, ...]] = {
    "dinov2-vit-l": ("vit_large_patch14_reg4_dinov2.lvd142m",),
    "siglip-vit-so400m": ("vit_so400m_patch14_siglip_224",),
    "siglip-vit-so400m-384px": ("vit_so400m_patch14_siglip_384",),
    "dinosiglip-vit-so-224px": ("vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"),
    "dinosiglip-vit-so-384px": ("vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_384"),
}


@dataclass(frozen=True)
class ViTSpec:
    """One timm VisionTransformer as OpenVLA builds it (`num_classes=0`, `img_size` from config)."""

    timm_id: str
    image_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_dim: int
    patch_size: int = 14
    class_token: bool = True
    reg_tokens: int = 0
    no_embed_class: bool = False  # pos_embed covers only the patches (DINOv2 w/ registers)
    layer_scale: bool = False  # LayerScale after attn/mlp (DINOv2: init_values=1e-5)
    attn_pool: bool = False  # SigLIP's 'map' head: in the checkpoint, unused by OpenVLA
    norm_eps: float = 1e-6  # timm's default norm_layer: LayerNorm(eps=1e-6)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + self.reg_tokens

    @property
    def feature_layer(self) -> int:
        """OpenVLA reads `get_intermediate_layers(n={depth - 2})`: the second-to-last block's output."""
        return self.depth - 2


# timm 0.9.16 timm/models/vision_transformer.py: model_args of each registered model; the MLP width is
# int(embed_dim * mlp_ratio) (SigLIP so400m: mlp_ratio=3.7362 -> 4304). act_layer None -> exact nn.GELU.
_TIMM_VITS: dict[str, dict[str, Any]] = {
    "vit_large_patch14_reg4_dinov2": dict(embed_dim=1024, depth=24, num_heads=16, mlp_dim=4096, class_token=True,
                                          reg_tokens=4, no_embed_class=True, layer_scale=True),
    "vit_so400m_patch14_siglip_224": dict(embed_dim=1152, depth=27, num_heads=16, mlp_dim=4304, class_token=False,
                                          attn_pool=True),
    "vit_so400m_patch14_siglip_384": dict(embed_dim=1152, depth=27, num_heads=16, mlp_dim=4304, class_token=False,
                                          attn_pool=True),
}
_OVERRIDABLE = ("embed_dim", "depth", "num_heads", "mlp_dim", "patch_size")

# transformers 4.40 LlamaConfig.__init__ defaults (what OpenVLA's remote code instantiated).
LLAMA_4_40_DEFAULTS: dict[str, Any] = dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=None, hidden_act="silu", max_position_embeddings=2048, rms_norm_eps=1e-6,
    bos_token_id=1, eos_token_id=2, pad_token_id=None, tie_word_embeddings=False, rope_theta=10000.0,
    rope_scaling=None, attention_bias=False,
)
_LLAMA_ARCH_KEYS = set(LLAMA_4_40_DEFAULTS) | {"head_dim", "mlp_bias"}


@dataclass(frozen=True)
class AdapterSettings:
    """What the original files do not record; stored under config.json's `vla_compress` key.

    num_images_in_input / num_actions_chunk are OpenVLA-OFT constants set in its code
    (prismatic/vla/constants.py, run_*_eval.py); None means "infer" (see adapter.py).
    """

    cameras: tuple[str, ...] | None = None
    num_images_in_input: int | None = None
    num_actions_chunk: int | None = None
    unnorm_key: str | None = None
    normalization: str = "bounds_q99"  # OFT ACTION_PROPRIO_NORMALIZATION_TYPE: "bounds_q99" | "bounds"
    center_crop: bool = False  # OFT/LIBERO eval: 90%-area center crop, resized back (TF crop_and_resize)
    vision_backbone_overrides: tuple[dict, ...] = ()  # tiny fixtures: per-branch ViT sizes (pruning: depth)
    # structured pruning (passes/prune): {stack: [[heads, kv_heads, mlp], ...]} of layers whose sizes the
    # native keys cannot express (non-uniform Llama layers, ViT heads / MLP widths)
    layer_sizes: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.normalization not in ("bounds_q99", "bounds"):
            raise ConfigError(f"vla_compress.normalization must be 'bounds_q99' or 'bounds', "
                              f"got {self.normalization!r}")
        for name in ("num_images_in_input", "num_actions_chunk"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ConfigError(f"vla_compress.{name} must be a positive integer, got {v!r}")

    def to_dict(self) -> dict:
        """Only what differs from the defaults (an untouched openvla-7b gets no extra key)."""
        d = asdict(self)
        d["cameras"] = list(self.cameras) if self.cameras else None
        d["vision_backbone_overrides"] = [dict(o) for o in self.vision_backbone_overrides]
        defaults = asdict(AdapterSettings())
        return {k: v for k, v in d.items() if v not in (None, [], ()) and v != defaults[k]}

    @classmethod
    def from_dict(cls, d: dict | None) -> "AdapterSettings":
        d = dict(d or {})
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown {SETTINGS_KEY} keys: {sorted(unknown)}")
        if d.get("cameras") is not None:
            d["cameras"] = tuple(str(c) for c in d["cameras"])
        d["vision_backbone_overrides"] = tuple(dict(o) for o in d.get("vision_backbone_overrides") or ())
        if d.get("layer_sizes") is not None:
            from ...checkpoint.layer_sizes import parse_layer_sizes

            d["layer_sizes"] = {k: [list(r) for r in v]
                                for k, v in parse_layer_sizes(d["layer_sizes"], SETTINGS_KEY).items()}
        return cls(**d)


@dataclass
class OpenVLAConfig:
    """Parsed config.json. `raw` is the file's dict, kept to write it back unchanged."""

    raw: dict
    vision: tuple[ViTSpec, ...]
    llama: dict  # complete LlamaConfig kwargs (4.40 defaults + the file's text_config)
    n_action_bins: int
    pad_to_multiple_of: int
    norm_stats: dict
    settings: AdapterSettings = field(default_factory=AdapterSettings)

    @property
    def use_fused_vision_backbone(self) -> bool:
        return len(self.vision) == 2

    @property
    def vision_dim(self) -> int:
        return sum(v.embed_dim for v in self.vision)

    @property
    def llm_dim(self) -> int:
        return int(self.llama["hidden_size"])

    @property
    def image_size(self) -> int:
        return self.vision[0].image_size

    @property
    def patches_per_image(self) -> int:
        return self.vision[0].num_patches

    @property
    def action_vocab_end(self) -> int:
        """OpenVLA's `vocab_size` for de-tokenisation: text vocab minus the padding to a multiple
        (32064 - 64 = 32000 for OpenVLA-7B); action tokens are the 256 ids just below it."""
        return int(self.llama["vocab_size"]) - self.pad_to_multiple_of

    @classmethod
    def from_dict(cls, d: dict) -> "OpenVLAConfig":
        if d.get("model_type") != "openvla":
            raise ConfigError(f"not an OpenVLA config (model_type={d.get('model_type')!r}, expected 'openvla')")
        # the native PrismaticConfig derives image_sizes from the backbone id and every saved config.json
        # holds both: a file without them is damaged, not a default
        require_keys(d, ("vision_backbone_id", "image_sizes"))
        settings = AdapterSettings.from_dict(d.get(SETTINGS_KEY))
        vid = d.get("vision_backbone_id")
        if vid not in VISION_BACKBONES:
            raise ConfigError(f"vision_backbone_id {vid!r} is not supported; supported: {', '.join(VISION_BACKBONES)}")
        timm_ids = list(d.get("timm_model_ids") or VISION_BACKBONES[vid])
        if not isinstance(d["image_sizes"], list) or not all(isinstance(x, int) for x in d["image_sizes"]):
            raise ConfigError(f"image_sizes: expected a list of integers, got {d['image_sizes']!r}")
        sizes = list(d["image_sizes"])
        acts = list(d.get("timm_override_act_layers") or [None] * len(timm_ids))
        if len(sizes) != len(timm_ids) or len(acts) != len(timm_ids) or len(timm_ids) not in (1, 2):
            raise ConfigError(f"timm_model_ids {timm_ids}, image_sizes {sizes} and timm_override_act_layers {acts} "
                              "must be lists of the same length (1, or 2 for a fused backbone)")
        fused = d.get("use_fused_vision_backbone")
        if fused is not None and bool(fused) != (len(timm_ids) == 2):
            raise ConfigError(f"use_fused_vision_backbone={fused} but {len(timm_ids)} timm_model_ids are given")
        if any(a not in (None, "gelu") for a in acts):
            raise ConfigError(f"timm_override_act_layers {acts} not supported (only exact GELU ViTs are implemented)")
        if len(set(sizes)) != 1:
            raise ConfigError(f"image_sizes {sizes} differ: fused branches are channel-stacked and must share a size")
        overrides = settings.vision_backbone_overrides
        if overrides and len(overrides) != len(timm_ids):
            raise ConfigError(f"{SETTINGS_KEY}.vision_backbone_overrides needs one entry per timm model id")
        vision = tuple(vit_spec(t, int(s), overrides[i] if overrides else None)
                       for i, (t, s) in enumerate(zip(timm_ids, sizes)))
        text = d.get("text_config") or {}
        if not isinstance(text, dict):
            raise ConfigError("text_config must be a JSON object (a LlamaConfig)")
        if text.get("model_type", "llama") != "llama":
            raise ConfigError(f"text_config.model_type {text.get('model_type')!r} is not supported (only 'llama')")
        llama = dict(LLAMA_4_40_DEFAULTS)
        llama.update({k: v for k, v in text.items() if k in _LLAMA_ARCH_KEYS})
        if llama["num_key_value_heads"] is None:
            llama["num_key_value_heads"] = llama["num_attention_heads"]
        n_bins = as_int(d, "n_action_bins", 256)
        pad_multiple = as_int(d, "pad_to_multiple_of", 0) if d.get("pad_to_multiple_of") is not None else 0
        if n_bins < 2 or pad_multiple < 0 or int(llama["vocab_size"]) - pad_multiple < n_bins:
            raise ConfigError(f"n_action_bins={n_bins} does not fit text_config.vocab_size={llama['vocab_size']} "
                              f"minus pad_to_multiple_of={pad_multiple}")
        norm_stats = d.get("norm_stats") or {}
        if not isinstance(norm_stats, dict):
            raise ConfigError("norm_stats must be a JSON object {dataset: {action: {...}, proprio: {...}}}")
        return cls(raw=copy.deepcopy(d), vision=vision, llama=llama, n_action_bins=n_bins,
                   pad_to_multiple_of=pad_multiple, norm_stats=norm_stats, settings=settings)

    def to_dict(self) -> dict:
        """The original config.json dict, with the current norm_stats and settings."""
        d = copy.deepcopy(self.raw)
        d.pop(SETTINGS_KEY, None)
        s = self.settings.to_dict()
        if s:
            d[SETTINGS_KEY] = s
        return d

    def with_settings(self, **changes: Any) -> "OpenVLAConfig":
        return replace(self, settings=replace(self.settings, **changes))


def vit_spec(timm_id: str, image_size: int, override: dict | None = None) -> ViTSpec:
    base = timm_id.split(".")[0]  # drop the pretrained tag (".lvd142m")
    if base not in _TIMM_VITS:
        raise ConfigError(f"timm model {timm_id!r} is not implemented; supported: {', '.join(_TIMM_VITS)}")
    args = dict(_TIMM_VITS[base])
    for k, v in (override or {}).items():
        if k not in _OVERRIDABLE:
            raise ConfigError(f"vision_backbone_overrides: {k!r} cannot be overridden (allowed: {_OVERRIDABLE})")
        args[k] = int(v)
    spec = ViTSpec(timm_id=timm_id, image_size=image_size, **args)
    if spec.embed_dim % spec.num_heads or spec.depth < 2 or image_size % spec.patch_size:
        raise ConfigError(f"{timm_id}: embed_dim must divide by num_heads, depth must be >= 2 and the image size "
                          f"({image_size}) a multiple of the patch size ({spec.patch_size})")
    return spec


def openvla_7b_config_dict(norm_stats: dict | None = None) -> dict:
    """The config.json of `openvla/openvla-7b` (huggingface.co/openvla/openvla-7b, rev 47a0ec7), except
    norm_stats: the real file holds ~30 OXE datasets; pass them, or get one placeholder 7-dof entry."""
    stats = norm_stats or {"bridge_orig": {
        "action": {"q01": [-0.03] * 6 + [0.0], "q99": [0.03] * 6 + [1.0], "mask": [True] * 6 + [False],
                   "min": [-0.4] * 6 + [0.0], "max": [0.4] * 6 + [1.0], "mean": [0.0] * 7, "std": [0.01] * 7},
        "proprio": {k: [0.0] * 7 for k in ("q01", "q99", "min", "max", "mean", "std")},
        "num_trajectories": 0, "num_transitions": 0}}
    return {
        "arch_specifier": "no-align+fused-gelu-mlp",
        "architectures": ["OpenVLAForActionPrediction"],
        "auto_map": {"AutoConfig": "configuration_prismatic.OpenVLAConfig",
                     "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction"},
        "hf_llm_id": "meta-llama/Llama-2-7b-hf",
        "image_resize_strategy": "resize-naive",
        "image_sizes": [224, 224],
        "llm_backbone_id": "llama2-7b-pure",
        "llm_max_length": 2048,
        "model_type": "openvla",
        "n_action_bins": 256,
        "norm_stats": stats,
        "output_projector_states": False,
        "pad_to_multiple_of": 64,
        "pad_token_id": 32000,
        "text_config": {"model_type": "llama", "pad_token_id": 32000, "torch_dtype": "bfloat16", "vocab_size": 32064},
        "timm_model_ids": ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"],
        "timm_override_act_layers": [None, None],
        "torch_dtype": "bfloat16",
        "transformers_version": "4.40.1",
        "use_fused_vision_backbone": True,
        "vision_backbone_id": "dinosiglip-vit-so-224px",
    }


# image processor statistics per timm model (timm pretrained_cfg: DINOv2 -> ImageNet mean/std,
# SigLIP -> 0.5/0.5), as written into openvla-7b's preprocessor_config.json
_TIMM_MEAN_STD = {
    "vit_large_patch14_reg4_dinov2": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "vit_so400m_patch14_siglip_224": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "vit_so400m_patch14_siglip_384": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def preprocessor_config_dict(cfg: OpenVLAConfig, resize_strategy: str | None = None) -> dict:
    """A `preprocessor_config.json` (PrismaticImageProcessor) for `cfg`, in the layout openvla-7b ships."""
    strategy = resize_strategy or cfg.raw.get("image_resize_strategy", "resize-naive")
    means = [list(_TIMM_MEAN_STD[v.timm_id.split(".")[0]][0]) for v in cfg.vision]
    stds = [list(_TIMM_MEAN_STD[v.timm_id.split(".")[0]][1]) for v in cfg.vision]
    sizes = [[3, v.image_size, v.image_size] for v in cfg.vision]
    return {
        "auto_map": {"AutoImageProcessor": "processing_prismatic.PrismaticImageProcessor",
                     "AutoProcessor": "processing_prismatic.PrismaticProcessor"},
        "image_processor_type": "PrismaticImageProcessor",
        "image_resize_strategy": strategy,
        "input_sizes": sizes,
        "interpolations": ["bicubic"] * len(cfg.vision),
        "means": means,
        "stds": stds,
        "processor_class": "PrismaticProcessor",
        "tvf_crop_params": [{"output_size": s[1:]} for s in sizes],
        "tvf_do_letterbox": strategy == "letterbox",
        "tvf_letterbox_fill": [int(x * 255) for x in means[-1]] if strategy == "letterbox" else None,
        "tvf_normalize_params": [{"inplace": False, "mean": m, "std": s} for m, s in zip(means, stds)],
        # resize-naive resizes to (S, S); the other strategies resize the shorter side to S
        "tvf_resize_params": [{"antialias": True, "interpolation": 3, "max_size": None,
                               "size": s[1:] if strategy == "resize-naive" else s[1]} for s in sizes],
        "use_fused_vision_backbone": cfg.use_fused_vision_backbone,
    }
