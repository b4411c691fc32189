"""Tiny random SmolVLA checkpoints in LeRobot's real layout, with a tiny SmolVLM directory beside them.

Tensor names and shapes are spelled out here from the checkpoint's rules (LeRobot's SmolVLAPolicy
state dict: `model.vlm_with_expert.vlm.model.{vision_model,connector,text_model}`, `...vlm.lm_head`,
`model.vlm_with_expert.lm_expert`, `model.state_proj`, `model.action_*`), independently of the
modules in modeling_*.py, so loading a fixture checks those modules against the format. As in
lerobot/smolvla_base, the VLM and expert layers are stored in bfloat16 and the expert's
cross-attention k/v projections and the action/state projections in float32; the text model keeps
only `num_vlm_layers` of the VLM config's layers.

The VLM directory holds what SmolVLA reads of SmolVLM2: config.json (model_type "smolvlm") and a
GPT-2-style byte-level BPE tokenizer (tokenizer.json + tokenizer_config.json) with SmolVLM's
special tokens. The policy's config.json names it by absolute path in `vlm_model_name`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ...fileio import save_safetensors, write_json
from ..common import Random as _Random
from ..lerobot_layout import EMPTY_CAMERA, tiny_stats, write_files  # noqa: F401  (re-exported)
from ..lerobot_layout import stats_bytes as _stats_bytes

TINY_VISION = {"model_type": "smolvlm_vision", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 2, "patch_size": 8, "image_size": 32, "layer_norm_eps": 1e-6,
               "hidden_act": "gelu_pytorch_tanh"}
TINY_TEXT = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 6,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-5,
             "vocab_size": 320, "hidden_act": "silu", "tie_word_embeddings": False}
TINY_SCALE = 2  # 4 x 4 patches of 8 px -> 2 x 2 = 4 visual tokens per camera
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ADDED = ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"]
TINY_POLICY = {
    "type": "smolvla", "n_obs_steps": 1,
    "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"},
    "input_features": {"observation.state": {"type": "STATE", "shape": [5]},
                       "observation.images.top": {"type": "VISUAL", "shape": [3, 24, 40]},
                       "observation.images.wrist": {"type": "VISUAL", "shape": [3, 32, 32]}},
    "output_features": {"action": {"type": "ACTION", "shape": [4]}},
    "device": "cpu", "use_amp": False, "push_to_hub": False, "repo_id": None,
    "chunk_size": 5, "n_action_steps": 3, "max_state_dim": 8, "max_action_dim": 8,
    "resize_imgs_with_padding": [32, 32], "empty_cameras": 0, "adapt_to_pi_aloha": False,
    "use_delta_joint_actions_aloha": False, "tokenizer_max_length": 12, "num_steps": 4, "use_cache": True,
    "freeze_vision_encoder": True, "train_expert_only": True, "train_state_proj": True, "optimizer_lr": 1e-4,
    "vlm_model_name": "HuggingFaceTB/SmolVLM2-500M-Video-Instruct", "load_vlm_weights": True,
    "add_image_special_tokens": False, "attention_mode": "cross_attn", "prefix_length": 0,
    "pad_language_to": "max_length", "num_expert_layers": 0, "num_vlm_layers": 4, "self_attn_every_n_layers": 2,
    "expert_width_multiplier": 0.75, "min_period": 0.004, "max_period": 4.0,
}
# LeRobot's SmolVLAConfig defaults where TINY_POLICY differs (its tokenizer step pads to the longest task)
LEROBOT_DEFAULTS = {"pad_language_to": "longest", "prefix_length": -1, "num_expert_layers": -1}
_CORPUS = ["pick up the object and place it at the goal", "reach to the target location", "open the drawer",
           "put the red cube in the box", "push the button", "close the door", "stack the blocks",
           "Pick up the cube and put it in the bowl.\n"]


def build_tiny_tokenizer():
    """SmolLM2-style tokenizer in miniature: byte-level BPE, no BOS/EOS added, SmolVLM's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 4, trainer)
    tok.add_special_tokens(ADDED)
    return tok


def vlm_config_dict(vision: dict | None = None, text: dict | None = None, scale_factor: int = TINY_SCALE) -> dict:
    return {"architectures": ["SmolVLMForConditionalGeneration"], "model_type": "smolvlm", "scale_factor": scale_factor,
            "image_token_id": 300 + ADDED.index("<image>"), "torch_dtype": "float32", "transformers_version": "4.51.3",
            "vision_config": {**TINY_VISION, **(vision or {})}, "text_config": {**TINY_TEXT, **(text or {})}}


