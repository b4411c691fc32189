"""Reading LeRobot's π0 / π0.5 layout: detection, components, bf16 and fp32 storage, prediction from a
given noise, the save/load round trip, `vla-compress inspect`, the presets, and loud failures on
unsupported processor steps, a missing tokenizer and bad weights."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from vla_compress.cli.main import main
from vla_compress.errors import CheckpointError
from vla_compress.models import detect_family, load_vla
from vla_compress.models.pi0 import Pi0, Pi05
from vla_compress.models.pi0.fixtures import write_tiny_pi0

from .conftest import make_obs

torch.set_num_threads(1)
WEIGHTS = "model.safetensors"
KINDS = [("pi0", "mixed"), ("pi0", "float32"), ("pi05", "mixed"), ("pi05", "float32")]


def chunk_for(model, obs, seed=0):
    x = model.preprocess(obs)
    noise = torch.randn(model.noise_shape(len(obs)), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.predict_chunk({**x, "noise": noise})


@pytest.mark.parametrize("kind, storage", KINDS)
def test_detected_and_loaded_with_components(pi0_dirs, kind, storage):
    path = pi0_dirs[kind, storage]
    assert detect_family(path) == kind
    vla = load_vla(path)
    assert type(vla) is (Pi05 if kind == "pi05" else Pi0) and vla.family == kind
    want = ["vision_encoder", "projector", "backbone", "action_head"] + (["proprio_projector"] if kind == "pi0" else [])
    assert list(vla.components()) == want
    file = load_file(str(path / WEIGHTS))
    dtypes = {t.dtype for t in file.values()}
    assert dtypes == ({torch.bfloat16, torch.float32} if storage == "mixed" else {torch.float32})
    if storage == "mixed":  # LeRobot's bf16 model keeps norms and the vision path in float32
        assert file["model.paligemma_with_expert.paligemma.model.language_model.layers.0.input_layernorm"
                    + (".weight")].dtype == torch.float32
        assert file["model.paligemma_with_expert.paligemma.model.language_model.layers.0.mlp.up_proj.weight"].dtype \
            == torch.bfloat16
    assert sum(p.numel() for p in vla.parameters()) == sum(t.numel() for t in file.values())
    assert all(p.dtype == torch.float32 for p in vla.parameters())
    spec = vla.action_spec
    assert (spec.head, spec.dim, spec.chunk_size, spec.integration_steps) == ("flow", 4, 5, 4)
    assert vla.cameras == ("base_0_rgb", "wrist") and vla.state_dim == 5
    norms = vla.action_head.expert.layers[0].input_layernorm
    assert hasattr(norms, "dense") == (kind == "pi05")  # π0.5: adaptive RMSNorm on the time


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_predict_from_a_given_noise(pi0_dirs, kind):
    vla = load_vla(pi0_dirs[kind, "mixed"])
    obs = [make_obs(1), make_obs(2, instruction="open the drawer")]
    a, b, c = chunk_for(vla, obs, 0), chunk_for(vla, obs, 0), chunk_for(vla, obs, 1)
    assert a.shape == (2, 5, 4) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.allclose(a, c)
    # batching does not change a row (the same noise row)
    noise = torch.randn(vla.noise_shape(2), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        single = vla.predict_chunk({**vla.preprocess(obs[:1]), "noise": noise[:1]})
    assert torch.allclose(single[0], a[0], atol=1e-5)
    # the default noise stream is seeded: two loads act identically; another seed acts differently
    first, second = load_vla(pi0_dirs[kind, "mixed"]), load_vla(pi0_dirs[kind, "mixed"])
    assert np.array_equal(first.act(obs[0]), second.act(obs[0]))
    assert first.act(obs[0]).shape == (3, 4)  # n_action_steps of the chunk, robot units
    other = Pi0.from_pretrained(pi0_dirs[kind, "mixed"], noise_seed=1)
    assert not np.allclose(other.act(obs[0]), load_vla(pi0_dirs[kind, "mixed"]).act(obs[0]))


def test_a_missing_camera_is_a_masked_minus_one_image(pi0_dirs):
    vla = load_vla(pi0_dirs["pi0", "float32"])
    x = vla.preprocess([make_obs(3, cameras=("wrist",))])
    assert x["pixel_values"].shape == (1, 2, 3, 16, 16)
    assert x["image_masks"].tolist() == [[True, False]]  # the given camera first, as LeRobot orders them
    assert torch.equal(x["pixel_values"][0, 1], torch.full((3, 16, 16), -1.0))
    full = vla.preprocess([make_obs(3)])
    assert full["pixel_values"].min() >= -1 and full["pixel_values"].max() <= 1
    # 24 x 40 -> 9 x 16 (int(24 / 2.5) = 9), padded 3 rows above and 4 below with black (-1)
    top = full["pixel_values"][0, 0]
    assert torch.equal(top[:, :3], torch.full((3, 3, 16), -1.0)) and torch.equal(top[:, 12:], torch.full((3, 4, 16), -1.0))
    assert not torch.equal(top[:, 3], torch.full((3, 16), -1.0))
    assert torch.isfinite(chunk_for(vla, [make_obs(3, cameras=("wrist",))])).all()


@pytest.mark.parametrize("kind, storage", [("pi0", "mixed"), ("pi05", "float32")])
def test_save_round_trip_is_bit_identical(pi0_dirs, kind, storage, tmp_path):
    src = pi0_dirs[kind, storage]
    vla = load_vla(src)
    out = vla.save_pretrained(tmp_path / "saved")
    orig, saved = load_file(str(src / WEIGHTS)), load_file(str(out / WEIGHTS))
    assert set(saved) == set(orig)  # LeRobot's names, the tied embeddings under lm_head only
    assert all(torch.equal(saved[k], orig[k].float()) for k in orig)
    for name in sorted(p.name for p in src.iterdir() if p.name.startswith("policy_")) + ["train_config.json"]:
        assert (out / name).read_bytes() == (src / name).read_bytes(), name
    assert json.loads((out / "config.json").read_text()) == json.loads((src / "config.json").read_text())
    # the saved directory carries the tokenizer: it loads with the original tokenizer folder gone
    moved = tmp_path / "elsewhere"
    shutil.copytree(out, moved)
    pre = json.loads((moved / "policy_preprocessor.json").read_text())
    for step in pre["steps"]:
        if step["registry_name"] == "tokenizer_processor":
            step["config"]["tokenizer_name"] = "google/paligemma-3b-pt-224"
    (moved / "policy_preprocessor.json").write_text(json.dumps(pre))
    again = Pi0.from_pretrained(moved)
    obs = [make_obs(7)]
    assert torch.equal(chunk_for(again, obs), chunk_for(vla, obs))
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), vla.state_dict().values()))


@pytest.mark.parametrize("layout", ["embed_tokens", "both"])
def test_other_embedding_layouts_round_trip(tmp_path, layout):
    src = write_tiny_pi0(tmp_path / "ckpt", embed_layout=layout, dtype="float32")
    vla = load_vla(src)
    out = vla.save_pretrained(tmp_path / "saved")
    assert set(load_file(str(out / WEIGHTS))) == set(load_file(str(src / WEIGHTS)))
    assert torch.equal(chunk_for(load_vla(out), [make_obs(0)]), chunk_for(vla, [make_obs(0)]))


@pytest.mark.parametrize("kind, text, proprio", [("pi0", 12, 1), ("pi05", 64, 0)])
def test_inspect_shows_components_tokens_and_action_spec(pi0_dirs, kind, text, proprio, tmp_path):
    out = tmp_path / "inspect.json"
    result = CliRunner().invoke(main, ["inspect", str(pi0_dirs[kind, "mixed"]), "--json-out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"family={kind}" in result.output
    for name in ("vision_encoder", "projector", "backbone", "action_head", "total"):
        assert name in result.output
    data = json.loads(out.read_text())
    # 2 cameras x (16 / 8)^2 patches; the prompt padded to tokenizer_max_length
    assert data["tokens"] == {"visual": 8, "text": text, "proprio": proprio, "action": 5,
                              "prefill": 8 + text + proprio}
    assert data["action_spec"]["integration_steps"] == 4 and data["action_spec"]["head"] == "flow"
    per = data["count"]["per_component"]
    assert per["action_head"]["calls"] == 4 and per["backbone"]["calls"] == 1
    assert all(per[c]["flops"] > 0 for c in ("vision_encoder", "projector", "backbone", "action_head"))


def test_presets_have_the_published_shapes():
    from vla_compress.models.registry import build_preset, preset_names

    names = preset_names()
    assert names["pi0-3b"] == "pi0" and names["pi05-3b"] == "pi05"
    for name, kind in (("pi0-3b", "pi0"), ("pi05-3b", "pi05")):
        vla = build_preset(name)
        assert vla.family == kind and next(vla.parameters()).device.type == "meta"
        comps = {n: sum(p.numel() for p in m.parameters()) for n, m in vla.components().items()}
        assert comps["vision_encoder"] == 412_442_352  # SigLIP so400m/14 at 224
        assert comps["projector"] == 1152 * 2048 + 2048
        assert comps["backbone"] == 2_508_531_712  # Gemma 2B (18 x 2048, MLP 16384, MQA) + 257152 embeddings
        assert len(vla.backbone.layers) == len(vla.action_head.expert.layers) == 18
        assert vla.action_head.expert.layers[0].mlp.up_proj.weight.shape == (4096, 1024)  # Gemma 300M
        assert vla.token_counts().visual == 3 * 256
        assert vla.token_counts().text == (48 if kind == "pi0" else 200)


# ------------------------------------------------------------------------------------- loud failures
def _edit_pipeline(path, name, edit):
    f = path / name
    d = json.loads(f.read_text())
    edit(d["steps"])
    f.write_text(json.dumps(d))


@pytest.mark.parametrize("file, edit, words", [
    ("policy_preprocessor.json", lambda s: s.insert(2, {"registry_name": "my_custom_step", "config": {}}),
     "'my_custom_step'.*not supported"),
    ("policy_postprocessor.json", lambda s: s.insert(0, {"registry_name": "libero_processor", "config": {}}),
     "'libero_processor'.*not supported"),
    ("policy_preprocessor.json",
     lambda s: [st["config"].update(float_dtype="bfloat16") for st in s if st["registry_name"] == "device_processor"],
     "device_processor.*float_dtype='bfloat16'.*not supported"),
])
def test_unsupported_processor_steps_are_refused_by_name(pi0_dirs, copy_dir, file, edit, words):
    path = copy_dir(pi0_dirs["pi0", "mixed"])
    _edit_pipeline(path, file, edit)
    with pytest.raises(CheckpointError, match=words) as e:
        Pi0.from_pretrained(path)
    assert str(e.value).startswith(str(path / file))


def test_state_prompt_before_the_normalizer_is_refused(pi0_dirs, copy_dir):
    path = copy_dir(pi0_dirs["pi05", "mixed"])
    _edit_pipeline(path, "policy_preprocessor.json", lambda s: s.insert(0, s.pop(4)))
    with pytest.raises(CheckpointError, match="before normalizer_processor"):
        Pi0.from_pretrained(path)


def test_missing_tokenizer_says_how_to_point_at_it(pi0_dirs, copy_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("VLA_COMPRESS_PALIGEMMA_TOKENIZER", raising=False)
    path = copy_dir(pi0_dirs["pi0", "mixed"])
    local = None

    def rename(steps):
        nonlocal local
        for st in steps:
            if st["registry_name"] == "tokenizer_processor":
                local, st["config"]["tokenizer_name"] = st["config"]["tokenizer_name"], "google/paligemma-3b-pt-224"

    _edit_pipeline(path, "policy_preprocessor.json", rename)
    with pytest.raises(CheckpointError, match="not available locally.*tokenizer_path=.*VLA_COMPRESS_PALIGEMMA_TOKENIZER"):
        Pi0.from_pretrained(path)
    assert isinstance(Pi0.from_pretrained(path, tokenizer_path=local), Pi0)
    monkeypatch.setenv("VLA_COMPRESS_PALIGEMMA_TOKENIZER", local)
    assert detect_family(path) == "pi0" and isinstance(load_vla(path), Pi0)


@pytest.mark.parametrize("edit, words", [
    (lambda t: t.pop("model.action_in_proj.weight"), ["missing", "model.action_in_proj.weight"]),
    (lambda t: t.update({"model.state_proj.weight": torch.zeros(32, 7)}), ["wrong shapes", "model.state_proj.weight"]),
    (lambda t: t.update({"model.time_mlp_in.weight": torch.zeros(32, 32)}), ["both map to", "model.time_mlp_in"]),
    (lambda t: t.update({"model.extra.weight": torch.zeros(3)}), ["unexpected", "model.extra.weight"]),
])
def test_bad_weights_fail_loudly(pi0_dirs, copy_dir, edit, words):
    path = copy_dir(pi0_dirs["pi0", "float32"])
    t = load_file(str(path / WEIGHTS))
    edit(t)
    save_file(t, str(path / WEIGHTS))
    with pytest.raises(CheckpointError) as e:
        Pi0.from_pretrained(path)
    assert str(e.value).startswith(str(path / WEIGHTS)) and all(w in str(e.value) for w in words), str(e.value)


@pytest.mark.parametrize("change, words", [
    ({"paligemma_variant": "gemma_7b"}, "paligemma_variant"),
    ({"n_action_steps": 9}, "n_action_steps"),
    ({"image_resolution": [16, 24]}, "not square"),
])
def test_bad_configs_name_the_file(pi0_dirs, copy_dir, change, words):
    path = copy_dir(pi0_dirs["pi0", "float32"])
    (path / "config.json").write_text(json.dumps({**json.loads((path / "config.json").read_text()), **change}))
    with pytest.raises(CheckpointError, match=words) as e:
        Pi0.from_pretrained(path)
    assert str(e.value).startswith(str(path / "config.json"))


def test_empty_cameras_are_masked_minus_one_slots(tmp_path):
    """LeRobot's empty_cameras add `observation.images.empty_camera_i` slots, never given: masked -1 images."""
    vla = load_vla(write_tiny_pi0(tmp_path / "ckpt", dtype="float32", empty_cameras=1))
    assert vla.cameras == ("base_0_rgb", "wrist") and vla.token_counts().visual == 12
    x = vla.preprocess([make_obs(0)])
    assert x["image_masks"].tolist() == [[True, True, False]]
    assert torch.equal(x["pixel_values"][0, 2], torch.full((3, 16, 16), -1.0))
    assert torch.isfinite(chunk_for(vla, [make_obs(0)])).all()


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_config_dtype_runs_as_lerobot_does(pi0_dirs, kind, tmp_path):
    """dtype="config" with config.json's "dtype": "bfloat16": LeRobot's mixed precision (bf16 Gemma weights,
    float32 vision path, norms and projections); close to the float32 model, saved in the same layout."""
    src = pi0_dirs[kind, "mixed"]
    cfg = json.loads((src / "config.json").read_text())
    path = tmp_path / "bf16"
    shutil.copytree(src, path)
    (path / "config.json").write_text(json.dumps({**cfg, "dtype": "bfloat16"}))
    vla = Pi0.from_pretrained(path, dtype="config")
    view = dict(vla.state_view().named_parameters())
    file = load_file(str(path / WEIGHTS))
    assert {k: p.dtype for k, p in view.items()} == {k: t.dtype for k, t in file.items()}
    obs = [make_obs(2)]
    got, want = chunk_for(vla, obs), chunk_for(load_vla(path), obs)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert (got - want).abs().max() < 0.1 * want.abs().max()
    saved = load_file(str(vla.save_pretrained(tmp_path / "saved") / WEIGHTS))
    assert all(torch.equal(saved[k], file[k]) and saved[k].dtype == file[k].dtype for k in file)
    with pytest.raises(Exception, match="dtype must be"):
        Pi0.from_pretrained(path, dtype="half")


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_openpi_converted_names_load_as_lerobot_remaps_them(pi0_dirs, copy_dir, kind):
    """No "model." prefix, the other variant's time-MLP names, π0.5 with a leftover state_proj."""
    path = copy_dir(pi0_dirs[kind, "float32"])
    t = load_file(str(path / WEIGHTS))
    swap = ("model.action_time_mlp_", "time_mlp_") if kind == "pi0" else ("model.time_mlp_", "action_time_mlp_")
    renamed = {(swap[1] + k[len(swap[0]):]) if k.startswith(swap[0]) else k[len("model."):]: v for k, v in t.items()}
    if kind == "pi05":
        renamed["state_proj.weight"] = torch.zeros(32, 8)
    save_file(renamed, str(path / WEIGHTS))
    obs = [make_obs(4)]
    assert torch.equal(chunk_for(Pi0.from_pretrained(path), obs), chunk_for(load_vla(pi0_dirs[kind, "float32"]), obs))


