"""The π0 / π0.5 specs (see models/spec.py): LeRobot's pi0 and pi05 policies read natively from
their checkpoint files. One folder, two families: they share the network code and differ in the
action expert's time conditioning and where the state enters (configuration_pi0 says how)."""

from ..spec import FamilySpec

_HERE = __package__
_COMMON = dict(
    load=f"{_HERE}.adapter:load_pi0",
    prune=f"{_HERE}.prune_pi0",
    export=f"{_HERE}.export_pi0",
    distill=f"{_HERE}.distill_pi0",
    flow=f"{_HERE}.flow_pi0",
    tokens=f"{_HERE}.tokens_pi0",
    processor=f"{_HERE}.export_pi0:Pi0ArtifactProcessor",
    fixtures=f"{_HERE}.fixtures",
    refused={"gguf": "llama.cpp cannot run the action expert's joint attention to the backbone's keys/values "
                     "at every layer"},
)

SPECS = (
    FamilySpec(name="pi0", summary="LeRobot π0 (PaliGemma 3B: SigLIP + Gemma 2B, Gemma 300M flow-matching action "
                                   "expert; state token, time MLP)",
               detect=lambda c: c.get("type") == "pi0", presets=f"{_HERE}.presets_pi0", **_COMMON),
    FamilySpec(name="pi05", summary="LeRobot π0.5 (PaliGemma 3B, Gemma 300M action expert with adaptive RMSNorm "
                                    "on the time; the state discretised into the prompt)",
               detect=lambda c: c.get("type") == "pi05", presets=f"{_HERE}.presets_pi05",
               **_COMMON),
)
