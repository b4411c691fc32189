"""Tiny random OpenVLA / OpenVLA-OFT checkpoints written in the real Hugging Face layout.

The tensor names and shapes are spelled out here from the checkpoint's rules (timm ViT naming with
`ls*.scale_factor`, Prismatic projector, HF Llama, OFT's MLPResNet head and proprio projector),
independently of the modules in modeling_*.py, so loading a fixture checks those modules against
the format rather than against themselves. Only sizes are tiny: they are recorded in config.json's
`text_config` (as a real file would) and, for the ViTs, in `vla_compress.vision_backbone_overrides`.
The tokenizer is a small Llama-style BPE (byte fallback, "▁" word prefix, <s>/</s>/<unk> at 0-2,
<PAD> appended) built with the `tokenizers` library. Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ...fileio import save_safetensors, write_json, write_text
from ..common import Random as _Random
from .configuration_openvla import PROMPT_TEMPLATE, OpenVLAConfig, preprocessor_config_dict

TINY_VOCAB = 512  # base tokenizer vocab (a multiple of 64, like Llama-2's 32000); <PAD> is id 512
TINY_VITS = ({"embed_dim": 32, "depth": 3, "num_heads": 2, "mlp_dim": 64},   # DINOv2 branch
             {"embed_dim": 48, "depth": 3, "num_heads": 2, "mlp_dim": 96})   # SigLIP branch
TINY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 4}
TINY_IMAGE = 42  # 3 x 3 patches of 14 px
_CORPUS = ["pick up the object and place it at the goal", "reach to the target location", "open the drawer",
           "put the bowl on the plate", "push the button", "close the door", "pick up the black bowl",
           "put both the alphabet soup and the tomato sauce in the basket"]


def build_tiny_tokenizer(base_vocab: int = TINY_VOCAB):
    """A Llama-2-style tokenizer.json in miniature: BPE with byte fallback (<0x00>..<0xFF> at ids 3-258),
    normalizer Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer, "<s> $A" post-processor."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers, decoders

    text = [PROMPT_TEMPLATE.format(instruction=i) for i in _CORPUS]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")  # training only
    alphabet = [chr(c) for c in range(33, 127)] + ["\u2581", "\n"]
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(text, trainer)
    spec = json.loads(tok.to_str())
    learned = [t for t, _ in sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1]) if t not in
               ("<unk>", "<s>", "</s>")]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + learned
    tokens += [f"<unused_{i}>" for i in range(base_vocab - len(tokens))]  # stand-ins for rare tokens
    spec["model"]["vocab"] = {t: i for i, t in enumerate(tokens)}
    spec["pre_tokenizer"] = None  # merges never cross a "▁", so whole-string BPE == per-word BPE
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<PAD>"])
    return tok


