"""Train `reference-small` by behaviour cloning, reproducibly (seeded), on CPU or GPU.

Data: every frame of every demo is a sample; the target is the next K actions (the chunk),
padded with the episode's last action. Images get a random shift (pad + random crop, as in
DrQ): with ~50 demos per task a pixel policy overfits without it.

Loss: L1 on normalised actions (regression head) or cross-entropy on the 256 action bins of
every chunk token (tokens head).
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..data.lerobot import LeRobotDataset
from ..errors import ConfigError, DatasetError
from ..models.base import Normalizer


@dataclass(frozen=True)
class TrainConfig:
    head: str = "regression"
    preset: str = "reference-small"
    steps: int = 6000
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup: int = 200
    shift_px: int = 6
    seed: int = 0
    threads: int = 2
    val_episodes_per_task: int = 2
    init_from: str = ""  # a checkpoint whose matching weights start the run (continue, or switch heads)
    # bf16 autocast: 1.6x faster steps on CPUs with AVX512-BF16 (measured here), fp32 master weights
    amp: bool = True
    save_every: int = 0  # also save snapshots to <out>-snapshots/step-N every this many steps (0 = off)
    cameras: tuple[str, ...] = ()  # the cameras the model reads (empty = the preset's)
    # weight of the auxiliary loss: predict object and goal positions from the visual tokens alone
    # (targets from replaying the demonstrations, see train/scene.py; 0 = off). Training only: the
    # policy never sees the positions, and the small head that predicts them is not saved.
    aux_scene: float = 0.0
    # std of Gaussian noise added to the normalised proprio input of training frames (0 = off): a
    # precise end-effector position lets a policy find its place along a demonstration and copy
    # the next action without looking at the image; a blurred one makes the image necessary
    state_noise: float = 0.0


@dataclass
class FrameData:
    images: np.ndarray  # (N, cameras, H, W, 3) uint8
    states: np.ndarray  # (N, S) float32 (raw)
    actions: np.ndarray  # (N, A) float32 (raw)
    instructions: list[str]  # per frame
    episode_end: np.ndarray  # (N,) index one past the frame's episode end
    episode_of: np.ndarray  # (N,) episode index


def load_frames(root: str | Path, cameras: str | tuple[str, ...], log: Callable[[str], None] = print,
                episodes: list[int] | None = None) -> tuple[FrameData, list[dict]]:
    """Decode every frame of the dataset (or of the given episode indices) into memory, the given
    cameras' images stacked per frame; `meta[i]` describes the i-th episode loaded (its "index" is
    i, the position in FrameData.episode_of)."""
    cameras = (cameras,) if isinstance(cameras, str) else tuple(cameras)
    ds = LeRobotDataset(root)
    imgs, states, actions, instr, ends, eps, meta = [], [], [], [], [], [], []
    n = 0
    t0 = time.time()
    for i, ep in enumerate(ds.iter_episodes(episodes)):
        missing = [c for c in cameras if c not in ep.images]
        if missing:
            raise ValueError(f"{root}: dataset has no camera(s) {missing} (has {list(ep.images)})")
        T = len(ep)
        imgs.append(np.stack([ep.images[c] for c in cameras], axis=1))
        states.append(ep.state); actions.append(ep.action)
        instr += [ep.task] * T
        ends.append(np.full(T, n + T)); eps.append(np.full(T, i))
        meta.append({"index": i, "task": ep.task, **ep.extras})
        n += T
        if (i + 1) % 100 == 0:
            log(f"decoded {i + 1}/{len(ds)} episodes ({time.time() - t0:.0f}s)")
    return FrameData(np.concatenate(imgs), np.concatenate(states), np.concatenate(actions), instr,
                     np.concatenate(ends), np.concatenate(eps)), meta


def load_datasets(roots: list[str | Path], cameras: tuple[str, ...], log: Callable[[str], None] = print
                  ) -> tuple[FrameData, list[dict], int]:
    """Several datasets (demonstrations first, then e.g. DAgger episodes) as one FrameData;
    returns (frames, meta, number of episodes that came from the first dataset)."""
    parts = [load_frames(r, cameras, log) for r in roots]
    frames, metas, n_frames, n_eps = [], [], 0, 0
    for data, meta in parts:
        frames.append(FrameData(data.images, data.states, data.actions, data.instructions,
                                data.episode_end + n_frames, data.episode_of + n_eps))
        metas += [{**m, "index": m["index"] + n_eps} for m in meta]
        n_frames += len(data.actions)
        n_eps += len(meta)
    if len(frames) == 1:
        return frames[0], metas, n_eps
    cat = lambda name: np.concatenate([getattr(f, name) for f in frames])  # noqa: E731
    merged = FrameData(cat("images"), cat("states"), cat("actions"), [i for f in frames for i in f.instructions],
                       cat("episode_end"), cat("episode_of"))
    return merged, metas, len(parts[0][1])


def split_episodes(meta: list[dict], per_task: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out the last `per_task` episodes of every task for validation."""
    by_task: dict[str, list[int]] = {}
    for m in meta:
        by_task.setdefault(m["task"], []).append(m["index"])
    val = [i for ids in by_task.values() for i in ids[len(ids) - per_task:]] if per_task else []
    train = sorted(set(m["index"] for m in meta) - set(val))
    return np.asarray(train), np.asarray(sorted(val))


