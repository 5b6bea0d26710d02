"""``fiqa-train``: train a small teacher on measured labels, with checkpoints, resume and a held-out split.

    fiqa-train utility    --labels runs/labels/lfw-dev --out runs/teachers/vit_fiqa_mini
    fiqa-train perceptual --labels runs/labels/lfw-dev --out runs/teachers/dsl_fiqa_tiny

The held-out split is identity-disjoint and fixed by ``--seed``. ``last.pt`` is written every
``--checkpoint-every`` steps and at each epoch end; re-running the same command resumes from it (a run with
different settings in the same --out is refused). ``teacher.pt`` (weights only) + ``teacher.json`` (config,
metrics, command, sha256) are the deliverable.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fiqa_compile.cli_args import non_negative_int, plain, positive_int
from fiqa_compile.train.data import LabelSet, make_batch
from fiqa_compile.train.schedule import epoch_batches, warmup_cosine
from fiqa_compile.train.tasks import TASKS

DEFAULT_MODEL = {"utility": "vit_fiqa_mini", "perceptual": "dsl_fiqa_tiny"}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def evaluate(model, task, labels: LabelSet, rows: np.ndarray, batch_size: int = 256) -> dict:
    model.eval()
    preds = []
    for k in range(0, len(rows), batch_size):
        r = rows[k:k + batch_size]
        preds.append(task.predict(model, make_batch(labels, r)))
    pred = np.concatenate(preds) if preds else np.zeros(0)
    target = getattr(labels, task.label_key)[rows]
    model.train()
    return {"srcc": spearman(pred, target) if len(rows) > 2 else float("nan"),
            "mae": float(np.mean(np.abs(pred - target))) if len(rows) else float("nan"), "n": int(len(rows))}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fiqa-train", description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", choices=sorted(TASKS), help="utility = ViT-FIQA on the certainty ratio; "
                                                        "perceptual = DSL-FIQA on the pseudo-MOS")
    ap.add_argument("--labels", required=True, type=Path, help="directory made by fiqa-labels (labels.npz)")
    ap.add_argument("--out", required=True, type=Path, help="run directory (checkpoints, teacher.pt, teacher.json)")
    ap.add_argument("--model", default=None, help="registered model name (default: vit_fiqa_mini for utility / dsl_fiqa_tiny for perceptual)")
    ap.add_argument("--epochs", type=positive_int, default=12, help="passes over the training identities (default 12)")
    ap.add_argument("--batch-size", type=positive_int, default=64, help="faces per step (default 64)")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate, cosine decay (default 1e-3)")
    ap.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default 0.05)")
    ap.add_argument("--warmup-steps", type=non_negative_int, default=200, help="linear warm-up steps (default 200)")
    ap.add_argument("--held-out", type=float, default=0.15, help="share of identities held out (default 0.15)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the split, initialisation and batches (default 0)")
    ap.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--checkpoint-every", type=positive_int, default=100, help="steps between last.pt saves (default 100)")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="stop cleanly (checkpoint saved, teacher exported) after this wall time; re-run to continue (default: no limit)")
    ap.add_argument("--margin", default="cosface", choices=["cosface", "arcface"], help="utility task: FR margin head (default cosface)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fiqa_compile.models.registry import create_model, get_config, list_models
    from tqdm import tqdm

    if args.threads:
        torch.set_num_threads(args.threads)
    model_name = args.model or DEFAULT_MODEL[args.task]
    family = "vit_fiqa" if args.task == "utility" else "dsl_fiqa"
    if model_name not in list_models(family):
        raise SystemExit(f"fiqa-train: --model {model_name!r} is not a {args.task} teacher; choose one of "
                         f"{', '.join(list_models(family))}")
    if not 0.0 < args.held_out < 1.0 or not args.lr > 0:
        raise SystemExit(f"fiqa-train: --held-out must be between 0 and 1 and --lr positive "
                         f"(got {args.held_out}, {args.lr})")
    if args.out.exists() and not args.out.is_dir():
        raise SystemExit(f"fiqa-train: --out {args.out} is a file; pass a folder for the run")
    try:
        labels = LabelSet.load(args.labels)
    except (OSError, ValueError) as e:  # LabelSetError is a ValueError
        raise SystemExit(f"fiqa-train: {e}") from None
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k not in ("out", "threads", "max_minutes", "checkpoint_every", "epochs")}
    settings["model"] = model_name
    settings["labels_sha256"] = labels.meta.get("labels_npz_sha256")
    settings_path = args.out / "settings.json"
    # Refuse only when there is progress to lose: a run that failed before its first checkpoint may be re-set.
    if (args.out / "last.pt").exists() and settings_path.exists() and json.loads(settings_path.read_text()) != settings:
        raise SystemExit(f"fiqa-train: {args.out} holds a run with other settings ({settings_path}); "
                         "use another --out, or delete it to start over")
    settings_path.write_text(json.dumps(settings, indent=2))

    torch.manual_seed(args.seed)
    train_rows, held_rows = labels.split(args.held_out, args.seed)
    cfg = get_config(model_name)
    model = create_model(model_name)
    task_kwargs = {"embedding_dim": getattr(cfg, "embedding_dim", None), "margin": args.margin}
    task = TASKS[args.task](labels, train_rows, **task_kwargs)
    train_rows, held_rows = task.filter_rows(train_rows), task.filter_rows(held_rows)
    params = list(model.parameters()) + list(task.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = len(train_rows) // args.batch_size
    if steps_per_epoch == 0:  # no step would run and an untrained model would be written as complete
        raise SystemExit(f"fiqa-train: {len(train_rows)} training rows do not fill one batch of --batch-size "
                         f"{args.batch_size}; label more photos or pass a smaller --batch-size")
    total = steps_per_epoch * args.epochs

    step, best, history = 0, -2.0, []
    last = args.out / "last.pt"
    if last.exists():
        ck = torch.load(last, map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"])
        if "head" in ck:
            task.head.load_state_dict(ck["head"])
        opt.load_state_dict(ck["opt"])
        step, best, history = int(ck["step"]), float(ck["best"]), json.loads(ck["history"])
        print(f"resumed from {last} at step {step}/{total}", flush=True)

    def save_last() -> None:
        ck = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "best": best,
              "history": json.dumps(history)}
        if hasattr(task, "head"):
            ck["head"] = task.head.state_dict()
        _atomic_save(ck, last)

    t0 = time.time()
    model.train()
    stopped_early = False
    pbar = tqdm(total=total, initial=step, desc=f"train {model_name}", file=sys.stdout, mininterval=15)
    while step < total:
        epoch, offset = divmod(step, steps_per_epoch)
        for rows, flip in epoch_batches(train_rows, args.batch_size, args.seed, epoch, offset, steps_per_epoch):
            batch = make_batch(labels, rows, flip)
            for g in opt.param_groups:
                g["lr"] = warmup_cosine(step, args.lr, args.warmup_steps, total)
            loss, logs = task.loss(model, batch, rows)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            step += 1
            pbar.update(1)
            pbar.set_postfix(loss=f"{loss.item():.3f}", **{k: f"{v:.3f}" for k, v in logs.items()}, refresh=False)
            if step % args.checkpoint_every == 0:
                save_last()
            if args.max_minutes and (time.time() - t0) > args.max_minutes * 60:
                stopped_early = True
                break
        if stopped_early:
            break
        metrics = evaluate(model, task, labels, held_rows)
        history.append({"epoch": epoch + 1, "step": step, **metrics})
        print(f"epoch {epoch + 1}/{args.epochs}: held-out SRCC {metrics['srcc']:.4f}  MAE {metrics['mae']:.4f}", flush=True)
        if metrics["srcc"] > best:
            best = metrics["srcc"]
            _atomic_save(model.state_dict(), args.out / "best.pt")
        save_last()
    pbar.close()
    save_last()
    if not (args.out / "best.pt").exists():
        _atomic_save(model.state_dict(), args.out / "best.pt")
    export_teacher(args, model_name, cfg, task, history, stopped_early, step, total, labels)
    return 0


def export_teacher(args, model_name, cfg, task, history, stopped_early, step, total, labels) -> None:
    weights = args.out / "teacher.pt"
    state = torch.load(args.out / "best.pt", map_location="cpu", weights_only=True)
    # The deliverable is stored in fp16 (half the bytes to commit); load_state_dict casts back to fp32.
    state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    _atomic_save(state, weights)
    task_state = {k: v for k, v in task.state().items() if k != "head"}
    info = {
        "task": args.task, "model": model_name, "config": dataclasses.asdict(cfg),
        "score": {"label": task.label_key, **task_state},
        "trained_steps": step, "planned_steps": total, "complete": step >= total and not stopped_early,
        "history": history, "best_held_out_srcc": max((h["srcc"] for h in history), default=None),
        "labels": {k: labels.meta.get(k) for k in ("command", "labels_npz_sha256", "samples", "photos")},
        "command": "fiqa-train " + " ".join(sys.argv[1:]), "seed": args.seed,
        "sha256": sha256(weights), "torch": torch.__version__,
    }
    (args.out / "teacher.json").write_text(json.dumps(info, indent=2))
    print(f"wrote {weights} ({weights.stat().st_size / 1e6:.2f} MB) and teacher.json", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
