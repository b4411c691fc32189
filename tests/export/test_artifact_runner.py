"""An exported artifact runs without vla_compress: examples/run_artifact.py (numpy, onnxruntime and
`tokenizers` only) reads artifact.json's processor description and reproduces the project's runtime
actions for every family with an ONNX export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vla_compress.export import export, validate
from vla_compress.export.onnx import OnnxExportConfig
from vla_compress.runtime.onnxruntime_policy import OnnxRuntimePolicy

RUNNER = Path(__file__).resolve().parents[2] / "examples" / "run_artifact.py"
SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from run_artifact import ArtifactRunner
obs = json.loads(open(sys.argv[3]).read())
out = []
runner = ArtifactRunner(sys.argv[2])
for o in obs:
    o["images"] = {c: np.asarray(v, np.uint8) for c, v in o["images"].items()}
    out.append(runner.act(o).tolist())
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("vla_compress", "torch", "PIL"))
print(json.dumps({"actions": out, "leaked": leaked}))
"""


def at_model_size(vla, n: int, seed: int = 0) -> list[dict]:
    """Observations at the model's own image size (the runner does not resize), random pixels and
    state, instructions of different lengths."""
    rng = np.random.default_rng(seed)
    texts = ["Open the drawer ", "pick up the black bowl and put it on the plate", "push the button"]
    out = []
    for i in range(n):
        obs = vla.dummy_observation(texts[i % len(texts)])
        obs["images"] = {c: rng.integers(0, 256, im.shape, dtype=np.uint8) for c, im in obs["images"].items()}
        if "state" in obs:
            obs["state"] = rng.uniform(-1.2, 1.2, obs["state"].shape).astype(np.float32)
        out.append(obs)
    return out


def models() -> dict:
    from vla_compress.models.openvla import OpenVLA, OpenVLAOFT
    from vla_compress.models.reference import ReferenceVLA

    return {"reference-regression": ReferenceVLA.tiny(head="regression"),
            "reference-tokens": ReferenceVLA.tiny(head="tokens"),
            "openvla": OpenVLA.tiny(), "openvla-oft": OpenVLAOFT.tiny(seed=1)}


@pytest.mark.parametrize("name", ["reference-regression", "reference-tokens", "openvla", "openvla-oft"])
def test_the_standalone_runner_reproduces_the_runtime(name, tmp_path):
    vla = models()[name]
    obs = at_model_size(vla, 3)
    art = export(vla, OnnxExportConfig(), tmp_path / "art", example=at_model_size(vla, 2, seed=5))
    assert validate(art, vla, obs).passed
    manifest = json.loads((art.path / "artifact.json").read_text())
    assert manifest["processor"]["version"] == 1 and manifest["session"]["intra_op_num_threads"] == 1
    policy = OnnxRuntimePolicy(art.path)
    want = [policy.infer(o)[: manifest["processor"]["actions"]["execute"]] for o in obs]
    (tmp_path / "obs.json").write_text(json.dumps([{**o, "images": {c: v.tolist() for c, v in o["images"].items()},
                                                    **({"state": o["state"].tolist()} if "state" in o else {})}
                                                   for o in obs]))
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(RUNNER.parent), str(art.path), str(tmp_path / "obs.json")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["leaked"] == []  # neither vla_compress nor torch (nor PIL) was imported
    for g, w in zip(got["actions"], want):
        np.testing.assert_allclose(np.asarray(g, np.float32), w, rtol=0, atol=1e-5)


