"""What a π0 / π0.5 checkpoint directory holds besides its weights, as LeRobot 0.6 writes it: the
config.json shapes of lerobot/pi0_base and pi05_base, the two processor pipelines (with their
statistics files), and a tiny local PaliGemma-style tokenizer folder (a byte-level BPE tokenizer.json
with Gemma's special tokens <pad> 0, <eos> 1, <bos> 2, <unk> 3, <bos> added in front, and
tokenizer_config.json). Used by the presets (identity statistics) and by the fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..lerobot_layout import stats_bytes as _stats_bytes
from ..lerobot_layout import write_files

SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>"]
TINY_ARCH = {"vision": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 2, "patch_size": 8},
             "paligemma": {"width": 64, "depth": 2, "mlp_dim": 128, "num_heads": 2, "num_kv_heads": 1, "head_dim": 16},
             "action_expert": {"width": 32, "depth": 2, "mlp_dim": 64, "num_heads": 2, "num_kv_heads": 1,
                               "head_dim": 16},
             "vocab_size": 320}
_CORPUS = ["pick up the object and place it at the goal", "reach to the target location", "open the drawer",
           "Task: put the red cube in the box, State: 0 12 127 128 200 255 31 64 99;\nAction: ",
           "push the button", "close the door", "stack the blocks", "Pick up the cube and put it in the bowl.\n"]


def _common(kind: str) -> dict:
    mode = "MEAN_STD" if kind == "pi0" else "QUANTILES"
    return {"type": kind, "n_obs_steps": 1, "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": mode, "ACTION": mode},
            "device": "cpu", "use_amp": False, "push_to_hub": False, "repo_id": None, "private": None, "tags": None,
            "license": None, "pretrained_path": None, "paligemma_variant": "gemma_2b",
            "action_expert_variant": "gemma_300m", "dtype": "bfloat16", "chunk_size": 50, "n_action_steps": 50,
            "max_state_dim": 32, "max_action_dim": 32, "num_inference_steps": 10, "time_sampling_beta_alpha": 1.5,
            "time_sampling_beta_beta": 1.0, "time_sampling_scale": 0.999, "time_sampling_offset": 0.001,
            "min_period": 0.004, "max_period": 4.0, "use_relative_actions": False,
            "relative_exclude_joints": ["gripper"], "action_feature_names": None, "rtc_config": None,
            "image_resolution": [224, 224], "empty_cameras": 0, "gradient_checkpointing": False,
            "compile_model": False, "compile_mode": "max-autotune", "freeze_vision_encoder": False,
            "train_expert_only": False, "optimizer_lr": 2.5e-05, "optimizer_betas": [0.9, 0.95],
            "optimizer_eps": 1e-08, "optimizer_weight_decay": 0.01, "optimizer_grad_clip_norm": 1.0,
            "scheduler_warmup_steps": 1000, "scheduler_decay_steps": 30000, "scheduler_decay_lr": 2.5e-06,
            "tokenizer_max_length": 48 if kind == "pi0" else 200}


def base_policy_config(kind: str = "pi0") -> dict:
    """lerobot/pi0_base's / pi05_base's config.json shape: three 224 x 224 cameras, 32-d state/action."""
    cams = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
    return {**_common(kind),
            "input_features": {**{f"observation.images.{c}": {"type": "VISUAL", "shape": [3, 224, 224]} for c in cams},
                               "observation.state": {"type": "STATE", "shape": [32]}},
            "output_features": {"action": {"type": "ACTION", "shape": [32]}}}


def tiny_policy_config(kind: str = "pi0") -> dict:
    return {**_common(kind), "dtype": "float32", "chunk_size": 5, "n_action_steps": 3, "max_state_dim": 8,
            "max_action_dim": 8, "num_inference_steps": 4, "image_resolution": [16, 16],
            "tokenizer_max_length": 12 if kind == "pi0" else 64,
            "input_features": {"observation.state": {"type": "STATE", "shape": [5]},
                               "observation.images.base_0_rgb": {"type": "VISUAL", "shape": [3, 24, 40]},
                               "observation.images.wrist": {"type": "VISUAL", "shape": [3, 16, 16]}},
            "output_features": {"action": {"type": "ACTION", "shape": [4]}},
            "vla_compress": {"architecture": json.loads(json.dumps(TINY_ARCH))}}


# --------------------------------------------------------------------------------------- tokenizer
def build_tiny_tokenizer():
    """A BPE in the form of Gemma's own tokenizer.json (spaces normalised to "\u2581", no pre-tokenizer,
    byte fallback, fused unknowns, Gemma's special-token ids, <bos> prepended), so the `tokenizers`
    library reading the file and transformers 5's `GemmaTokenizer` (which rebuilds Gemma's pipeline
    around the file's vocabulary, as LeRobot loads it) give the same ids."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    # trained word by word (no piece spans a "\u2581"), so the saved file needs no pre-tokenizer, as Gemma's
    tok.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=[chr(c) for c in range(32, 127)] + ["\n", "\u2581"])
    tok.train_from_iterator(_CORPUS * 4, trainer)
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                       special_tokens=[("<bos>", tok.token_to_id("<bos>"))])
    return tok


