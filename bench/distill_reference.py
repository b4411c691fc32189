"""Prune the shipped chunk checkpoint, then distil it back towards the unpruned teacher.

    python bench/distill_reference.py --prune layer-drop --steps 300

Loads checkpoints/reference-small-chunk (the teacher), applies layer-drop (one backbone layer,
ShortGPT block influence) or width-prune (MLP channels of the backbone), then the `distill` pass on
frames of the demonstration dataset, with one CPU thread. Prints the held-out action L1 to the
teacher before and after distillation (normalised action space, frames of the episodes the BC
trainer held out), parameters and FLOPs per policy step, and writes the pruned and the distilled
checkpoints (under .cache/compressed/, not committed) and bench/results/distill_reference_<prune>.json.
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRUNE = {"layer-drop": {"pass": "layer-drop", "num_layers": 1},
         "width-prune": {"pass": "width-prune", "mlp_ratio": 0.5, "round_to": 256}}


def main() -> None:
    import torch

    from vla_compress.fileio import write_json
    from vla_compress.models.reference import ReferenceVLA
    from vla_compress.passes import PassContext, apply_passes
    from vla_compress.passes.distill import DistillConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints/reference-small-chunk")
    ap.add_argument("--dataset", type=Path, default=ROOT / ".cache/demos/mt10-corner128")
    ap.add_argument("--prune", choices=sorted(PRUNE), default="layer-drop")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--hidden-weight", type=float, default=0.0)
    ap.add_argument("--train-episodes", type=int, default=200, help="training episodes decoded (0 = all)")
    ap.add_argument("--eval-frames", type=int, default=256)
    ap.add_argument("--amp", action="store_true", help="bf16 autocast for the training steps")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="checkpoint directory (default .cache/compressed/...)")
    args = ap.parse_args()
    if not args.dataset.is_dir():
        raise SystemExit(f"{args.dataset}: demonstration dataset not found (vla-compress collect-demos makes it)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    out = args.out or ROOT / f".cache/compressed/reference-small-chunk-{args.prune}-distill{args.steps}"

    teacher = ReferenceVLA.from_pretrained(args.checkpoint)
    vla = copy.deepcopy(teacher)
    ctx = PassContext.from_lerobot(vla, args.dataset, num_samples=32, seed=0, teacher=teacher)
    distill = DistillConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, hidden_weight=args.hidden_weight,
                            train_episodes=args.train_episodes, eval_frames=args.eval_frames, amp=args.amp)
    t0 = time.time()
    apply_passes(vla, [PRUNE[args.prune]], ctx)
    vla.save_pretrained(out.with_name(f"reference-small-chunk-{args.prune}"))  # pruned, not distilled
    apply_passes(vla, [distill], ctx)
    wall = time.time() - t0
    vla.save_pretrained(out)
    prune, dist = vla.compression_log
    notes = dist["details"]
    before, after = notes["heldout"]["before"], notes["heldout"]["after"]
    result = {
        "checkpoint": str(args.checkpoint),
        "dataset": str(args.dataset), "prune": PRUNE[args.prune], "distill": distill.to_dict(),
        "params": {"teacher": prune["before"]["params"], "student": dist["after"]["params"]},
        "flops": {"teacher": prune["before"]["flops"], "student": dist["after"]["flops"]},
        "pruned": prune["details"], "distill_details": notes, "wall_s": round(wall, 1),
        "threads": args.threads, "saved": str(out),
        "saved_pruned_only": str(out.with_name(f"reference-small-chunk-{args.prune}")),
    }
    write_json(ROOT / f"bench/results/distill_reference_{args.prune}.json", result)
    p, f = result["params"], result["flops"]
    print(f"| | teacher | {args.prune} | + distill ({args.steps} steps) |")
    print("|---|---|---|---|")
    print(f"| params | {p['teacher'] / 1e6:.3f}M | {p['student'] / 1e6:.3f}M | {p['student'] / 1e6:.3f}M |")
    print(f"| GFLOPs / policy step | {f['teacher'] / 1e9:.3f} | {f['student'] / 1e9:.3f} | {f['student'] / 1e9:.3f} |")
    print(f"| held-out action L1 to teacher | 0 | {before['action_l1_to_teacher']:.4f} | "
          f"{after['action_l1_to_teacher']:.4f} |")
    print(f"| held-out action L1 to demos | {notes['heldout']['teacher_l1_to_data']:.4f} | "
          f"{before['action_l1_to_data']:.4f} | {after['action_l1_to_data']:.4f} |")
    print(f"frames: {notes['frames']}, loss {notes['loss_start']:.4f} -> {notes['loss_end']:.4f}, "
          f"{notes['s_per_step']:.2f} s/step, data {notes['load_s']:.0f} s, total {wall:.0f} s; saved {out}")


if __name__ == "__main__":
    main()