def train(dataset: str | Path | list, out: str | Path, cfg: TrainConfig = TrainConfig(),
          log: Callable[[str], None] = print) -> Path:
    """Behaviour cloning on `dataset` (one LeRobot root, or several: the first holds the
    demonstrations the validation episodes come from; the others, e.g. DAgger episodes, only train)."""
    import torch
    import torch.nn.functional as F

    from ..models.reference import PRESETS, ReferenceConfig, ReferenceVLA
    from ..models.reference.adapter import default_tokenizer

    if cfg.aux_scene < 0 or cfg.state_noise < 0:
        raise ConfigError(f"aux_scene and state_noise must be >= 0 (got {cfg.aux_scene}, {cfg.state_noise})")
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    mcfg = ReferenceConfig(**{**PRESETS[cfg.preset].__dict__, "head": cfg.head})
    if cfg.cameras:
        mcfg = replace(mcfg, vision=replace(mcfg.vision, cameras=tuple(cfg.cameras)))
    roots = [dataset] if isinstance(dataset, (str, Path)) else list(dataset)
    data, meta, n_first = load_datasets(roots, mcfg.vision.cameras, log)
    train_eps, val_eps = split_episodes(meta[:n_first], cfg.val_episodes_per_task)
    train_eps = np.concatenate([train_eps, np.arange(n_first, len(meta))]).astype(int)
    train_idx = np.nonzero(np.isin(data.episode_of, train_eps))[0]
    val_idx = np.nonzero(np.isin(data.episode_of, val_eps))[0]
    log(f"{len(data.actions)} frames, {len(train_eps)} train / {len(val_eps)} val episodes")

    # OpenVLA BOUNDS_Q99 normalisation from the training frames only
    tr_a, tr_s = data.actions[train_idx], data.states[train_idx]
    action_norm = Normalizer(np.quantile(tr_a, 0.01, 0), np.quantile(tr_a, 0.99, 0))
    state_norm = Normalizer(np.quantile(tr_s, 0.01, 0), np.quantile(tr_s, 0.99, 0))
    norm_actions = action_norm.normalize(data.actions)

    model = ReferenceVLA.build(mcfg, default_tokenizer(), seed=cfg.seed, action_norm=action_norm, state_norm=state_norm)
    if cfg.init_from:
        src = ReferenceVLA.from_pretrained(cfg.init_from).state_dict()
        own = model.state_dict()
        # every tensor whose name and shape match: the whole model when continuing a run, the
        # vision encoder/projector/backbone when switching heads (the heads share no names)
        shared = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(shared, strict=False)
        log(f"initialised {len(shared)}/{len(own)} tensors from {cfg.init_from}")
    model.train()
    proc = model.processor
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    K = mcfg.chunk_size

    noise_gen = torch.Generator().manual_seed(cfg.seed + 2)
    aux = SceneAux(model, data, meta, train_idx, val_idx, cfg, device, log, roots) if cfg.aux_scene > 0 else None

    def batch(idx: np.ndarray, augment: bool):
        out = frame_batch(proc, data, norm_actions, state_norm, idx, K, cfg.shift_px if augment else 0, device)
        if augment and cfg.state_noise > 0:
            out[3] = out[3] + cfg.state_noise * torch.randn(out[3].shape, generator=noise_gen).to(out[3].device)
        return out

    def loss_fn(imgs, text_ids, text_mask, state, act):
        if cfg.head == "regression":
            pred = model.forward_regression(imgs, text_ids, text_mask, state)
            return F.l1_loss(pred.float(), act)
        bins = model.actions_to_bins(act)
        ids = bins + (mcfg.backbone.vocab_size - mcfg.n_bins)
        logits = model.forward_tokens_teacher(imgs, text_ids, text_mask, state, ids)
        action_logits = logits[..., -mcfg.n_bins:]
        return F.cross_entropy(action_logits.float().reshape(-1, mcfg.n_bins), bins.reshape(-1))

    params = list(model.parameters()) + (list(aux.head.parameters()) if aux else [])
    opt, sched = adamw_cosine(params, cfg.lr, cfg.weight_decay, cfg.warmup, cfg.steps)
    rng = np.random.default_rng(cfg.seed)
    t0 = time.time()
    history = []
    for step in range(1, cfg.steps + 1):
        idx = rng.choice(train_idx, size=cfg.batch_size, replace=False)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            loss = loss_fn(*batch(idx, augment=True))
            aux_loss = aux.loss(idx) if aux else None
        opt.zero_grad(set_to_none=True)
        (loss if aux_loss is None else loss + cfg.aux_scene * aux_loss).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == cfg.steps:
            val = evaluate_offline(model, batch, loss_fn, val_idx, cfg.batch_size)
            el = time.time() - t0
            history.append({"step": step, "train_loss": loss.item(), "val_loss": val, "elapsed_s": round(el, 1)})
            extra = ""
            if aux:
                history[-1]["val_aux_scene"] = aux.val_loss(batch)
                extra = f" aux {aux_loss.item() if aux_loss is not None else float('nan'):.4f} val-aux {history[-1]['val_aux_scene']:.4f}"
            log(f"step {step}/{cfg.steps} loss {loss.item():.4f} val {val:.4f}{extra} {el / step:.2f}s/step "
                f"eta {el / step * (cfg.steps - step) / 60:.1f} min")
        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
            model.eval()
            model.save_pretrained(Path(f"{out}-snapshots") / f"step-{step}")
            model.train()
    model.eval().cpu()
    model.training_info = {
        "config": asdict(cfg), "dataset": ", ".join(str(r) for r in roots), "frames": int(len(data.actions)),
        "train_episodes": int(len(train_eps)), "val_episodes": int(len(val_eps)),
        "train_seconds": round(time.time() - t0, 1), "device": str(device),
        "host": {"cpu": platform.processor() or platform.machine(), "threads": cfg.threads},
        "history": history,
    }
    return model.save_pretrained(out)