def tiny_vlm_files(config: dict) -> dict[str, bytes]:
    """What SmolVLA reads of a SmolVLM directory: `config` as config.json, the tiny tokenizer, and
    the image / video / processor configs SmolVLM2 ships (carried, never read by vla-compress)."""
    special = {"bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>", "pad_token": "<|im_end|>",
               "unk_token": "<|endoftext|>"}
    files = {"tokenizer.json": build_tiny_tokenizer().to_str(pretty=True),
             "tokenizer_config.json": {**special, "add_prefix_space": False, "clean_up_tokenization_spaces": False,
                                       "model_max_length": 8192, "tokenizer_class": "GPT2Tokenizer",
                                       "processor_class": "SmolVLMProcessor",
                                       # as SmolVLM2's: LeRobot's SmolVLA reads tokenizer.fake_image_token_id etc.
                                       "extra_special_tokens": {"fake_image_token": "<fake_token_around_image>",
                                                                "image_token": "<image>",
                                                                "global_image_token": "<global-img>",
                                                                "end_of_utterance_token": "<end_of_utterance>"}},
             "special_tokens_map.json": {**special, "additional_special_tokens": ADDED},
             # SmolVLM2's processor settings: LeRobot's SmolVLMWithExpert builds AutoProcessor from this
             # folder (so it needs the image, video and processor configs), SmolVLA's policy reads none of them
             "preprocessor_config.json": {"image_processor_type": "SmolVLMImageProcessor",
                                          "processor_class": "SmolVLMProcessor", "do_convert_rgb": True,
                                          "do_resize": True, "size": {"longest_edge": 2048},
                                          "do_image_splitting": True, "max_image_size": {"longest_edge": 512},
                                          "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                                          "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                                          "do_pad": True, "resample": 1},
             "processor_config.json": {"processor_class": "SmolVLMProcessor", "image_seq_len": 64},
             "video_preprocessor_config.json": {"video_processor_type": "SmolVLMVideoProcessor",
                                                "processor_class": "SmolVLMProcessor", "fps": 1,
                                                "size": {"longest_edge": 512}, "do_resize": True},
             "config.json": config}
    return {k: (v if isinstance(v, str) else json.dumps(v, indent=2)).encode() for k, v in files.items()}


def write_tiny_vlm(path: str | Path, vision: dict | None = None, text: dict | None = None) -> Path:
    """A SmolVLM2-like directory: config.json and the tokenizer files (no weights: SmolVLA has them)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    write_files(tiny_vlm_files(vlm_config_dict(vision, text)), path)
    return path


# --------------------------------------------------------------------------------- processor files
def processor_files(policy: dict, stats: dict, normalize_observation_keys: list[str] | None = None) -> dict[str, bytes]:
    """policy_preprocessor.json / policy_postprocessor.json as LeRobot writes them for SmolVLA, and
    the statistics files (only when there are statistics, as LeRobot does). The normalizer step's
    config has `normalize_observation_keys` (sorted, as LeRobot's get_config writes it) when given."""
    feats = {**policy["input_features"], **policy["output_features"]}
    norm = {"eps": 1e-8, "features": feats, "norm_map": policy["normalization_mapping"]}
    out_feats = policy["output_features"]
    pre_stats = {k: v for k, v in stats.items() if k in feats}
    post_stats = {k: v for k, v in stats.items() if k in out_feats}
    pre_state, post_state = ("policy_preprocessor_step_5_normalizer_processor.safetensors",
                             "policy_postprocessor_step_0_unnormalizer_processor.safetensors")
    normalizer = {"registry_name": "normalizer_processor", "config": dict(norm)}
    if normalize_observation_keys is not None:
        normalizer["config"]["normalize_observation_keys"] = sorted(normalize_observation_keys)
    unnormalizer = {"registry_name": "unnormalizer_processor", "config": {**norm, "features": out_feats}}
    files = {}
    if pre_stats:
        normalizer["state_file"], files[pre_state] = pre_state, _stats_bytes(pre_stats)
    if post_stats:
        unnormalizer["state_file"], files[post_state] = post_state, _stats_bytes(post_stats)
    pre = {"name": "policy_preprocessor", "steps": [
        {"registry_name": "rename_observations_processor", "config": {"rename_map": {}}},
        {"registry_name": "to_batch_processor", "config": {}},
        {"registry_name": "smolvla_new_line_processor", "config": {}},
        {"registry_name": "tokenizer_processor", "config": {
            "max_length": policy["tokenizer_max_length"], "task_key": "task", "padding_side": "right",
            "padding": policy["pad_language_to"], "truncation": True, "tokenizer_name": policy["vlm_model_name"]}},
        {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}},
        normalizer]}
    post = {"name": "policy_postprocessor", "steps": [
        unnormalizer, {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}}]}
    files["policy_preprocessor.json"] = json.dumps(pre, indent=4).encode()
    files["policy_postprocessor.json"] = json.dumps(post, indent=4).encode()
    return files