def test_normalize_observation_keys_leaves_other_observations_raw(pi0_dirs, copy_dir):
    path = copy_dir(pi0_dirs["pi0", "float32"])

    def only_images(steps):
        for st in steps:
            if st["registry_name"] == "normalizer_processor":
                st["config"]["normalize_observation_keys"] = ["observation.images.wrist"]

    _edit_pipeline(path, "policy_preprocessor.json", only_images)
    obs = make_obs(1)
    raw = Pi0.from_pretrained(path).preprocess([obs])["state"][0, :5]
    assert torch.equal(raw, torch.from_numpy(obs["state"]))
    assert not torch.equal(load_vla(pi0_dirs["pi0", "float32"]).preprocess([obs])["state"][0, :5], raw)


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_relative_actions_add_the_prediction_time_state_back(tmp_path, kind):
    """use_relative_actions: LeRobot's relative/absolute steps enabled; the chunk is offset by the raw state
    of the observation it was predicted from, on every step, except the excluded (gripper) dimension."""
    names = ["x.pos", "y.pos", "z.pos", "gripper.pos"]
    absolute = load_vla(write_tiny_pi0(tmp_path / "abs", kind=kind, dtype="float32"))
    rel_dir = write_tiny_pi0(tmp_path / "rel", kind=kind, dtype="float32", use_relative_actions=True,
                             relative_exclude_joints=["gripper"], action_feature_names=names)
    pre = json.loads((rel_dir / "policy_preprocessor.json").read_text())
    step = next(s for s in pre["steps"] if s["registry_name"] == "relative_actions_processor")
    assert step["config"] == {"enabled": True, "exclude_joints": ["gripper"], "action_names": names}
    relative = load_vla(rel_dir)
    obs = make_obs(3)
    chunk = chunk_for(relative, [obs])[0].numpy()
    assert np.array_equal(chunk, chunk_for(absolute, [obs])[0].numpy())  # same network, same noise
    want = absolute.unnormalize_actions(chunk)
    got = relative.unnormalize_actions(chunk)
    offset = np.asarray(obs["state"], np.float32)[:4] * np.array([1, 1, 1, 0], np.float32)
    np.testing.assert_allclose(got, want + offset, rtol=1e-6, atol=1e-6)
    assert np.array_equal(got[:, 3], want[:, 3])  # the gripper stays absolute


