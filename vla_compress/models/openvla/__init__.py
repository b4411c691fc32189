"""The OpenVLA family: OpenVLA (7 autoregressive action tokens) and OpenVLA-OFT (parallel-decoded
L1-regression chunks), read natively from the original Hugging Face checkpoints."""

from .adapter import OpenVLA, OpenVLAOFT, load_openvla
from .configuration_openvla import OpenVLAConfig, openvla_7b_config_dict

__all__ = ["OpenVLA", "OpenVLAConfig", "OpenVLAOFT", "load_openvla", "openvla_7b_config_dict"]