# ------------------------------------------------------------------------------------------ weights
def _linear(t: dict, r: _Random, name: str, out_dim: int, in_dim: int, bias: bool = True) -> None:
    t[f"{name}.weight"] = r(out_dim, in_dim)
    if bias:
        t[f"{name}.bias"] = r(out_dim, kind="b")


def _llama_layer(t: dict, r: _Random, name: str, dim: int, inter: int, heads: int, kv: int, hd: int,
                 kv_in: int) -> None:
    t[f"{name}.input_layernorm.weight"] = r(dim, kind="norm")
    _linear(t, r, f"{name}.self_attn.q_proj", heads * hd, dim, bias=False)
    _linear(t, r, f"{name}.self_attn.k_proj", kv * hd, kv_in, bias=False)
    _linear(t, r, f"{name}.self_attn.v_proj", kv * hd, kv_in, bias=False)
    _linear(t, r, f"{name}.self_attn.o_proj", dim, heads * hd, bias=False)
    t[f"{name}.post_attention_layernorm.weight"] = r(dim, kind="norm")
    _linear(t, r, f"{name}.mlp.gate_proj", inter, dim, bias=False)
    _linear(t, r, f"{name}.mlp.up_proj", inter, dim, bias=False)
    _linear(t, r, f"{name}.mlp.down_proj", dim, inter, bias=False)