class SceneAux:
    """The auxiliary scene loss (TrainConfig.aux_scene): a small MLP reads the visual tokens the
    projector just produced (captured by a forward hook, so the model's forward is unchanged) and
    predicts each frame's normalised object and goal positions; L1 on frames that have a target."""

    def __init__(self, model, data: FrameData, meta: list[dict], train_idx: np.ndarray, val_idx: np.ndarray,
                 cfg: TrainConfig, device, log: Callable[[str], None], roots: list = ()):
        import torch
        from torch import nn

        from .scene import SCENE_DIM, scene_targets

        replayable = np.array(["dagger" not in m for m in meta])
        targets, self.mask = scene_targets(meta, data.episode_of, data.actions, data.states, replayable, log=log)
        have = train_idx[self.mask[train_idx]]
        if len(have) == 0:
            raise DatasetError(", ".join(str(r) for r in roots), "--aux-scene needs demonstrations that replay "
                               "in MetaWorld from their recorded seeds; no training episode did")
        norm = Normalizer(np.quantile(targets[have], 0.01, 0), np.quantile(targets[have], 0.99, 0))
        self.targets = norm.normalize(targets)
        self.val_idx = val_idx[self.mask[val_idx]]
        mc = model.cfg
        n_tok = mc.visual_tokens
        torch.manual_seed(cfg.seed + 1)
        self.head = nn.Sequential(nn.Linear(n_tok * mc.backbone.hidden_size, 256), nn.GELU(),
                                  nn.Linear(256, SCENE_DIM)).to(device)
        self.device = device
        self.model = model
        self._tokens = None
        model.projector.register_forward_hook(lambda _m, _i, out: setattr(self, "_tokens", out))

    def loss(self, idx: np.ndarray):
        """The auxiliary loss of the forward pass that just ran on frames `idx` (None: no targets there)."""
        import torch
        import torch.nn.functional as F

        tokens, self._tokens = self._tokens, None
        keep = torch.from_numpy(self.mask[idx]).to(self.device)
        if not bool(keep.any()):
            return None
        pred = self.head(tokens.reshape(len(idx), -1)[keep].float())
        return F.l1_loss(pred, torch.from_numpy(self.targets[idx][self.mask[idx]]).to(self.device))

    def val_loss(self, batch) -> float:
        """Mean auxiliary L1 on (up to 256 of) the validation frames that have targets."""
        import torch

        if len(self.val_idx) == 0:
            return float("nan")
        sel = self.val_idx[np.linspace(0, len(self.val_idx) - 1, min(len(self.val_idx), 256)).astype(int)]
        self.head.eval()
        self.model.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(sel), 64):
                part = sel[i:i + 64]
                imgs = batch(part, augment=False)[0]
                self._tokens = None
                self.model.visual_tokens(imgs)
                out.append(float(self.loss(part)))
        self.head.train()
        self.model.train()
        return float(np.mean(out))


