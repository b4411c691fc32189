"""The SmolVLA family (LeRobot's SmolVLA: SmolVLM backbone + flow-matching action expert), read
natively from LeRobot's checkpoint files."""

from .adapter import SmolVLA, load_smolvla
from .configuration_smolvla import SmolVLAArch, SmolVLAConfig, VLMConfig, smolvla_base_config_dict

__all__ = ["SmolVLA", "SmolVLAArch", "SmolVLAConfig", "VLMConfig", "load_smolvla", "smolvla_base_config_dict"]
