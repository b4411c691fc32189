"""What a compressed checkpoint keeps beside its weights, so that it reloads as the same model.

    quantization.json   quantized modules by canonical name (passes/quantize/serialize.py): the
                        loader swaps in empty quantized modules before the strict state-dict load
    compression.json    {"format_version": 1,
                         "log": vla.compression_log (one entry per pass, see runner.py),
                         "token_merge": {"r_per_layer": [...], "mode": "unmerge"|"reduce"} | null}

Structured pruning needs no file of its own: it writes the new layer count and per-layer sizes into
the family's config.json (prune/family_config.py sync_config). The reference family keeps its
visual-token keep set in the state dict (`visual_keep`) and its budget in config.json, and its ToMe
schedule (token-merge changes the encoder's computation, not its weights) here, so the encoder
wrapper is put back on load; OpenVLA / OpenVLA-OFT / SmolVLA keep both in token_reduction.json
(tokens/state.py), since their native layouts have no place for them.

A family's save_pretrained calls `save_compression(vla, dir)` and its from_pretrained calls
`restore_compression(vla, dir)` on the freshly built model before loading the state dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..fileio import read_json, write_json

COMPRESSION_FILE = "compression.json"
FORMAT_VERSION = 1


def _jsonable(x: Any) -> Any:
    """The compression log as plain JSON types (tensors and numpy values become lists / numbers)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "tolist") and callable(x.tolist):  # torch.Tensor, np.ndarray, np.generic
        return x.tolist()
    return x


def token_merge_state(vla: Any) -> dict | None:
    """The ToMe schedule of the model's vision encoder, or None when it does not merge tokens."""
    encoder = getattr(getattr(vla, "vision_encoder", None), "encoder", None)
    if type(encoder).__name__ != "ToMeEncoder":
        return None
    return {"r_per_layer": [int(r) for r in encoder.r], "mode": "unmerge" if encoder.unmerge else "reduce"}


def save_compression(vla: Any, path: str | Path) -> list[str]:
    """Write quantization.json and compression.json into checkpoint directory `path` when the model
    needs them (and remove stale copies from an earlier save when it does not); returns the names
    written."""
    from .quantize.serialize import FILENAME, quantization_config

    path = Path(path)
    written = []
    quant = quantization_config(vla)
    log = list(getattr(vla, "compression_log", None) or [])
    merge = token_merge_state(vla)
    for name, content in ((FILENAME, quant),
                          (COMPRESSION_FILE, {"format_version": FORMAT_VERSION, "log": _jsonable(log),
                                              "token_merge": merge} if log or merge else None)):
        if content is None:
            (path / name).unlink(missing_ok=True)
        else:
            write_json(path / name, content)
            written.append(name)
    return written


def read_compression(path: str | Path) -> dict | None:
    """compression.json of checkpoint directory `path` (validated), or None when there is none."""
    source = Path(path) / COMPRESSION_FILE
    if not source.is_file():
        return None
    d = read_json(source)
    if not isinstance(d, dict) or d.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(source, f"expected a mapping with format_version {FORMAT_VERSION}, got "
                                      f"{d.get('format_version') if isinstance(d, dict) else type(d).__name__!r}")
    if not isinstance(d.get("log", []), list):
        raise CheckpointError(source, "log must be a list of pass entries")
    merge = d.get("token_merge")
    if merge is not None:
        r = merge.get("r_per_layer") if isinstance(merge, dict) else None
        if (not isinstance(r, list) or not all(isinstance(v, int) and v >= 0 for v in r)
                or merge.get("mode") not in ("unmerge", "reduce")):
            raise CheckpointError(source, "token_merge must be {\"r_per_layer\": [ints >= 0], \"mode\": "
                                          f"\"unmerge\"|\"reduce\"}}, got {merge!r}")
    return d


def restore_compression(vla: Any, path: str | Path) -> Any:
    """Prepare a model freshly built from config.json for a compressed checkpoint's state dict:
    swap in the quantized modules of quantization.json, re-install ToMe, and set
    `vla.compression_log` from compression.json. Call before the strict state-dict load."""
    from .quantize.serialize import FILENAME, apply_quantization_config

    path = Path(path)
    if (path / FILENAME).is_file():
        apply_quantization_config(vla, read_json(path / FILENAME), path / FILENAME)
    info = read_compression(path)
    if info is None:
        return vla
    merge = info.get("token_merge")
    if merge is not None:
        from .tokens.tome import ToMeEncoder

        ve = vla.vision_encoder
        n_layers = len(ve.encoder.layers)
        if len(merge["r_per_layer"]) != n_layers:
            raise CheckpointError(path / COMPRESSION_FILE, f"token_merge.r_per_layer has {len(merge['r_per_layer'])}"
                                                           f" entries; the vision encoder has {n_layers} layers")
        ve.encoder = ToMeEncoder(ve.encoder, merge["r_per_layer"], unmerge=merge["mode"] == "unmerge")
    vla.compression_log = list(info.get("log", []))
    return vla
