"""OpenVLA's distillation hooks (passes/distill/objectives.py describes the hooks).

The 7 autoregressive action tokens: KL over the action-token logits under teacher forcing with the
teacher's greedy tokens (the sequence the teacher decodes at run time); label: cross-entropy on
the demonstration's tokens. Frames are observations through the processor, targets normalised
with the bounds (q01/q99) normalisation OpenVLA trains with, which clips to [-1, 1]. The data
hooks are shared with OpenVLA-OFT (distill_openvla_oft.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import DatasetError
from ...nn.losses import kl_bins


def openvla_forced_logits(model: Any, inputs: dict, ids: Any) -> Any:
    """Logits (B, n, V) at the n action positions when `ids` (B, n) are forced (teacher forcing:
    the sequence OpenVLA's greedy decoding would see with these tokens)."""
    import torch

    lm = model.language_model
    embeds, mask = model.sequence(inputs)
    n = ids.shape[1]
    embeds = torch.cat([embeds, lm.model.embed_tokens(ids[:, :-1])], dim=1)
    mask = torch.cat([mask, torch.ones(mask.shape[0], n - 1, dtype=mask.dtype, device=mask.device)], dim=1)
    hidden = lm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=model.positions(mask)).last_hidden_state
    return lm.lm_head(hidden[:, -n:])


def openvla_action_token_ids(model: Any, actions: Any) -> Any:
    """Normalised actions (B, A) -> OpenVLA's action token ids (ActionTokenizer: vocab - digitize)."""
    import torch

    n = model.cfg.n_action_bins
    edges = torch.linspace(-1.0, 1.0, n, dtype=torch.float32, device=actions.device)
    d = torch.bucketize(actions.float().clamp(-1, 1).contiguous(), edges, right=True).clamp(1, n)
    return model.cfg.action_vocab_end - d


def objective_terms(objective: Any, batch: dict) -> tuple[Any, Any]:
    """(KL over the action bins of every token, cross-entropy on the demonstration's tokens or None)."""
    import torch.nn.functional as F

    s, t, c = objective.s, objective.t, objective.config
    cfg = s.cfg
    inputs = s._model_inputs(batch["inputs"])
    dim = s.action_spec.dim
    lo, hi = cfg.action_vocab_end - cfg.n_action_bins, cfg.action_vocab_end
    ids = t.generate_action_tokens(t._model_inputs(batch["inputs"]), dim)
    with objective.teacher_pass():
        target = openvla_forced_logits(t, t._model_inputs(batch["inputs"]), ids)[..., lo:hi]
    with objective.student_pass():
        logits = openvla_forced_logits(s, inputs, ids)[..., lo:hi]
    label = None
    if c.label_weight > 0:
        gt = openvla_action_token_ids(s, batch["actions"][:, 0])
        out = openvla_forced_logits(s, inputs, gt)
        label = F.cross_entropy(out.float().reshape(-1, out.shape[-1]), gt.reshape(-1))
    return kl_bins(logits, target, c.temperature), label


def dataset_cameras(vla: Any, available: list[str], root: Path) -> list[str]:
    """The dataset cameras the model reads, in the order its processor takes them: the configured
    cameras (all of them needed), or, with none configured, every dataset camera when their number
    is the model's number of images."""
    proc = vla.processor
    if proc.cameras:
        missing = [c for c in proc.cameras if c not in available]
        if missing:
            raise DatasetError(root, f"no images from camera(s) {missing}, which the model reads "
                                     f"(dataset cameras: {available})")
        return list(proc.cameras)
    if len(available) != proc.num_images:
        raise DatasetError(root, f"the model takes {proc.num_images} image(s) and the dataset has cameras "
                                 f"{available}: load the model with cameras=... to choose")
    return list(available)


def load_data(vla: Any, dataset: Any, config: Any, loaders: Any) -> Any:
    """Observations of the chosen episodes through the processor, targets clipped to [-1, 1]."""
    return loaders.observations(vla, dataset, config, cameras=dataset_cameras, clip=True)
