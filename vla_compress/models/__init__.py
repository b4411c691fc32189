"""Model families behind the VLA adapter contract (base.py), each declared by a spec (spec.py) in its
own folder and registered in registry.py; `load_vla` picks the family of a checkpoint."""

from .registry import detect_family, families, family_of, get_family, load_vla

__all__ = ["detect_family", "families", "family_of", "get_family", "load_vla"]
