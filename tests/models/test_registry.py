"""The family registry and specs: every declared capability resolves, nothing heavy is imported to
find a family, and a missing capability is one clear error naming the family."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from vla_compress.errors import ConfigError, PassError
from vla_compress.models import detect_family, families, get_family
from vla_compress.models.spec import CAPABILITIES, FamilySpec

# the functions each capability module must define (optional ones are not listed)
REQUIRED = {"prune": ("stacks", "sync"), "tokens": ("merge_tokens", "tome_state", "install_tome"),
            "distill": ("objective_terms", "load_data"), "flow": ("denoise_steps", "set_denoise_steps"),
            "export": ("export_family",),
            "presets": ("preset_names", "build_preset")}


def test_every_family_folder_is_registered():
    assert list(families()) == ["reference", "openvla", "openvla-oft", "smolvla", "pi0", "pi05"]
    assert all(isinstance(s, FamilySpec) for s in families().values())


@pytest.mark.parametrize("name", ["reference", "openvla", "openvla-oft", "smolvla"])
def test_declared_capabilities_resolve(name):
    spec = get_family(name)
    mod, fn = spec.load.split(":")
    assert callable(getattr(importlib.import_module(mod), fn))
    for cap in CAPABILITIES:
        path = getattr(spec, cap)
        if path is None:
            continue
        module = spec.module(cap)
        if ":" in path:
            assert callable(getattr(module, path.split(":")[1]))
        for fn in REQUIRED.get(cap, ()):
            assert callable(getattr(module, fn, None)), f"{name}: {path} has no {fn}()"


def test_finding_a_family_imports_no_torch():
    code = ("import sys; from vla_compress.models import detect_family, families; families(); "
            "print(detect_family('checkpoints/reference-small-chunk')); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["reference", "False"]


def test_detect_family_of_the_shipped_checkpoint():
    assert detect_family("checkpoints/reference-small-chunk") == "reference"


def test_unknown_family_and_missing_capability_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown model family 'no-such-family'; known: reference, openvla"):
        get_family("no-such-family")
    bare = FamilySpec(name="bare", summary="", load="x:y", refused={"gguf": "no backbone llama.cpp runs"})
    with pytest.raises(ConfigError, match="prune: not supported for model family 'bare'"):
        bare.module("prune")
    with pytest.raises(ConfigError, match=r"gguf: not supported for model family 'bare' \(no backbone llama.cpp runs\)"):
        bare.module("export", "gguf")


def test_a_pass_on_a_family_without_the_capability_names_the_family():
    import types

    from vla_compress.passes.registry import get_pass

    with pytest.raises(PassError, match="'layer-drop' supports the reference, openvla, openvla-oft, smolvla, .*"
                                        "families, not 'no-such-family'"):
        get_pass("layer-drop").check_family(types.SimpleNamespace(family="no-such-family"))
