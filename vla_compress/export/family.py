"""What exporters ask of a model family, through its spec (models/spec.py; the records are in
models/contracts.py), plus the family-independent helpers every format shares."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from ..models.contracts import ArtifactProcessor, ExportFamily
from ..models.registry import families, get_family


def get_export_family(name: str, what: str = "export") -> ExportFamily:
    """The export record of family `name` (a ConfigError naming the family when it has none)."""
    if name not in families():
        have = [n for n, s in families().items() if s.supports("export")]
        raise ConfigError(f"no exporter support for model family {name!r}; supported: {', '.join(have)}")
    return get_family(name).hook("export", "export_family", what)()


def load_artifact_processor(family: str, root: Any) -> ArtifactProcessor:
    """The processor of an artifact of `family`, rebuilt from the artifact's own files."""
    return get_family(family).hook("processor", "", "artifact processor")(root)


def weights_fingerprint(module: Any) -> str:
    """sha256 over every state-dict tensor's name, dtype, shape and bytes: identifies the exact
    weights an artifact came from (an export reusing a base, a validation against a model)."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def bins_to_actions(bins: np.ndarray, meta: dict) -> np.ndarray:
    """Bin index -> bin centre in [-1, 1], (B, K*A) -> (B, K, A); the same map as the torch model.
    With a `token_map` in the head meta the "bins" are the family's own token ids, de-tokenised by
    the family's `tokens_to_actions` (torch-free)."""
    if meta.get("token_map"):
        return get_family(meta["family"]).hook("tokens_to_actions", "", "token de-tokenisation")(bins, meta)
    centers = -1.0 + (bins.astype(np.float32) + 0.5) * np.float32(2.0 / meta["n_bins"])
    return centers.reshape(bins.shape[0], meta["chunk_size"], meta["action_dim"]).astype(np.float32)
