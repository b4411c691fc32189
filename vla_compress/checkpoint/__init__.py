"""The sidecar files a compressed checkpoint keeps beside its weights, owned here (torch-free).

    quantization.json      quantized modules by canonical name (quantization.py)
    compression.json       the compression log, one entry per pass (compression.py)
    token_reduction.json   the visual keep set and the ToMe schedule (tokens.py)
    layer sizes            pruned per-layer shapes, recorded in the family's own config.json under
                           `vla_compress.layer_sizes` (layer_sizes.py validates them)

This layer reads, validates and writes the files (atomically, errors naming the file); applying
them to a model (module swaps, ToMe, resizing layers) is models/sidecars.py, which every family's
save_pretrained / from_pretrained calls, so every family saves compression state the same way.
"""
