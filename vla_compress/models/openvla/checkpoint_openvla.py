"""Files of an OpenVLA / OpenVLA-OFT checkpoint directory (the Hugging Face layout).

    config.json                          model_type "openvla" (configuration_openvla.py)
    model.safetensors.index.json         {"metadata": {"total_size"}, "weight_map": {tensor: shard}}
    model-0000k-of-0000n.safetensors     the shards (or a single model.safetensors)
    preprocessor_config.json             PrismaticImageProcessor settings
    tokenizer.json, tokenizer_config.json, special_tokens_map.json (tokenizer.model: copied through)
    dataset_statistics.json              optional; replaces config.json's norm_stats (fine-tuned models)
    action_head--<step>_checkpoint.pt    OFT: L1RegressionActionHead state dict (torch.save, often
    proprio_projector--<step>_checkpoint.pt  with DDP's "module." prefix)

Small side files are carried through a save unchanged (`PASSTHROUGH`); the remote-code .py files
are copied as bytes and never executed.
"""

from __future__ import annotations

import re
from pathlib import Path

from ...errors import CheckpointError
from ...fileio import (atomic_path, load_safetensors, load_torch_state_dict, missing_weights, pickle_weights_beside,
                       read_json, save_safetensors, write_json)

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
PASSTHROUGH = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
               "added_tokens.json", "generation_config.json", "preprocessor_config.json", "processor_config.json",
               "dataset_statistics.json", "configuration_prismatic.py", "modeling_prismatic.py",
               "processing_prismatic.py", "README.md")
OFT_PARTS = ("action_head", "proprio_projector")
UNSUPPORTED_PARTS = {"vision_backbone": "FiLM vision backbones", "noisy_action_projector": "diffusion action heads"}


def read_weights(path: Path) -> tuple[dict, Path]:
    """All tensors of the sharded (or single-file) safetensors checkpoint, and the file to blame."""
    index_file = path / INDEX
    if not index_file.is_file():
        if (path / SINGLE).is_file():
            return load_safetensors(path / SINGLE), path / SINGLE
        if pickle_weights_beside(path / SINGLE):  # e.g. a pytorch_model.bin: name it
            raise missing_weights(path / SINGLE)
        raise CheckpointError(index_file, f"file not found (nor {SINGLE}): no weights in this checkpoint")
    index = read_json(index_file)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(index_file, "expected {'weight_map': {tensor: shard file}}")
    state: dict = {}
    for shard in sorted(set(weight_map.values())):
        if not isinstance(shard, str) or Path(shard).name != shard:
            raise CheckpointError(index_file, f"shard name {shard!r} must be a plain file name")
        tensors = load_safetensors(path / shard)
        listed = {k for k, v in weight_map.items() if v == shard}
        missing, unlisted = sorted(listed - set(tensors)), sorted(set(tensors) - listed)
        if missing:
            raise CheckpointError(path / shard, f"lacks tensors the index assigns to it: {missing[:5]}")
        if unlisted:
            raise CheckpointError(path / shard, f"holds tensors the index does not list: {unlisted[:5]}")
        state.update(tensors)
    return state, index_file


def write_weights(state: dict, path: Path, max_shard_bytes: int = 5 * 1024**3) -> None:
    """Shards in state-dict order, each up to `max_shard_bytes` (HF's 5 GB default), plus the index."""
    shards: list[dict] = [{}]
    size = 0
    for name, t in state.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += n
    total = len(shards)
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{total:05d}.safetensors"
        save_safetensors(shard, path / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total_size = sum(t.numel() * t.element_size() for t in state.values())
    write_json(path / INDEX, {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))})
    written = set(weight_map.values())
    for old in list(path.glob("model-*-of-*.safetensors")) + [path / SINGLE]:
        if old.is_file() and old.name not in written:
            old.unlink()  # stale weights from an earlier save (another shard count) would shadow the index


def find_part(path: Path, part: str) -> Path | None:
    """The one `<part>--*.pt` file (OFT's naming), None if absent; several is an error."""
    found = sorted(p for p in path.glob(f"{part}--*.pt") if p.is_file())
    if len(found) > 1:
        raise CheckpointError(path, f"several {part} files ({[p.name for p in found]}); keep exactly one")
    return found[0] if found else None


def check_supported_parts(path: Path) -> None:
    for part, what in UNSUPPORTED_PARTS.items():
        f = find_part(path, part)
        if f is not None:
            raise CheckpointError(f, f"OpenVLA-OFT {what} are not supported")


def read_part(file: Path, allow_pickle: bool) -> tuple[dict, bool]:
    """An OFT component state dict, loaded with weights_only unless pickles are allowed; the DDP
    "module." prefix is stripped (and reported, to write it back the same way)."""
    import torch

    state = load_torch_state_dict(file, allow_pickle=allow_pickle)
    if allow_pickle and isinstance(state, torch.nn.Module):  # a whole pickled module, trusted by the user
        state = state.state_dict()
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(file, "expected a state dict of tensors")
    prefixed = bool(state) and all(k.startswith("module.") for k in state)
    return ({k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}, prefixed)


def write_part(state: dict, file: Path, prefixed: bool) -> None:
    import torch

    state = {("module." + k if prefixed else k): v.detach().contiguous().clone() for k, v in state.items()}
    with atomic_path(file) as tmp:
        torch.save(state, tmp)


def part_name(part: str, source_name: str | None) -> str:
    """Keep the loaded file's suffix (`action_head--150000_checkpoint.pt`), else OFT's 'latest'."""
    if source_name:
        m = re.match(rf"^{part}--(.+\.pt)$", source_name)
        if m:
            return f"{part}--{m.group(1)}"
    return f"{part}--latest_checkpoint.pt"


def read_passthrough(path: Path) -> dict[str, bytes]:
    return {name: (path / name).read_bytes() for name in PASSTHROUGH if (path / name).is_file()}


def write_passthrough(files: dict[str, bytes], path: Path) -> None:
    for name, data in files.items():
        with atomic_path(path / name) as tmp:
            tmp.write_bytes(data)
