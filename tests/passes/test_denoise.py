"""denoise-steps: a flow-matching head with fewer Euler steps (SmolVLA, π0, π0.5), honoured by
save/load and ONNX export, optionally distilled from the many-step teacher at the same noise."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from vla_compress.errors import PassError
from vla_compress.passes import PassContext, apply_passes, calibration_dataset, synthetic_observations
from vla_compress.passes.denoise import DenoiseStepsConfig

KINDS = ("smolvla", "pi0", "pi05")


def build(kind: str, tmp_path):
    from vla_compress.models import load_vla
    from vla_compress.models.smolvla.adapter import SmolVLA

    if kind == "smolvla":
        return SmolVLA.tiny(seed=0)
    from vla_compress.models.pi0.fixtures import write_tiny_pi0

    return load_vla(write_tiny_pi0(tmp_path / kind, seed=0, kind=kind, dtype="float32"))


def inputs_with_noise(vla, n: int = 2) -> dict:
    x = vla.preprocess(synthetic_observations(vla, n, seed=3))
    x["noise"] = torch.randn(vla.noise_shape(n), generator=torch.Generator().manual_seed(7))
    return x


def euler_by_hand(vla, x: dict, steps: int) -> torch.Tensor:
    """SmolVLA's flow head integrated in `steps` Euler steps by a loop of its own over the same
    modules: a <- a + dt * v(a, t), dt = -1 / steps, from t = 1 (noise) to t = 0."""
    with torch.inference_mode():
        prefix_kv, pad = vla.prefill(vla._model_inputs({k: v for k, v in x.items() if k != "noise"}))
        a = x["noise"].clone()
        for i in range(steps):
            t = torch.full((a.shape[0],), 1.0 - i / steps)
            a = a - (1.0 / steps) * vla.action_head(a, t, prefix_kv, pad)
    return a[:, :, : vla.action_spec.dim]


@pytest.mark.parametrize("kind", KINDS)
def test_fewer_steps_reload_and_are_recorded(kind, tmp_path):
    vla = build(kind, tmp_path)
    before = vla.action_spec.integration_steps
    x = inputs_with_noise(vla)
    with torch.inference_mode():
        many = vla.predict_chunk(dict(x))
    apply_passes(vla, [DenoiseStepsConfig(steps=2)], PassContext(held_out=synthetic_observations(vla, 2, seed=9)))
    assert before > 2 and vla.action_spec.integration_steps == 2
    with torch.inference_mode():
        few = vla.predict_chunk(dict(x))
    assert not torch.allclose(few, many)
    entry = vla.compression_log[-1]
    assert entry["pass"] == "denoise-steps" and entry["details"]["steps_before"] == before
    assert entry["fidelity"]["action_l1"] > 0  # against the many-step model, on the held-out frames
    path = vla.save_pretrained(tmp_path / "ckpt")
    assert json.loads((path / "config.json").read_text())[
        "num_steps" if kind == "smolvla" else "num_inference_steps"] == 2
    from vla_compress.models import load_vla

    again = load_vla(path)
    with torch.inference_mode():
        assert torch.equal(again.predict_chunk(dict(x)), few)


def test_smolvla_two_steps_is_two_euler_steps(tmp_path):
    vla = build("smolvla", tmp_path)
    apply_passes(vla, [DenoiseStepsConfig(steps=2)])
    x = inputs_with_noise(vla)
    with torch.inference_mode():
        got = vla.predict_chunk(dict(x))
    torch.testing.assert_close(got, euler_by_hand(vla, x, 2), rtol=1e-5, atol=1e-5)


def test_the_onnx_export_runs_the_reduced_loop(tmp_path):
    from vla_compress.export import export, validate
    from vla_compress.export.onnx import OnnxExportConfig

    vla = build("smolvla", tmp_path)
    apply_passes(vla, [DenoiseStepsConfig(steps=3)])  # the tiny fixture runs 4
    obs = synthetic_observations(vla, 3, seed=4)
    art = export(vla, OnnxExportConfig(), tmp_path / "art", example=obs[:2])
    assert art.manifest["model"]["integration_steps"] == 3
    assert validate(art, vla, obs).passed


@pytest.mark.parametrize("kind", ["smolvla", "pi0"])
def test_distilling_the_few_step_student_lowers_its_error(kind, tmp_path):
    vla = build(kind, tmp_path)
    teacher = copy.deepcopy(vla)
    ctx = PassContext(calibration=calibration_dataset(vla, synthetic_observations(vla, 4, seed=0), batch_size=2))
    apply_passes(vla, [DenoiseStepsConfig(steps=1, distill_steps=30, lr=3e-3)], ctx)
    d = vla.compression_log[-1]["details"]["distill"]
    assert d["steps"] == 30 and d["loss_mean_last_10"] < d["loss_first"]
    x = inputs_with_noise(vla)
    with torch.inference_mode():
        target = teacher.predict_chunk(dict(x))
        plain = copy.deepcopy(teacher)
        from vla_compress.models.registry import family_of

        family_of(plain).hook("flow", "set_denoise_steps")(plain, 1)
        err_plain = (plain.predict_chunk(dict(x)) - target).abs().mean()
        err_distilled = (vla.predict_chunk(dict(x)) - target).abs().mean()
    assert err_distilled < err_plain


def test_refused_where_it_cannot_apply(tiny_models, tmp_path):
    vla = build("smolvla", tmp_path)
    with pytest.raises(PassError, match=r"steps.*more than the \d+ Euler steps"):
        apply_passes(vla, [DenoiseStepsConfig(steps=vla.action_spec.integration_steps + 1)])
    with pytest.raises(PassError, match="'denoise-steps' supports the smolvla, pi0, pi05 families, not 'reference'"):
        apply_passes(copy.deepcopy(tiny_models["regression"]), [DenoiseStepsConfig(steps=2)])
    with pytest.raises(PassError, match="distill_steps needs|calibration"):
        apply_passes(build("smolvla", tmp_path), [DenoiseStepsConfig(steps=2, distill_steps=5)])