def test_relative_actions_reach_the_artifact_runtime(tmp_path):
    from vla_compress.export import export, validate
    from vla_compress.export.onnx import OnnxExportConfig
    from vla_compress.runtime.onnxruntime_policy import OnnxRuntimePolicy

    vla = load_vla(write_tiny_pi0(tmp_path / "rel", dtype="float32", use_relative_actions=True,
                                  action_feature_names=["a", "b", "c", "gripper"]))
    assert vla.processor.settings.relative_mask.tolist() == [True, True, True, False]
    obs = [make_obs(i) for i in range(3)]
    art = export(vla, OnnxExportConfig(), tmp_path / "onnx", example=obs[:2])
    assert validate(art, vla, obs).passed
    got = OnnxRuntimePolicy(art.path).infer(obs[1])  # the first noise draw of the artifact's seeded stream
    x = vla.preprocess([obs[1]])
    x["noise"] = torch.randn(vla.noise_shape(1), generator=torch.Generator().manual_seed(vla.noise_seed))
    with torch.no_grad():
        chunk = vla.predict_chunk(x)[0].numpy()
    want = vla.unnormalize_actions(chunk)[: vla.cfg.n_action_steps]
    np.testing.assert_allclose(got, want, atol=1e-4)
    offset = np.asarray(obs[1]["state"], np.float32)[:3]
    vla.processor.settings.relative_mask = None  # the same chunk read as absolute actions
    np.testing.assert_allclose(got[:, :3] - vla.unnormalize_actions(chunk)[: vla.cfg.n_action_steps, :3],
                               np.broadcast_to(offset, got[:, :3].shape), atol=1e-4)


@pytest.mark.parametrize("which", ["relative_actions_processor", "absolute_actions_processor"])
def test_one_sided_relative_actions_are_refused(pi0_dirs, copy_dir, which):
    path = copy_dir(pi0_dirs["pi0", "float32"])
    file = path / ("policy_preprocessor.json" if which.startswith("relative") else "policy_postprocessor.json")
    pipe = json.loads(file.read_text())
    next(s for s in pipe["steps"] if s["registry_name"] == which)["config"]["enabled"] = True
    file.write_text(json.dumps(pipe))
    with pytest.raises(CheckpointError, match=f"{which} is enabled but .* is not") as e:
        Pi0.from_pretrained(path)
    assert str(e.value).startswith(str(file))