def _stats(dim: int, proprio_dim: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    lo = (-0.5 - torch.rand(dim, generator=g)).tolist()
    hi = (0.5 + torch.rand(dim, generator=g)).tolist()
    plo = (-1.0 - torch.rand(proprio_dim, generator=g)).tolist()
    phi = (0.2 + torch.rand(proprio_dim, generator=g)).tolist()
    action = {"q01": lo, "q99": hi, "min": [x - 0.1 for x in lo], "max": [x + 0.1 for x in hi],
              "mean": [0.0] * dim, "std": [1.0] * dim, "mask": [True] * (dim - 1) + [False]}
    proprio = {"q01": plo, "q99": phi, "min": [x - 0.1 for x in plo], "max": [x + 0.1 for x in phi],
               "mean": [0.0] * proprio_dim, "std": [1.0] * proprio_dim}
    return {"action": action, "proprio": proprio, "num_trajectories": 10, "num_transitions": 100}


def tiny_config_dict(norm_stats: dict, vision_backbone_id: str = "dinosiglip-vit-so-224px",
                     settings: dict | None = None) -> dict:
    """config.json of a tiny OpenVLA: openvla-7b's keys, tiny sizes."""
    fused = vision_backbone_id.startswith("dinosiglip")
    timm = (["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"] if fused
            else ["vit_so400m_patch14_siglip_224"])
    vocab = -(-(TINY_VOCAB + 1) // 64) * 64  # tokenizer + <PAD>, padded to a multiple of 64 (576)
    cfg = {
        "arch_specifier": "no-align+fused-gelu-mlp" if fused else "no-align+gelu-mlp",
        "architectures": ["OpenVLAForActionPrediction"],
        "auto_map": {"AutoConfig": "configuration_prismatic.OpenVLAConfig",
                     "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction"},
        "hf_llm_id": "meta-llama/Llama-2-7b-hf", "image_resize_strategy": "resize-naive",
        "image_sizes": [TINY_IMAGE] * len(timm), "llm_backbone_id": "llama2-7b-pure", "llm_max_length": 2048,
        "model_type": "openvla", "n_action_bins": 256, "norm_stats": norm_stats, "output_projector_states": False,
        "pad_to_multiple_of": 64, "pad_token_id": TINY_VOCAB,
        "text_config": {"model_type": "llama", "pad_token_id": TINY_VOCAB, "torch_dtype": "float32",
                        "vocab_size": vocab, **TINY_TEXT},
        "timm_model_ids": timm, "timm_override_act_layers": [None] * len(timm), "torch_dtype": "float32",
        "transformers_version": "4.40.1", "use_fused_vision_backbone": fused, "vision_backbone_id": vision_backbone_id,
        "vla_compress": {"vision_backbone_overrides": list(TINY_VITS if fused else TINY_VITS[1:]), **(settings or {})},
    }
    return cfg


def _linear(t: dict, r: _Random, name: str, out_dim: int, in_dim: int, bias: bool = True) -> None:
    t[f"{name}.weight"] = r(out_dim, in_dim)
    if bias:
        t[f"{name}.bias"] = r(out_dim, kind="b")


def _layernorm(t: dict, r: _Random, name: str, dim: int) -> None:
    t[f"{name}.weight"], t[f"{name}.bias"] = r(dim, kind="norm"), r(dim, kind="b")


def vit_tensors(prefix: str, dim: int, depth: int, mlp: int, n_patches: int, dinov2: bool, r: _Random) -> dict:
    """timm VisionTransformer state dict: DINOv2-reg4 (cls + 4 registers, pos_embed over patches only,
    LayerScale as `scale_factor`) or SigLIP (no cls, pos_embed over patches, attn_pool head)."""
    t: dict = {}
    t[f"{prefix}.patch_embed.proj.weight"] = r(dim, 3, 14, 14)
    t[f"{prefix}.patch_embed.proj.bias"] = r(dim, kind="b")
    if dinov2:
        t[f"{prefix}.cls_token"] = r(1, 1, dim, kind="tok")
        t[f"{prefix}.reg_token"] = r(1, 4, dim, kind="tok")
    t[f"{prefix}.pos_embed"] = r(1, n_patches, dim, kind="tok")
    for i in range(depth):
        b = f"{prefix}.blocks.{i}"
        _layernorm(t, r, f"{b}.norm1", dim)
        _linear(t, r, f"{b}.attn.qkv", 3 * dim, dim)
        _linear(t, r, f"{b}.attn.proj", dim, dim)
        _layernorm(t, r, f"{b}.norm2", dim)
        _linear(t, r, f"{b}.mlp.fc1", mlp, dim)
        _linear(t, r, f"{b}.mlp.fc2", dim, mlp)
        if dinov2:
            t[f"{b}.ls1.scale_factor"] = r(dim, kind="scale")
            t[f"{b}.ls2.scale_factor"] = r(dim, kind="scale")
    _layernorm(t, r, f"{prefix}.norm", dim)
    if not dinov2:
        a = f"{prefix}.attn_pool"
        t[f"{a}.latent"] = r(1, 1, dim, kind="tok")
        _linear(t, r, f"{a}.q", dim, dim)
        _linear(t, r, f"{a}.kv", 2 * dim, dim)
        _linear(t, r, f"{a}.proj", dim, dim)
        _layernorm(t, r, f"{a}.norm", dim)
        _linear(t, r, f"{a}.mlp.fc1", mlp, dim)
        _linear(t, r, f"{a}.mlp.fc2", dim, mlp)
    return t


def llama_tensors(vocab: int, d: int, ff: int, layers: int, r: _Random, action_end: int) -> dict:
    """HF LlamaForCausalLM under `language_model.` (untied lm_head). The action-token rows of the LM head
    are scaled up so greedy decoding of a random model lands on action tokens, as a trained one does."""
    t: dict = {"language_model.model.embed_tokens.weight": r(vocab, d, kind="tok")}
    for i in range(layers):
        b = f"language_model.model.layers.{i}"
        for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
            _linear(t, r, f"{b}.self_attn.{p}", d, d, bias=False)
        _linear(t, r, f"{b}.mlp.gate_proj", ff, d, bias=False)
        _linear(t, r, f"{b}.mlp.up_proj", ff, d, bias=False)
        _linear(t, r, f"{b}.mlp.down_proj", d, ff, bias=False)
        t[f"{b}.input_layernorm.weight"] = r(d, kind="norm")
        t[f"{b}.post_attention_layernorm.weight"] = r(d, kind="norm")
    t["language_model.model.norm.weight"] = r(d, kind="norm")
    head = r(vocab, d)
    head[action_end - 256: action_end] *= 6.0
    t["language_model.lm_head.weight"] = head
    return t


def write_tiny_openvla(path: str | Path, seed: int = 0, vision_backbone_id: str = "dinosiglip-vit-so-224px",
                       norm_stats: dict | None = None, dataset_statistics: dict | None = None,
                       settings: dict | None = None, max_shard_bytes: int = 400_000) -> Path:
    """A tiny OpenVLA checkpoint directory (several safetensors shards + index). By default its
    norm_stats hold two 7-dof datasets, like openvla-7b's, so `unnorm_key` must be chosen."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    stats = norm_stats or {"bridge_orig": _stats(7, 7, seed), "fractal20220817_data": _stats(7, 7, seed + 1)}
    cfg_dict = tiny_config_dict(stats, vision_backbone_id, settings)
    cfg = OpenVLAConfig.from_dict(cfg_dict)
    r = _Random(seed)
    t: dict = {}
    n_patches = (TINY_IMAGE // 14) ** 2
    vis = list(zip(TINY_VITS, ("featurizer", "fused_featurizer")))
    if not cfg.use_fused_vision_backbone:
        vis = [(TINY_VITS[1], "featurizer")]
    for v, name in vis:
        t.update(vit_tensors(f"vision_backbone.{name}", v["embed_dim"], v["depth"], v["mlp_dim"], n_patches,
                             dinov2=v is TINY_VITS[0], r=r))
    vd, d = sum(v["embed_dim"] for v, _ in vis), TINY_TEXT["hidden_size"]
    if cfg.use_fused_vision_backbone:
        _linear(t, r, "projector.fc1", 4 * vd, vd)
        _linear(t, r, "projector.fc2", d, 4 * vd)
        _linear(t, r, "projector.fc3", d, d)
    else:
        _linear(t, r, "projector.fc1", d, vd)
        _linear(t, r, "projector.fc2", d, d)
    t.update(llama_tensors(cfg.llama["vocab_size"], d, TINY_TEXT["intermediate_size"],
                           TINY_TEXT["num_hidden_layers"], r, cfg.action_vocab_end))
    _write_shards(t, path, max_shard_bytes)
    _write_tokenizer(path)
    write_json(path / "preprocessor_config.json", preprocessor_config_dict(cfg))
    write_json(path / "generation_config.json", {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": TINY_VOCAB,
                                                 "transformers_version": "4.40.1"})
    if dataset_statistics is not None:
        write_json(path / "dataset_statistics.json", dataset_statistics)
    write_json(path / "config.json", cfg_dict)
    return path


def write_tiny_openvla_oft(path: str | Path, seed: int = 0, action_dim: int = 7, proprio_dim: int = 8,
                           chunk_size: int | None = None, num_images: int | None = None, ddp_prefix: bool = True,
                           step: str = "150000_checkpoint.pt", **kwargs) -> Path:
    """A tiny OpenVLA-OFT checkpoint: the OpenVLA files, dataset_statistics.json of the fine-tuning
    dataset, and `action_head--<step>` / `proprio_projector--<step>` saved with torch.save as plain
    state dicts (DDP "module." prefix by default, as finetune.py writes them). proprio_dim=0: no
    proprio. chunk_size / num_images None: left for the loader to infer (OFT's platform table)."""
    settings = {k: v for k, v in (("num_actions_chunk", chunk_size), ("num_images_in_input", num_images))
                if v is not None}
    stats = {"libero_spatial_no_noops": _stats(action_dim, max(proprio_dim, 1), seed + 7)}
    path = write_tiny_openvla(path, seed, dataset_statistics=stats, settings=settings, **kwargs)
    r = _Random(seed + 100)
    d = TINY_TEXT["hidden_size"]
    head: dict = {}
    _layernorm(head, r, "model.layer_norm1", d * action_dim)
    _linear(head, r, "model.fc1", d, d * action_dim)
    for i in range(2):
        _layernorm(head, r, f"model.mlp_resnet_blocks.{i}.ffn.0", d)
        _linear(head, r, f"model.mlp_resnet_blocks.{i}.ffn.1", d, d)
    _layernorm(head, r, "model.layer_norm2", d)
    _linear(head, r, "model.fc2", action_dim, d)
    prefix = "module." if ddp_prefix else ""
    torch.save({prefix + k: v for k, v in head.items()}, path / f"action_head--{step}")
    if proprio_dim:
        prop: dict = {}
        _linear(prop, r, "fc1", d, proprio_dim)
        _linear(prop, r, "fc2", d, d)
        torch.save({prefix + k: v for k, v in prop.items()}, path / f"proprio_projector--{step}")
    return path


def _write_shards(tensors: dict, path: Path, max_shard_bytes: int) -> None:
    shards: list[dict] = [{}]
    size = 0
    for k, v in tensors.items():
        n = v.numel() * v.element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += n
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_safetensors(shard, path / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(v.numel() * v.element_size() for v in tensors.values())
    write_json(path / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})


def _write_tokenizer(path: Path) -> None:
    tok = build_tiny_tokenizer()
    write_text(path / "tokenizer.json", tok.to_str(pretty=True))
    special = {name: {"content": tokn, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
               for name, tokn in (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"),
                                  ("pad_token", "<PAD>"))}
    write_json(path / "special_tokens_map.json", special)
    write_json(path / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": "<PAD>", "clean_up_tokenization_spaces": False, "legacy": False, "model_max_length": 2048,
        "padding_side": "right", "processor_class": "PrismaticProcessor", "tokenizer_class": "LlamaTokenizer",
        "use_default_system_prompt": False,
    })
