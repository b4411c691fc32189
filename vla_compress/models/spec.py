"""A family spec: everything generic code may ask of a model family, declared in the family's folder.

Generic code (passes/, export/, profile/, runtime/, pipeline/, evaluate/) never names a family and
never reads a family's config object: it asks the spec of the model's family, found by
`family_of(vla)` (the adapter's `family` attribute) or `get_family(name)` (an artifact's manifest).

A spec is torch-free data: its capabilities are dotted module paths, imported only when asked
for, so `detect_family` and `vla-compress --help` import no torch. A capability the family does
not have is `None`, and asking for it is one clear error naming the family and what it supports;
`refused` says why, where the family deliberately does not support a pass or a format.

Capabilities (each a module in the family's folder, with these functions):
    prune      stacks(vla) -> [nn.stacks.Stack]; sync(vla, stack): write a pruned stack's sizes back
               into the family's config so save -> load rebuilds the pruned shapes
    tokens     merge_tokens(vla, config, context) (token-merge); tome_state(vla) / install_tome(vla,
               merge) (its schedule saved and re-applied); optional: full_visual_tokens(vla),
               rank_visual_tokens(vla, layer, calibration, n_vis, run) for a prefix that is not the
               HF-Llama [BOS][visual][text] layout, record_visual_budget(vla, budget)
    distill    objective_terms(objective, batch); load_data(vla, dataset, config, loaders);
               optional: draw_batch_noise(vla, batch, rng), check_teacher(student, teacher)
    flow       denoise_steps(vla) -> int; set_denoise_steps(vla, n): a flow-matching head's Euler steps,
               written into the family's config (the denoise-steps pass)
    export     export_family() -> models.contracts.ExportFamily (processor files, torch outputs,
               head meta, example observations, ONNX graphs, GGUF parts)
    processor  load_processor(artifact root) -> ArtifactProcessor, torch-free
    tokens_to_actions  (ids, meta) -> actions, torch-free (a tokens head whose ids are not bins)
    presets    preset_names(); build_preset(name) -> adapter on the meta device (profiling);
               optional: meta_model_from_artifact(root) (an artifact's network, from its own files)
    fixtures   tiny(seed=0, **kw) -> a tiny random adapter (tests); write_tiny(path, **kw) where the
               family's native layout is written by its own fixture code
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ConfigError

CAPABILITIES = ("prune", "tokens", "distill", "flow", "export", "processor", "tokens_to_actions", "presets", "fixtures")


@dataclass(frozen=True)
class FamilySpec:
    """One model family (see the module docstring). `name` is the adapter's `family` attribute."""

    name: str
    summary: str
    load: str  # "module:function" (path, allow_pickle=False, **kw) -> adapter (eval mode, CPU)
    detect: Callable[[dict], bool] | None = None  # config.json -> this family (None: found by a sibling's loader)
    prune: str | None = None
    tokens: str | None = None
    distill: str | None = None
    flow: str | None = None
    export: str | None = None
    processor: str | None = None  # "module:function"
    tokens_to_actions: str | None = None  # "module:function"
    presets: str | None = None
    fixtures: str | None = None
    refused: dict[str, str] = field(default_factory=dict)  # capability or pass/format name -> why not

    def supports(self, capability: str) -> bool:
        return getattr(self, capability) is not None

    def module(self, capability: str, what: str = "") -> Any:
        """The capability's module; a ConfigError naming the family when it has none."""
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown family capability {capability!r}")
        path = getattr(self, capability)
        if path is None:
            have = [c for c in CAPABILITIES if getattr(self, c) is not None]
            why = self.refused.get(what or capability)
            raise ConfigError(f"{what or capability}: not supported for model family {self.name!r}"
                              + (f" ({why})" if why else "") + f"; it supports: {', '.join(have)}")
        return importlib.import_module(path.split(":")[0])

    def hook(self, capability: str, name: str, what: str = "") -> Any:
        """Function `name` of a capability module (or the "module:function" of a single-function one)."""
        path = getattr(self, capability)
        mod = self.module(capability, what)
        if path is not None and ":" in path:
            return getattr(mod, path.split(":", 1)[1])
        fn = getattr(mod, name, None)
        if fn is None:
            raise ConfigError(f"{what or capability}: the {self.name!r} family's {path} has no {name}()")
        return fn

    def has_hook(self, capability: str, name: str) -> bool:
        path = getattr(self, capability)
        if path is None:
            return False
        if ":" in path:
            return True
        return hasattr(importlib.import_module(path), name)

    def loader(self) -> Callable[..., Any]:
        mod, fn = self.load.split(":")
        return getattr(importlib.import_module(mod), fn)