def smolvla_tensors(policy: dict, vlm: dict, seed: int) -> dict:
    """Every tensor of a SmolVLA model.safetensors for these configs (float32; see write_tiny_smolvla)."""
    r = _Random(seed)
    v, tx, s = vlm["vision_config"], vlm["text_config"], vlm["scale_factor"]
    t: dict = {}
    vm = "model.vlm_with_expert.vlm.model.vision_model"
    dv, p = v["hidden_size"], v["patch_size"]
    t[f"{vm}.embeddings.patch_embedding.weight"] = r(dv, 3, p, p)
    t[f"{vm}.embeddings.patch_embedding.bias"] = r(dv, kind="b")
    t[f"{vm}.embeddings.position_embedding.weight"] = r((v["image_size"] // p) ** 2, dv, kind="tok")
    for i in range(v["num_hidden_layers"]):
        b = f"{vm}.encoder.layers.{i}"
        for ln in ("layer_norm1", "layer_norm2"):
            t[f"{b}.{ln}.weight"], t[f"{b}.{ln}.bias"] = r(dv, kind="norm"), r(dv, kind="b")
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            _linear(t, r, f"{b}.self_attn.{proj}", dv, dv)
        _linear(t, r, f"{b}.mlp.fc1", v["intermediate_size"], dv)
        _linear(t, r, f"{b}.mlp.fc2", dv, v["intermediate_size"])
    t[f"{vm}.post_layernorm.weight"], t[f"{vm}.post_layernorm.bias"] = r(dv, kind="norm"), r(dv, kind="b")
    d, heads, kv, hd = tx["hidden_size"], tx["num_attention_heads"], tx["num_key_value_heads"], tx["head_dim"]
    _linear(t, r, "model.vlm_with_expert.vlm.model.connector.modality_projection.proj", d, dv * s * s, bias=False)
    tm = "model.vlm_with_expert.vlm.model.text_model"
    t[f"{tm}.embed_tokens.weight"] = r(tx["vocab_size"], d, kind="tok")
    n_vlm = min(policy["num_vlm_layers"], tx["num_hidden_layers"])
    for i in range(n_vlm):
        _llama_layer(t, r, f"{tm}.layers.{i}", d, tx["intermediate_size"], heads, kv, hd, d)
    t[f"{tm}.norm.weight"] = r(d, kind="norm")
    t["model.vlm_with_expert.vlm.lm_head.weight"] = r(tx["vocab_size"], d)
    w = int(d * policy["expert_width_multiplier"])
    inter = 256 * -(-(4 * int(2 * w / 3)) // 256)
    n_exp = policy["num_expert_layers"] if policy["num_expert_layers"] > 0 else n_vlm
    every = policy["self_attn_every_n_layers"]
    for j in range(n_exp):
        cross = "cross" in policy["attention_mode"] and not (every > 0 and j % every == 0)
        _llama_layer(t, r, f"model.vlm_with_expert.lm_expert.layers.{j}", w, inter, heads, kv, hd,
                     kv * hd if cross else w)
    t["model.vlm_with_expert.lm_expert.norm.weight"] = r(w, kind="norm")
    _linear(t, r, "model.state_proj", d, policy["max_state_dim"])
    _linear(t, r, "model.action_in_proj", w, policy["max_action_dim"])
    _linear(t, r, "model.action_out_proj", policy["max_action_dim"], w)
    _linear(t, r, "model.action_time_mlp_in", w, 2 * w)
    _linear(t, r, "model.action_time_mlp_out", w, w)
    return t


def stored_dtype(name: str, policy: dict) -> torch.dtype:
    """lerobot/smolvla_base's storage: float32 for the projections and for the expert's
    cross-attention k/v (LeRobot re-creates those after loading the bf16 VLM), bfloat16 elsewhere."""
    if name.startswith(("model.state_proj", "model.action_")):
        return torch.float32
    prefix = "model.vlm_with_expert.lm_expert.layers."
    if name.startswith(prefix) and name.endswith(("k_proj.weight", "v_proj.weight")):
        j, every = int(name[len(prefix):].split(".")[0]), policy["self_attn_every_n_layers"]
        if "cross" in policy["attention_mode"] and not (every > 0 and j % every == 0):
            return torch.float32
    return torch.bfloat16


def write_tiny_smolvla(path: str | Path, seed: int = 0, vlm_dir: str | Path | None = None, stats: bool = True,
                       dtype: str = "mixed", vision: dict | None = None, text: dict | None = None,
                       normalization: str | dict | None = None,
                       normalize_observation_keys: list[str] | None = None, **policy_overrides) -> Path:
    """A tiny SmolVLA checkpoint directory at `path` and its VLM directory (default `<path>-vlm`).

    `policy_overrides` replace config.json keys (attention_mode, num_expert_layers, pad_language_to,
    add_image_special_tokens, empty_cameras, input_features, prefix_length, ...); `**LEROBOT_DEFAULTS`
    gives what LeRobot's SmolVLAConfig defaults to where this fixture differs (padding to the
    longest task). `empty_cameras: N` declares LeRobot's N `observation.images.empty_camera_<i>`
    features (3 x 480 x 640, as SmolVLAConfig.validate_features adds them; no statistics).
    `normalization`: one mode (IDENTITY, MEAN_STD, MIN_MAX, QUANTILES, QUANTILE10) for every
    feature type, or a {type: mode} dict over normalization_mapping. `stats`: write the statistics
    files (every stat for every feature, images per channel). `normalize_observation_keys`: the
    normalizer step's key filter. `dtype`: "mixed" stores tensors as lerobot/smolvla_base and
    LeRobot's save_pretrained do (bf16 VLM and expert, f32 projections and cross-attention k/v),
    "bfloat16" every tensor in bf16, "float32" every tensor in float32."""
    if dtype not in ("mixed", "bfloat16", "float32"):
        raise ValueError(f"dtype must be 'mixed', 'bfloat16' or 'float32', got {dtype!r}")
    path = Path(path)
    vlm_path = Path(vlm_dir) if vlm_dir is not None else path.with_name(path.name + "-vlm")
    write_tiny_vlm(vlm_path, vision, text)
    policy = {**TINY_POLICY, **policy_overrides, "vlm_model_name": str(vlm_path.resolve())}
    if normalization is not None:
        modes = ({t: normalization for t in ("VISUAL", "STATE", "ACTION")} if isinstance(normalization, str)
                 else dict(normalization))
        policy["normalization_mapping"] = {**policy["normalization_mapping"], **modes}
    policy["input_features"] = {**policy["input_features"], **{
        f"{EMPTY_CAMERA}{i}": {"type": "VISUAL", "shape": [3, 480, 640]} for i in range(int(policy["empty_cameras"]))}}
    vlm = json.loads((vlm_path / "config.json").read_text())
    path.mkdir(parents=True, exist_ok=True)
    tensors = smolvla_tensors(policy, vlm, seed)
    if dtype != "float32":
        tensors = {k: v.to(stored_dtype(k, policy) if dtype == "mixed" else torch.bfloat16) for k, v in tensors.items()}
    save_safetensors(tensors, path / "model.safetensors", metadata={"format": "pt"})
    write_files(processor_files(policy, tiny_stats(policy, seed) if stats else {}, normalize_observation_keys), path)
    write_json(path / "train_config.json", {"dataset": {"repo_id": "tiny/fixture"}, "steps": 0, "seed": seed})
    write_json(path / "config.json", policy)
    return path
