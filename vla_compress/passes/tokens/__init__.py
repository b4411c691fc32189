"""Visual-token reduction: attention-guided pruning with a static keep set (FastV-style ranking) and
ToMe bipartite token merging inside the vision encoder."""

from .config import TokenMergeConfig, VisualTokenPruneConfig

__all__ = ["TokenMergeConfig", "VisualTokenPruneConfig"]
