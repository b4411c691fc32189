"""The OpenVLA and OpenVLA-OFT specs (see models/spec.py), read from the original HF checkpoints."""

from ..spec import FamilySpec

_HERE = __package__
_COMMON = dict(load=f"{_HERE}.adapter:load_openvla", prune=f"{_HERE}.prune_openvla", tokens=f"{_HERE}.tokens_openvla",
               export=f"{_HERE}.export_openvla", processor=f"{_HERE}.export_openvla:OpenVLAArtifactProcessor",
               fixtures=f"{_HERE}.fixtures")

SPECS = (
    # One detector for both: the loader returns OpenVLA-OFT when the folder holds action_head--*.pt.
    FamilySpec(name="openvla", detect=lambda c: c.get("model_type") == "openvla",
               summary="OpenVLA (Prismatic DINOv2+SigLIP, Llama-2, 7 autoregressive action tokens)",
               distill=f"{_HERE}.distill_openvla", presets=f"{_HERE}.presets_openvla", tokens_to_actions=f"{_HERE}.export_openvla:openvla_tokens_to_actions",
               **_COMMON),
    FamilySpec(name="openvla-oft", summary="OpenVLA-OFT (parallel-decoded L1-regression action chunks, proprio)",
               distill=f"{_HERE}.distill_openvla_oft", **_COMMON),
)
