"""Calling a Hugging Face decoder with a KV cache across the transformers versions we support.

transformers 5.x renamed the decoders' `past_key_values=` argument (and the output field) to `cache`
and warns on every call that uses the old name; 4.57 knows only `past_key_values`. The name is read
once per model class from its forward signature, so neither version sees a deprecated argument.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=None)
def _cache_name(model_type: type) -> str:
    params = inspect.signature(model_type.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def run_with_cache(model: Any, cache: Any, **kwargs: Any) -> tuple[Any, Any]:
    """`model(**kwargs)` with `cache` passed under the installed transformers' name for it;
    returns (output, the cache the model returned)."""
    name = _cache_name(type(model))
    out = model(**kwargs, **{name: cache})
    return out, getattr(out, name, None)
