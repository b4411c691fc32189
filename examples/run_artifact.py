"""Run a vla-compress ONNX artifact with nothing but numpy, onnxruntime and `tokenizers`.

This file does not import vla_compress: it is the integration example for a robot stack that
only ships the artifact folder. Everything it does is read from the artifact's `artifact.json`:

    processor   how an observation becomes the graphs' inputs (cameras, image size and scaling,
                the prompt template and tokenizer file, state normalisation) and how the graphs'
                normalised actions become robot units (the statistics, the chunk, how many to run)
    model       how to drive the graphs: `head` "regression" (one `policy_step` graph; SmolVLA's,
                a flow head with its Euler loop inside, also takes the step's noise), "tokens"
                (`prefill` then greedy `decode` steps over a KV cache) or "flow" (π0, π0.5: a
                `prefix` graph once, then the Euler loop `model.loop` describes over its
                `denoise_step` graph, from the step's noise at t = 1 to the actions at t = 0)
    session     the ONNX Runtime session options the project runs the graphs with

    python examples/run_artifact.py ARTIFACT_DIR        # one step on a blank observation

Images must come at the size the processor states (frames of another size need the resize it
names; the reference family's is torch's antialiased bilinear, OpenVLA's is PIL's).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


class ArtifactRunner:
    """observation {"images": {camera: HxWx3 uint8}, "instruction": str, "state": float32[P]} ->
    the actions to execute (robot units)."""

    def __init__(self, root: str | Path, threads: int = 1):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.root = Path(root)
        self.manifest = json.loads((self.root / "artifact.json").read_text())
        if self.manifest.get("format") != "onnx" or self.manifest.get("status") != "ok":
            raise ValueError(f"{root}: not a validated ONNX artifact")
        self.proc, self.model = self.manifest["processor"], self.manifest["model"]
        if self.proc.get("version") != 1:
            raise ValueError(f"{root}: processor description version {self.proc.get('version')} is not 1")
        if self.model.get("head") == "flow" and not isinstance(self.model.get("loop"), dict):
            raise ValueError(f"{root}: a flow head's artifact.json needs model.loop (how to run its Euler loop)")
        sess = self.manifest.get("session", {})
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = sess.get("inter_op_num_threads", 1)
        so.execution_mode = getattr(ort.ExecutionMode, sess.get("execution_mode", "ORT_SEQUENTIAL"))
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                              sess.get("graph_optimization_level", "ORT_ENABLE_ALL"))
        providers = sess.get("providers", ["CPUExecutionProvider"])
        self.sessions = {name: ort.InferenceSession(str(self.root / g["file"]), so, providers=providers)
                         for name, g in self.manifest["graphs"].items()}
        self.tokenizer = Tokenizer.from_file(str(self.root / self.proc["prompt"]["tokenizer"]))

    # --- observation -> graph inputs -----------------------------------------------------------
    def pixels(self, images: dict) -> np.ndarray:
        d = self.proc["images"]
        names = d["cameras"] or list(images)[: d["count"]]
        planes = []
        for name in names:
            frame = np.asarray(images[name], dtype=np.uint8)
            if d["center_crop"]:
                raise NotImplementedError("this example does not implement the centre crop; see its description")
            for b in d["branches"]:
                if frame.shape[:2] != (b["height"], b["width"]):
                    raise ValueError(f"camera {name!r}: frame {frame.shape[:2]}, the artifact wants "
                                     f"{(b['height'], b['width'])} ({b['resize']})")
                x = frame.transpose(2, 0, 1).astype(np.float32) * np.float32(b["scale"]) + np.float32(b["offset"])
                mean = np.asarray(b["mean"], np.float32)[:, None, None]
                std = np.asarray(b["std"], np.float32)[:, None, None]
                planes.append((x - mean) / std)
        return np.concatenate(planes, axis=0)[None]

    def text(self, instruction: str) -> dict:
        p = self.proc["prompt"]
        text = instruction.lower()
        if "stripped" in p["instruction"]:
            text = text.strip()
        ids = self.tokenizer.encode(p["template"].format(instruction=text), add_special_tokens=p["add_special_tokens"]).ids
        for extra in p["append"]:
            if not (p.get("append_if_missing") and ids and ids[-1] == extra):
                ids = ids + [extra]
        feeds = {p["ids"]: np.asarray([ids], np.int64), p["mask"]: np.ones((1, len(ids)), np.int64)}
        if p["bos"]:
            feeds[p["bos"]["input"]] = np.full((1, 1), p["bos"]["id"], np.int64)
        return feeds

    @staticmethod
    def normalize(x: np.ndarray, n: dict) -> np.ndarray:
        lo, hi, mask = (np.asarray(n[k], np.float64) for k in ("low", "high", "mask"))
        span = np.maximum(hi - lo + n["add_in"], n["floor_in"])
        y = np.clip(2.0 * (x - lo) / span - 1.0, -1.0, 1.0)
        return np.where(mask.astype(bool), y, x).astype(np.float32)

    @staticmethod
    def unnormalize(y: np.ndarray, n: dict) -> np.ndarray:
        lo, hi, mask = (np.asarray(n[k], np.float64) for k in ("low", "high", "mask"))
        x = 0.5 * (y.astype(np.float64) + 1.0) * (hi - lo + n["add_out"]) + lo
        return np.where(mask.astype(bool), x, y).astype(np.float32)

    # --- LeRobot-layout families (SmolVLA): per-camera normalisation, padding, masks, noise ---------
    @staticmethod
    def lerobot(x: np.ndarray, n: dict, inverse: bool = False) -> np.ndarray:
        if n["kind"] == "identity":
            return x
        a, b = np.asarray(n["a"], np.float32), np.asarray(n["b"], np.float32)
        if n["kind"] == "mean_std":
            return x * b + a if inverse else (x - a) / (b + np.float32(n["eps"]))
        span = np.where(b - a == 0, np.float32(n["eps"]), b - a)
        return (x + 1) / 2 * span + a if inverse else 2 * (x - a) / span - 1

    @staticmethod
    def bilinear(x: np.ndarray, h: int, w: int) -> np.ndarray:
        """(C, H, W) -> (C, h, w), bilinear with half-pixel centres (align_corners=False, no antialias)."""
        def axis(n_in: int, n_out: int):
            src = np.maximum((np.arange(n_out, dtype=np.float32) + 0.5) * np.float32(n_in / n_out) - 0.5, 0)
            i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
            return i0, np.minimum(i0 + 1, n_in - 1), (src - i0).astype(np.float32)

        y0, y1, fy = axis(x.shape[1], h)
        x0, x1, fx = axis(x.shape[2], w)
        top = x[:, y0][:, :, x0] * (1 - fx) + x[:, y0][:, :, x1] * fx
        bottom = x[:, y1][:, :, x0] * (1 - fx) + x[:, y1][:, :, x1] * fx
        return (top * (1 - fy)[:, None] + bottom * fy[:, None]).astype(np.float32)

    def lerobot_pixels(self, images: dict) -> tuple[np.ndarray, np.ndarray]:
        d = self.proc["images"]
        size = d["branches"][0]["height"]
        planes = []
        for cam in d["per_camera"]:
            if cam["name"] not in images:
                continue
            x = np.asarray(images[cam["name"]]).astype(np.float32).transpose(2, 0, 1) / np.float32(255)
            x = self.lerobot(x, cam["normalization"])
            h, w = x.shape[1:]
            if (h, w) != (size, size):  # fit by one ratio, then zero padding (left and top, or centred)
                ratio = max(w / size, h / size)
                x = self.bilinear(x, int(h / ratio), int(w / ratio))
                if d.get("clamp"):
                    x = np.clip(x, 0.0, 1.0)
                dh, dw = size - x.shape[1], size - x.shape[2]
                top, left = (dh // 2, dw // 2) if d.get("padding") == "centred" else (dh, dw)
                x = np.pad(x, ((0, 0), (top, dh - top), (left, dw - left)))
            planes.append(x * 2 - 1)
        present = len(planes)
        planes += [np.full_like(planes[0], -1.0)] * min(d["declared_cameras"] - present, d["empty_cameras"])
        masks = np.asarray([[i < present for i in range(len(planes))]])
        return np.stack(planes)[None].astype(np.float32), masks

    def lerobot_text(self, instruction: str, state: np.ndarray) -> dict:
        p = self.proc["prompt"]
        sp = p.get("state_prompt")
        if sp:  # π0.5: the normalised state, binned, written into the prompt
            bins = np.digitize(state, bins=np.linspace(-1, 1, sp["bins"] + 1)[:-1]) - 1
            task = instruction.strip().replace("_", " ").replace("\n", " ")
            text = sp["template"].format(task=task, state=" ".join(map(str, bins)))
        elif p.get("newline", True):
            text = instruction if instruction.endswith("\n") else instruction + "\n"
        else:
            text = instruction
        ids = self.tokenizer.encode(text, add_special_tokens=p["add_special_tokens"]).ids
        if p.get("bos_if_missing") is not None and (not ids or ids[0] != p["bos_if_missing"]):
            ids = [p["bos_if_missing"]] + ids
        if p.get("eos_if_missing") is not None and (not ids or ids[-1] != p["eos_if_missing"]):
            ids = ids + [p["eos_if_missing"]]
        if p["truncate_to"]:
            ids = ids[: p["truncate_to"]]
        n = max(len(ids), p["pad_to"] or 0)
        pad = [p["pad_id"]] * (n - len(ids))
        mask = [True] * len(ids) + [False] * len(pad)
        ids, mask = (ids + pad, mask) if p["padding"] == "right" else (pad + ids, mask[::-1])
        return {p["ids"]: np.asarray([ids], np.int64), p["mask"]: np.asarray([mask])}

    def feeds(self, observation: dict, noise: np.ndarray | None = None) -> dict:
        if "per_camera" in self.proc["images"]:
            return self.lerobot_feeds(observation, noise)
        out = {self.proc["images"]["input"]: self.pixels(observation["images"]),
               **self.text(str(observation.get("instruction", "")))}
        st = self.proc["state"]
        if st:
            state = np.asarray(observation["state"], np.float64).reshape(-1)
            out[st["input"]] = self.normalize(state, st["normalization"])[None]
        return out

    def lerobot_feeds(self, observation: dict, noise: np.ndarray | None) -> dict:
        d, st, nz = self.proc["images"], self.proc["state"], self.proc["noise"]
        pixels, masks = self.lerobot_pixels(observation["images"])
        state = np.zeros(st["pad_to"], np.float32)
        if st["dim"]:
            x = np.asarray(observation["state"], np.float32).reshape(-1)
            state[: st["dim"]] = self.lerobot(x, st["normalization"])
        out = {d["input"]: pixels, d["masks"]: masks,
               **self.lerobot_text(str(observation.get("instruction", "")), state[: st["dim"]])}
        out[st["input"]] = state[None]
        if noise is None:  # any standard-normal draw; pass one to reproduce a given run
            noise = np.random.default_rng().standard_normal(nz["shape"]).astype(np.float32)
        out[nz["input"]] = np.asarray(noise, np.float32).reshape(1, *nz["shape"])
        return out

    # --- the graphs -------------------------------------------------------------------------------
    @staticmethod
    def _run(session, feeds: dict, outputs: list[str]) -> list[np.ndarray]:
        return session.run(outputs, {i.name: feeds[i.name] for i in session.get_inputs()})

    def normalised_chunk(self, feeds: dict) -> np.ndarray:
        m = self.model
        if m["head"] == "regression":
            return self._run(self.sessions["policy_step"], feeds, ["actions"])[0][0]
        if m["head"] == "flow":
            return self.integrate(feeds)[0]
        if m["head"] != "tokens":
            raise NotImplementedError(f"head {m['head']!r}")
        prefill, decode = self.sessions["prefill"], self.sessions["decode"]
        present = [f"present.{i}.{kv}" for i in range(m["num_layers"]) for kv in ("key", "value")]
        logits, mask, *kv = self._run(prefill, feeds, ["bin_logits", "attention_mask", *present])
        mask = mask.astype(np.int64)
        pos = mask.sum(-1, keepdims=True) - 1
        ids = []
        for i in range(m["action_tokens"]):
            ids.append(int(logits.argmax(-1)[0]))
            if i == m["action_tokens"] - 1:
                break
            mask = np.concatenate([mask, np.ones_like(mask[:, :1])], axis=1)
            pos = pos + 1
            step = {"token_ids": np.asarray([[ids[-1] + m["action_token_start"]]], np.int64),
                    "attention_mask": mask, "position_ids": pos}
            step.update({f"past_key_values.{j // 2}.{('key', 'value')[j % 2]}": t for j, t in enumerate(kv)})
            logits, *kv = decode.run(["bin_logits", *present], step)
        ids = np.asarray(ids)
        if m.get("token_map"):  # OpenVLA: vocabulary ids; bin = clip(vocab_end - id - 1) -> centre of linspace
            n = int(m["n_action_bins"])
            edges = np.linspace(-1.0, 1.0, n, dtype=np.float64)
            centres = ((edges[:-1] + edges[1:]) / 2.0).astype(np.float32)
            values = centres[np.clip(int(m["action_vocab_end"]) - ids - 1, 0, n - 2)]
        else:  # bin index -> bin centre in [-1, 1]
            values = -1.0 + (ids.astype(np.float32) + 0.5) * np.float32(2.0 / m["n_bins"])
        return values.reshape(m["chunk_size"], m["action_dim"]).astype(np.float32)

    def integrate(self, feeds: dict) -> np.ndarray:
        """A flow head: prefix once; then, from x = noise, x <- x + dt * velocity(x, t) at each of the
        loop's times, in float32 (the prefix's outputs fed to every step as `carry` names them)."""
        loop = self.model["loop"]
        names = sorted(set(loop["carry"].values()))
        prefix = dict(zip(names, self._run(self.sessions[loop["prefix"]], feeds, names)))
        feeds = {**feeds, **{step_input: prefix[out] for step_input, out in loop["carry"].items()}}
        x, dt = np.asarray(feeds[loop["start"]], np.float32), np.float32(loop["dt"])
        for t in loop["times"]:
            feeds[loop["x"]], feeds[loop["t"]] = x, np.full(x.shape[:1], t, np.float32)
            x = x + dt * self._run(self.sessions[loop["step"]], feeds, [loop["velocity"]])[0]
        return x[:, :, : self.model["action_dim"]]

    def act(self, observation: dict, noise: np.ndarray | None = None) -> np.ndarray:
        """The actions to execute; `noise` (flow heads): the standard-normal draw of this step."""
        a = self.proc["actions"]
        chunk = self.normalised_chunk(self.feeds(observation, noise))
        n = a["normalization"]
        chunk = self.lerobot(chunk, n, inverse=True) if n["kind"] in ("identity", "mean_std", "range") \
            else self.unnormalize(chunk, n)
        return chunk[: a["execute"]]

    def blank_observation(self) -> dict:
        d, b = self.proc["images"], self.proc["images"]["branches"][0]
        names = d["cameras"] or [f"camera_{i}" for i in range(d["count"])]
        if "per_camera" in d:
            return {"images": {c["name"]: np.zeros((c["height"], c["width"], 3), np.uint8) for c in d["per_camera"]},
                    "instruction": "pick up the object", "state": np.zeros(self.proc["state"]["dim"], np.float32)}
        obs = {"images": {c: np.zeros((b["height"], b["width"], 3), np.uint8) for c in names},
               "instruction": "pick up the object"}
        if self.proc["state"]:
            obs["state"] = np.zeros(self.proc["state"]["dim"], np.float32)
        return obs


if __name__ == "__main__":
    runner = ArtifactRunner(sys.argv[1])
    print(runner.act(runner.blank_observation()))
