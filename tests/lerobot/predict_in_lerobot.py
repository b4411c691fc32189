"""Run a checkpoint in LeRobot itself and write what it predicts, for the comparison in
tests/lerobot/test_lerobot_side.py. Run by LeRobot's interpreter (LeRobot 0.6.1 needs Python >= 3.12
and torch < 2.12, so it lives in its own venv), never imported by vla-compress:

    $LEROBOT_PYTHON tests/lerobot/predict_in_lerobot.py JOB.json

JOB.json: {"checkpoint": DIR, "inputs": IN.npz, "out": OUT.npz}. IN.npz holds `state` (B, S), `noise`
(B, chunk, max_action_dim), `instruction` (a 0-d string array) and `image.<camera>` (B, H, W, 3) uint8.
OUT.npz gets the preprocessed batch (`pre.<key>`), the normalised chunk LeRobot's model samples from
that noise (`chunk_normalized`) and the chunk after LeRobot's postprocessor (`chunk`), plus
`missing_keys` / `unexpected_keys` of a strict load.

The tiny fixtures' sizes are not LeRobot's: π0 / π0.5 fix the Gemma sizes by variant name and build
SigLIP at its real size. For a fixture, whose config.json carries the tiny sizes under `vla_compress`,
those constructors are given the tiny sizes (and that key is dropped from the config LeRobot parses);
every module, processor step and line of arithmetic is LeRobot's own. SmolVLA is built with
`load_vlm_weights` off (a fixture's VLM folder has a config and tokenizer, no weights); the policy's
model.safetensors then sets every weight, which `missing_keys` shows.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch


def tiny_sizes(family: str, arch: dict, cfg: dict) -> None:
    """Give LeRobot's π0 / π0.5 constructors the fixture's sizes."""
    if family == "pi0":
        from lerobot.policies.pi0 import modeling_pi0 as mod
    else:
        from lerobot.policies.pi05 import modeling_pi05 as mod
    by_variant = {cfg["paligemma_variant"]: arch["paligemma"], cfg["action_expert_variant"]: arch["action_expert"]}
    if len(by_variant) != 2:
        raise SystemExit("the fixture names the same variant for the backbone and the expert")

    def get_gemma_config(variant):
        g = by_variant[variant]
        return mod.GemmaConfig(width=g["width"], depth=g["depth"], mlp_dim=g["mlp_dim"], num_heads=g["num_heads"],
                               num_kv_heads=g["num_kv_heads"], head_dim=g["head_dim"])

    real_vlm, real_expert = mod.PaliGemmaForConditionalGenerationWithPiGemma, mod.PiGemmaForCausalLM
    v, vocab = arch["vision"], arch["vocab_size"]

    def vlm(config):
        config._vocab_size = vocab  # noqa: SLF001
        config.text_config.vocab_size = vocab
        config.image_token_index = vocab - 1
        vc = config.vision_config
        vc.hidden_size, vc.intermediate_size = v["hidden_size"], v["intermediate_size"]
        vc.num_attention_heads, vc.num_hidden_layers, vc.patch_size = v["num_heads"], v["num_layers"], v["patch_size"]
        vc.projection_dim = config.text_config.hidden_size
        config.projection_dim = config.text_config.hidden_size
        return real_vlm(config=config)

    def expert(config):
        config.vocab_size = vocab
        return real_expert(config=config)

    mod.get_gemma_config = get_gemma_config
    mod.PaliGemmaForConditionalGenerationWithPiGemma = vlm
    mod.PiGemmaForCausalLM = expert


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    src = Path(job["checkpoint"])
    cfg = json.loads((src / "config.json").read_text())
    family = cfg["type"]
    work = Path(tempfile.mkdtemp(prefix="lerobot-side-"))
    try:
        ckpt = work / src.name
        shutil.copytree(src, ckpt)
        arch = cfg.pop("vla_compress", {}).get("architecture")
        (ckpt / "config.json").write_text(json.dumps(cfg, indent=2))
        if arch is not None and family in ("pi0", "pi05"):
            tiny_sizes(family, arch, cfg)

        from safetensors.torch import load_file

        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class, make_pre_post_processors

        config = PreTrainedConfig.from_pretrained(str(ckpt))
        config.device = "cpu"
        if family == "smolvla":  # the VLM folder holds no weights: every VLM weight comes from model.safetensors
            config.load_vlm_weights = False
        policy = get_policy_class(family).from_pretrained(str(ckpt), config=config, strict=False)
        state = load_file(str(ckpt / "model.safetensors"))
        own = policy.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        policy.eval()
        pre, post = make_pre_post_processors(config, pretrained_path=str(ckpt))

        inputs = np.load(job["inputs"])
        batch = {"observation.state": torch.from_numpy(inputs["state"]), "task": [str(inputs["instruction"])]
                 * inputs["state"].shape[0]}
        for key in inputs.files:
            if key.startswith("image."):  # LeRobot's env processors give (B, C, H, W) float in [0, 1]
                img = torch.from_numpy(inputs[key]).permute(0, 3, 1, 2).float() / 255.0
                batch[f"observation.images.{key[len('image.'):]}"] = img
        with torch.no_grad():
            x = pre(batch)
            chunk_norm = policy.predict_action_chunk(x, noise=torch.from_numpy(inputs["noise"]))
            chunk = post(chunk_norm)
        out = {"chunk_normalized": chunk_norm.float().numpy(), "chunk": chunk.float().numpy(),
               "missing_keys": np.array(missing, dtype=str), "unexpected_keys": np.array(unexpected, dtype=str)}
        for k, t in x.items():
            if isinstance(t, torch.Tensor):
                out[f"pre.{k}"] = t.float().numpy() if t.is_floating_point() else t.numpy()
        np.savez(job["out"], **out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1])
