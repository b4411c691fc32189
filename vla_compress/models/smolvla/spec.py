"""The SmolVLA spec (see models/spec.py): LeRobot's SmolVLA read natively from its checkpoint files."""

from ..spec import FamilySpec

_HERE = __package__

SPECS = (
    FamilySpec(
        name="smolvla",
        summary="LeRobot SmolVLA (SmolVLM vision + truncated text model, flow-matching action expert)",
        detect=lambda c: c.get("type") == "smolvla",
        load=f"{_HERE}.adapter:load_smolvla",
        prune=f"{_HERE}.prune_smolvla",
        tokens=f"{_HERE}.tokens_smolvla",
        distill=f"{_HERE}.distill_smolvla",
        flow=f"{_HERE}.flow_smolvla",
        export=f"{_HERE}.export_smolvla",
        processor=f"{_HERE}.export_smolvla:SmolVLAArtifactProcessor",
        presets=f"{_HERE}.presets_smolvla",
        fixtures=f"{_HERE}.fixtures",
        refused={"gguf": "llama.cpp cannot run the action expert's per-layer attention to the VLM's keys/values"},
    ),
)
