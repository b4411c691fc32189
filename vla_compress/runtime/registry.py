"""Runtime registry: PolicySpec.runtime (any spelling a backend accepts) -> its Policy.

The runtimes themselves are the records of vla_compress/backends.py; this module only builds.
"""

from __future__ import annotations

from typing import Any

from ..backends import get_backend


def build_policy(spec: Any) -> Any:
    """The Policy `spec` describes, built by its backend's factory (ConfigError for an unknown runtime)."""
    return get_backend(spec.runtime).policy_factory()(spec)