def frame_batch(proc, data: FrameData, norm_actions: np.ndarray, state_norm: Normalizer, idx: np.ndarray,
                chunk: int, shift_px: int = 0, device=None, rng: np.random.RandomState | None = None) -> list:
    """Model inputs and targets for frames `idx`: [images, text_ids, text_mask, state, action chunk].

    The target is the next `chunk` normalised actions, padded with the episode's last action.
    `shift_px` > 0: random-shift augmentation (replicate-pad by shift_px, random crop back, as in
    DrQ), offsets drawn from `rng` (numpy's global generator when None)."""
    import torch
    import torch.nn.functional as F

    offs = np.arange(chunk)[None, :] + idx[:, None]
    offs = np.minimum(offs, data.episode_end[idx][:, None] - 1)  # pad with the last action
    act = torch.from_numpy(norm_actions[offs])
    imgs = proc.images(data.images[idx])
    if shift_px:
        p = shift_px
        padded = F.pad(imgs, (p, p, p, p), mode="replicate")
        s = imgs.shape[-1]
        ox, oy = (np.random if rng is None else rng).randint(0, 2 * p + 1, size=(2, len(idx)))
        imgs = torch.stack([padded[i, :, oy[i]:oy[i] + s, ox[i]:ox[i] + s] for i in range(len(idx))])
    text_ids, text_mask = proc.text([data.instructions[i] for i in idx])
    state = torch.from_numpy(state_norm.normalize(data.states[idx]))
    return [t.to(device) if device is not None else t for t in (imgs, text_ids, text_mask, state, act)]


def adamw_cosine(params: list, lr: float, weight_decay: float, warmup: int, steps: int):
    """AdamW (betas 0.9/0.95; no decay on biases and norms, i.e. tensors with < 2 dims) with linear
    warm-up over `warmup` steps and a cosine decay to 0 at `steps`; returns (optimizer, scheduler)."""
    import torch

    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(warmup, 1)) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    return opt, sched


def evaluate_offline(model, batch, loss_fn, val_idx: np.ndarray, bs: int) -> float:
    import torch

    if len(val_idx) == 0:
        return float("nan")
    sel = val_idx[np.linspace(0, len(val_idx) - 1, min(len(val_idx), 4 * bs)).astype(int)]
    model.eval()
    with torch.no_grad():
        losses = [float(loss_fn(*batch(sel[i:i + bs], augment=False))) for i in range(0, len(sel), bs)]
    model.train()
    return float(np.mean(losses))