def check_flow_artifact(vla, obs: list[dict], tmp_path: Path, precision: str = "fp32") -> dict:
    """Export `vla` (a flow head) at `precision`, then run `obs` through the project's runtime and
    through the standalone runner with the same noise per step: the actions agree. Returns the manifest."""
    art = export(vla, OnnxExportConfig(), tmp_path / "art", example=at_model_size(vla, 2, seed=5))
    if precision != "fp32":
        art = export(vla, OnnxExportConfig(precision=precision), tmp_path / precision, base=art)
    assert validate(art, vla, obs[:1]).passed
    policy = OnnxRuntimePolicy(art.path)
    noises, want = [], []
    for o in obs:
        feeds = policy.processor([o])
        noises.append(feeds["noise"][0].tolist())
        want.append(policy.processor.unnormalize(policy.graphs.predict(feeds)["actions"][0]))
    payload = [{**o, "images": {c: v.tolist() for c, v in o["images"].items()}, "noise": n,
                **({"state": o["state"].tolist()} if "state" in o else {})} for o, n in zip(obs, noises)]
    (tmp_path / "obs.json").write_text(json.dumps(payload))
    script = SCRIPT.replace("out.append(runner.act(o).tolist())", "out.append(runner.act(o, o.pop('noise')).tolist())")
    res = subprocess.run([sys.executable, "-c", script, str(RUNNER.parent), str(art.path), str(tmp_path / "obs.json")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["leaked"] == []
    for g, w in zip(got["actions"], want):
        if precision == "fp32":
            np.testing.assert_allclose(np.asarray(g, np.float32), w, rtol=0, atol=1e-4)
        else:  # the runner's numpy resize differs from torch's by ~2e-7: dynamic INT8 rounding can amplify it
            assert np.abs(np.asarray(g) - w).mean() < 0.05 * np.abs(w).mean()
    if precision != "fp32":  # fed the runtime's own inputs, the runner's graphs and loop give the same bits
        sys.path.insert(0, str(RUNNER.parent))
        try:
            from run_artifact import ArtifactRunner
        finally:
            sys.path.remove(str(RUNNER.parent))
        runner, feeds = ArtifactRunner(art.path), policy.processor([obs[0]])
        np.testing.assert_array_equal(runner.normalised_chunk(feeds), policy.graphs.predict(feeds)["actions"][0])
    return art.manifest


# the second case is `slow` (33 s) to keep the default run under 20 minutes; run it with -m slow
@pytest.mark.parametrize("case", ["lerobot-defaults", pytest.param("min-max-missing-camera", marks=pytest.mark.slow)])
def test_the_standalone_runner_reproduces_smolvla(case, tmp_path):
    """SmolVLA with LeRobot's defaults (longest padding, MEAN_STD images, an empty camera), and
    MIN_MAX everywhere with a camera missing at run time: the runner, given the step's noise,
    reproduces the project's runtime."""
    from vla_compress.models.smolvla import SmolVLA
    from vla_compress.models.smolvla.fixtures import LEROBOT_DEFAULTS, write_tiny_smolvla

    if case == "lerobot-defaults":
        ckpt = write_tiny_smolvla(tmp_path / "ckpt", normalization="MEAN_STD", empty_cameras=1, **LEROBOT_DEFAULTS)
    else:
        ckpt = write_tiny_smolvla(tmp_path / "ckpt", normalization="MIN_MAX")
    vla = SmolVLA.from_pretrained(ckpt)
    obs = at_model_size(vla, 3)
    if case != "lerobot-defaults":
        for o in obs[1:]:
            o["images"] = dict(list(o["images"].items())[:1])  # the second camera missing
    check_flow_artifact(vla, obs, tmp_path)


@pytest.mark.parametrize("kind, precision", [("pi0", "fp32"), ("pi05", "fp32"), ("pi05", "int8-dynamic")])
def test_the_standalone_runner_reproduces_pi0(kind, precision, tmp_path):
    """π0 (newline prompt) and π0.5 (the binned state in the prompt, quantile normalisation), with a
    camera missing at run time, fp32 and INT8: the runner, given the step's noise, runs the prefix
    graph and the Euler loop over denoise_step from artifact.json alone and reproduces the runtime."""
    from vla_compress.models import load_vla
    from vla_compress.models.pi0.fixtures import write_tiny_pi0

    vla = load_vla(write_tiny_pi0(tmp_path / "ckpt", seed=0 if kind == "pi0" else 1, kind=kind, dtype="float32"))
    obs = at_model_size(vla, 3)
    obs[2]["images"] = dict(list(obs[2]["images"].items())[:1])
    m = check_flow_artifact(vla, obs, tmp_path, precision)
    assert set(m["graphs"]) == {"prefix", "denoise_step"} and m["model"]["head"] == "flow"
    assert m["model"]["loop"]["times"] == [1.0, 0.75, 0.5, 0.25]  # the fixture's four Euler steps
