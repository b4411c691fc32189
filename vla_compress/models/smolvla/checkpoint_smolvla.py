"""Files of a LeRobot SmolVLA checkpoint directory, and where its VLM's config and tokenizer are found.

    config.json                                   "type": "smolvla" (configuration_smolvla.SmolVLAConfig)
    model.safetensors                             every weight, LeRobot's names (model.vlm_with_expert...)
    policy_preprocessor.json                      LeRobot's input pipeline (processor_smolvla)
    policy_preprocessor_step_5_normalizer_processor.safetensors    its statistics
    policy_postprocessor.json                     the output pipeline
    policy_postprocessor_step_0_unnormalizer_processor.safetensors
    train_config.json, README.md                  carried through a save unchanged
    vlm/                                          written by vla-compress: the VLM's config/tokenizer files

The VLM (`vlm_model_name`, e.g. HuggingFaceTB/SmolVLM2-500M-Video-Instruct) contributes only its
config.json and tokenizer files: every weight SmolVLA uses is in model.safetensors. Nothing is
downloaded; the VLM directory is, in order: the `vlm_path` given to the loader; the checkpoint's
own `vlm/`; `vlm_model_name` as a local directory (absolute, or relative to the checkpoint); the
Hugging Face hub cache ($HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub, snapshot of
refs/main first).
"""

from __future__ import annotations

import os
from pathlib import Path

from ...errors import CheckpointError
from ...fileio import read_json
from ..lerobot_layout import processor_file_names, write_files  # noqa: F401  (shared with π0)

WEIGHTS = "model.safetensors"
VLM_SUBDIR = "vlm"
VLM_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
             "added_tokens.json", "vocab.json", "merges.txt", "chat_template.json", "chat_template.jinja",
             "processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
             "generation_config.json")
SIDE_FILES = ("train_config.json", "README.md")


def read_config(path: Path) -> dict:
    """The policy config.json as a dict (a clear error when it is not SmolVLA's)."""
    from .. import detect_family  # checks the directory and that config.json is a JSON object

    family = detect_family(path)
    if family != "smolvla":
        raise CheckpointError(path / "config.json", f"a {family} checkpoint, not a SmolVLA one")
    return read_json(path / "config.json")


def _hub_caches() -> list[Path]:
    out = []
    if os.environ.get("HF_HUB_CACHE"):
        out.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        out.append(Path(os.environ["HF_HOME"]) / "hub")
    out.append(Path.home() / ".cache" / "huggingface" / "hub")
    return out


def _hub_snapshot(repo_id: str) -> list[Path]:
    """Snapshot directories of `repo_id` in the local hub caches (refs/main first)."""
    if repo_id.count("/") != 1:
        return []
    found = []
    for cache in _hub_caches():
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        ref = repo / "refs" / "main"
        if ref.is_file():
            found.append(repo / "snapshots" / ref.read_text().strip())
        snaps = repo / "snapshots"
        if snaps.is_dir():
            found += sorted(p for p in snaps.iterdir() if p.is_dir())
    return found


def resolve_vlm_dir(path: Path, vlm_model_name: str, vlm_path: str | Path | None = None) -> Path:
    """The local directory holding the VLM's config.json and tokenizer (see the module docstring)."""
    if vlm_path is not None:
        candidates = [Path(vlm_path)]
    else:
        name = Path(vlm_model_name).expanduser()
        candidates = [path / VLM_SUBDIR, name if name.is_absolute() else path / name, name, *_hub_snapshot(vlm_model_name)]
    for c in candidates:
        if (c / "config.json").is_file() and (c / "tokenizer.json").is_file():
            return c
    tried = ", ".join(str(c) for c in candidates) or "(none)"
    raise CheckpointError(path / "config.json", f"the VLM {vlm_model_name!r} (its config.json and tokenizer.json) "
                                                f"is not available locally; tried {tried}. Pass vlm_path= (or "
                                                "download it once into the Hugging Face cache)")


def read_vlm_files(vlm_dir: Path) -> dict[str, bytes]:
    return {n: (vlm_dir / n).read_bytes() for n in VLM_FILES if (vlm_dir / n).is_file()}


def read_weights(path: Path) -> tuple[dict, Path]:
    from ...fileio import load_safetensors, missing_weights

    file = path / WEIGHTS
    if not file.is_file():
        shards = sorted(path.glob("model-*-of-*.safetensors"))
        if shards:
            raise CheckpointError(file, "file not found (sharded SmolVLA weights are not supported)")
        raise missing_weights(file)  # names a pytorch_model.bin found instead
    return load_safetensors(file), file


def read_side_files(path: Path) -> dict[str, bytes]:
    """Processor files and the small side files, as bytes (written back unchanged by a save)."""
    names = processor_file_names(path) + [n for n in SIDE_FILES if (path / n).is_file()]
    return {n: (path / n).read_bytes() for n in names if (path / n).is_file()}


