"""vla-compress: compress, export, profile and verify Vision-Language-Action robot policies."""

__version__ = "0.1.0"
