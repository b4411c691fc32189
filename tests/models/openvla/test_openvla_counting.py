"""Action spec, token counts, FLOP counting (tiny and OpenVLA-7B on the meta device), `vla-compress inspect`."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from vla_compress.cli.main import main
from vla_compress.models.openvla import OpenVLA, OpenVLAOFT
from vla_compress.profile.counting import count_policy_step, dummy_observation


def test_action_spec_and_token_counts(openvla_dir, oft_dir, oft_small_dir):
    vla = OpenVLA.from_pretrained(openvla_dir, unnorm_key="bridge_orig")
    spec = vla.action_spec
    assert (spec.head, spec.dim, spec.chunk_size, spec.n_bins, spec.tokens_per_step) == ("tokens", 7, 1, 256, 7)
    tc = vla.token_counts("open the drawer")
    n_prompt = len(vla.tokenizer.prompt_ids("open the drawer"))
    assert (tc.visual, tc.text, tc.proprio, tc.action) == (9, 1 + n_prompt, 0, 7)
    assert vla.tokenizer.prompt_ids("open the drawer")[-1] == vla.tokenizer.empty_id
    oft = OpenVLAOFT.from_pretrained(oft_dir)
    assert oft.action_spec.to_dict()["head"] == "regression" and (oft.action_spec.chunk_size, oft.action_spec.dim) == (8, 7)
    tc = oft.token_counts("open the drawer")
    assert (tc.visual, tc.proprio, tc.action) == (2 * 9, 1, 8 * 7 + 1)  # two images; K*A placeholders + </s>
    small = OpenVLAOFT.from_pretrained(oft_small_dir)
    assert small.token_counts().proprio == 0 and small.token_counts().action == 2 * 3 + 1


def test_count_policy_step_tiny(openvla_dir, oft_dir):
    vla = OpenVLA.from_pretrained(openvla_dir, unnorm_key="bridge_orig")
    assert dummy_observation(vla)["images"].keys() == {"primary"}
    c = count_policy_step(vla)
    calls = {k: v["calls"] for k, v in c.per_component.items()}
    assert calls == {"vision_encoder": 1, "projector": 1, "backbone": 7, "action_head": 7}
    assert all(v["flops"] > 0 for v in c.per_component.values())
    oft = OpenVLAOFT.from_pretrained(oft_dir)
    c = count_policy_step(oft)
    assert {k: v["calls"] for k, v in c.per_component.items()} == {
        "vision_encoder": 1, "projector": 1, "backbone": 1, "action_head": 1, "proprio_projector": 1}


@pytest.fixture(scope="module")
def openvla_7b():
    return OpenVLA.realistic()


def test_openvla_7b_on_meta_device(openvla_7b):
    m = openvla_7b
    assert next(m.parameters()).device.type == "meta"
    assert sum(p.numel() for p in m.parameters()) == 7_541_237_184
    comps = {k: sum(p.numel() for p in v.parameters()) for k, v in m.components().items()}
    assert comps["vision_encoder"] == 730_911_680  # DINOv2 ViT-L/14-reg4 (304.4M) + SigLIP So400m/14 (426.5M)
    assert comps["projector"] == 2176 * 8704 + 8704 + 8704 * 4096 + 4096 + 4096 * 4096 + 4096
    assert m.projector.fc1.in_features == 1024 + 1152
    assert len(m.language_model.model.layers) == 32 and m.language_model.lm_head.out_features == 32064
    assert m.language_model.config.rms_norm_eps == 1e-6  # transformers 4.40 default: text_config leaves it out
    assert m.token_counts().visual == 256
    c = count_policy_step(m)
    assert c.per_component["backbone"]["calls"] == 7 and c.per_component["action_head"]["calls"] == 7
    # bf16 weights: the 7 decode steps stream the 13.2 GB backbone 7 times
    assert 0 <= c.per_component["backbone"]["param_bytes"] - 2 * comps["backbone"] <= 1024  # + rotary buffers
    assert 3e12 < c.flops < 6e12


def test_openvla_oft_7b_on_meta_device():
    m = OpenVLAOFT.realistic()
    c = count_policy_step(m)
    assert c.per_component["backbone"]["calls"] == 1
    assert m.token_counts().visual == 512 and m.action_spec.chunk_size == 8
    head = sum(p.numel() for p in m.action_head.parameters())
    d = 4096
    assert head == 2 * 7 * d + (7 * d * d + d) + 2 * (2 * d + d * d + d) + 2 * d + (7 * d + 7)


@pytest.mark.parametrize("which", ["openvla", "oft"])
def test_cli_inspect(which, openvla_dir, oft_dir, tmp_path):
    path = openvla_dir if which == "openvla" else oft_dir
    out = tmp_path / "inspect.json"
    result = CliRunner().invoke(main, ["inspect", str(path), "--json-out", str(out)])
    assert result.exit_code == 0, result.output
    names = ["vision_encoder", "projector", "backbone", "action_head"] + (["proprio_projector"] if which == "oft" else [])
    for name in names + ["total"]:
        assert name in result.output
    data = json.loads(out.read_text())
    assert data["family"] == ("openvla" if which == "openvla" else "openvla-oft")
    assert set(data["count"]["per_component"]) == set(names)
    assert data["action_spec"]["head"] == ("tokens" if which == "openvla" else "regression")


def test_cli_inspect_pickled_head_needs_flag(oft_small_dir, tmp_path):
    import shutil

    import torch

    from vla_compress.models.openvla.modeling_openvla import L1RegressionActionHead

    ckpt = shutil.copytree(oft_small_dir, tmp_path / "ckpt")
    f = ckpt / "action_head--latest_checkpoint.pt"
    head = L1RegressionActionHead(64, 3, 2)
    head.load_state_dict(torch.load(f, weights_only=True))
    torch.save(head, f)
    result = CliRunner().invoke(main, ["inspect", str(ckpt)])
    assert result.exit_code == 2 and "refusing to unpickle" in result.output
    assert CliRunner().invoke(main, ["inspect", str(ckpt), "--allow-pickle"]).exit_code == 0
