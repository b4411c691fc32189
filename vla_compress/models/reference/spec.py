"""The reference family's spec (see models/spec.py): vla-compress's own Prismatic-style policy."""

from ..spec import FamilySpec

_HERE = __package__

SPECS = (
    FamilySpec(
        name="reference",
        summary="vla-compress's reference policy: SigLIP-style ViT + projector + Llama backbone, "
                "regression-chunk or action-token head (config.json model_type vla-compress-reference)",
        detect=lambda c: c.get("model_type") == "vla-compress-reference",
        load=f"{_HERE}.adapter:load_reference",
        prune=f"{_HERE}.prune_reference",
        tokens=f"{_HERE}.tokens_reference",
        distill=f"{_HERE}.distill_reference",
        export=f"{_HERE}.export_reference",
        processor=f"{_HERE}.export_reference:ReferenceArtifactProcessor",
        presets=f"{_HERE}.presets_reference",
        fixtures=f"{_HERE}.presets_reference",
    ),
)