def tokenizer_files() -> dict[str, bytes]:
    conf = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
            "add_bos_token": True, "add_eos_token": False, "padding_side": "right", "model_max_length": 1000000,
            "tokenizer_class": "GemmaTokenizer", "processor_class": "PaliGemmaProcessor"}
    special = {k: conf[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    return {"tokenizer.json": build_tiny_tokenizer().to_str(pretty=True).encode(),
            "tokenizer_config.json": json.dumps(conf, indent=2).encode(),
            "special_tokens_map.json": json.dumps(special, indent=2).encode()}


def write_tiny_tokenizer(folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_files(tokenizer_files(), folder)
    return folder


# --------------------------------------------------------------------------------- processor files
def processor_files(policy: dict, stats: dict, tokenizer_name: str = "google/paligemma-3b-pt-224") -> dict[str, bytes]:
    """policy_preprocessor.json / policy_postprocessor.json as LeRobot 0.6 writes them for π0 / π0.5,
    and the statistics files (only when there are statistics, as LeRobot does)."""
    kind = policy["type"]
    feats = {**policy["input_features"], **policy["output_features"]}
    norm = {"eps": 1e-8, "features": feats, "norm_map": policy["normalization_mapping"]}
    out_feats = policy["output_features"]
    pre_stats = {k: v for k, v in stats.items() if k in feats}
    post_stats = {k: v for k, v in stats.items() if k in out_feats}
    rename = {"registry_name": "rename_observations_processor", "config": {"rename_map": {}}}
    batch = {"registry_name": "to_batch_processor", "config": {}}
    device = {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}}
    relative_on = bool(policy.get("use_relative_actions"))  # LeRobot's factory: both steps follow the config
    relative = {"registry_name": "relative_actions_processor",
                "config": {"enabled": relative_on, "exclude_joints": list(policy.get("relative_exclude_joints") or []),
                           "action_names": policy.get("action_feature_names")}}
    tokenizer = {"registry_name": "tokenizer_processor", "config": {
        "max_length": policy["tokenizer_max_length"], "task_key": "task", "padding_side": "right",
        "padding": "max_length", "truncation": True, "tokenizer_name": tokenizer_name}}
    normalizer = {"registry_name": "normalizer_processor", "config": norm}
    unnormalizer = {"registry_name": "unnormalizer_processor", "config": {**norm, "features": out_feats}}
    if kind == "pi0":
        pre = [rename, batch, {"registry_name": "pi0_new_line_processor", "config": {}}, tokenizer, device, relative,
               normalizer]
    else:
        pre = [rename, batch, relative, normalizer, {"registry_name": "pi05_prepare_state_tokenizer_processor_step",
                                                     "config": {"max_state_dim": policy["max_state_dim"],
                                                                "task_key": "task"}}, tokenizer, device]
    post = [unnormalizer, {"registry_name": "absolute_actions_processor", "config": {"enabled": relative_on}}, device]
    files = {}
    i_norm, i_unnorm = pre.index(normalizer), 0
    if pre_stats:
        name = f"policy_preprocessor_step_{i_norm}_normalizer_processor.safetensors"
        normalizer["state_file"], files[name] = name, _stats_bytes(pre_stats)
    if post_stats:
        name = f"policy_postprocessor_step_{i_unnorm}_unnormalizer_processor.safetensors"
        unnormalizer["state_file"], files[name] = name, _stats_bytes(post_stats)
    files["policy_preprocessor.json"] = json.dumps({"name": "policy_preprocessor", "steps": pre}, indent=4).encode()
    files["policy_postprocessor.json"] = json.dumps({"name": "policy_postprocessor", "steps": post}, indent=4).encode()
    return files


def stored_dtype(name: str) -> Any:
    """LeRobot's `dtype: bfloat16` storage: bf16 inside paligemma_with_expert but for the vision path
    and every norm (its params_to_keep_float32 selectors, matched as substrings), float32 outside."""
    import torch

    if not name.startswith("model.paligemma_with_expert."):
        return torch.float32
    keep = ("vision_tower", "multi_modal_projector", "input_layernorm", "post_attention_layernorm", "model.norm")
    return torch.float32 if any(k in name for k in keep) else torch.bfloat16


def normalize_keys(state: dict, kind: str) -> dict:
    """Tensor names as LeRobot's loader remaps them (its _fix_pytorch_state_dict_keys): a missing
    "model." prefix is added (checkpoints converted from openpi), π0's time MLP may be stored as
    time_mlp_* and π0.5's as action_time_mlp_*, and a π0.5 file's unused state_proj is dropped."""
    out: dict = {}
    mine, other = ("action_time_mlp_", "time_mlp_") if kind == "pi0" else ("time_mlp_", "action_time_mlp_")
    for name, value in state.items():
        key = name if name.startswith("model.") else f"model.{name}"
        if key.startswith(f"model.{other}"):
            key = f"model.{mine}" + key[len(f"model.{other}"):]
        if kind == "pi05" and key.startswith("model.state_proj."):
            continue
        if key in out:
            raise ValueError(f"tensors {out[key][0]!r} and {name!r} both map to {key!r} (LeRobot's renaming)")
        out[key] = (name, value)
    return {k: v for k, (_, v) in out.items()}
