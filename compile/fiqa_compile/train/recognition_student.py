"""Train the two-output student on recognition-utility labels of a frame set, grounded in both FR models.

    python -m fiqa_compile.train.recognition_student --frames runs/frames/train --out runs/student_rec \
        --init compile/fiqa_compile/weights/student_mfn

Utility target: :func:`fiqa_compile.labels.recognition.recognition_labels` (two recognisers' margins over their
FMR-1e-3 thresholds, every detected face of every photo). Perceptual target: the ``--init`` student's own
perceptual score (face and mirror averaged, as its bundles scored it), so this stage changes what the utility
score means and keeps the perceptual one. While it learns the scores, two throw-away heads regress each
recogniser's embedding of the same crop (1 - cosine) from the student's shared embedding: the backbone learns
what identity looks like, which is what the utility score is about (ViT-FIQA builds on an FR network for the same
reason). Checkpoints every ``checkpoint_every`` steps; re-running the same command resumes.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fiqa_compile.train.data import to_tensor
from fiqa_compile.train.schedule import epoch_batches, warmup_cosine
from fiqa_compile.train.tasks import pairwise_rank_loss

SCORE_NAMES = ("utility", "perceptual")
UTILITY_MEANING = ("recognition utility: how far above their FMR-1e-3 thresholds dlib's ResNet and MobileFaceNet are "
                   "expected to match this face to another photo of the person (fiqa_compile.labels.recognition)")


@dataclass(frozen=True)
class RecognitionStudentConfig:
    epochs: int = 6
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    utility_weight: float = 3.0
    fr_weight: float = 0.5
    rank_weight: float = 1.0
    ema: float = 0.998
    held_out: float = 0.1
    seed: int = 0
    checkpoint_every: int = 50


def _split(identity: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from fiqa_calibration import held_out_people

    held = held_out_people(identity, share, seed)
    mask = np.array([i in held for i in identity])
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def training_targets(data: dict[str, np.ndarray], init_model) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(detected rows' arrays, [N, 2] targets: recognition label, the init student's perceptual score)."""
    from fiqa_compile.distill import _predict
    from fiqa_compile.labels.recognition import recognition_labels

    label = recognition_labels(data)["label"]
    keep = ~np.isnan(label)
    rows = {k: v[keep] for k, v in data.items()}
    perceptual = _predict(init_model, rows["crop"], mirror_average=True)[:, 1]
    return rows, np.stack([label[keep], perceptual], 1).astype(np.float32)


def fr_targets(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Unit FR embeddings per row (MobileFaceNet's of the mirror image too, for flipped crops)."""
    from fiqa_compile.labels.recognition import unit_rows

    return {k: unit_rows(rows[f"emb_{k}"]).astype(np.float32) for k in ("dlib", "mfn", "mfn_mirror")}


def fit(rows: dict[str, np.ndarray], targets: np.ndarray, out: Path, cfg: RecognitionStudentConfig,
        init_state: dict, provenance: dict) -> dict:
    from scipy.stats import spearmanr
    from tqdm import tqdm

    from fiqa_compile.distill import WeightAverage, _predict, _save
    from fiqa_compile.models.registry import create_model

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    train, held = _split(rows["identity"], cfg.held_out, cfg.seed)
    mean, std = targets[train].mean(0), targets[train].std(0) + 1e-8
    z = torch.from_numpy((targets - mean) / std)
    fr = {k: torch.from_numpy(v) for k, v in fr_targets(rows).items()}
    model = create_model("student_mfn")
    model.load_state_dict(init_state)
    model = model.to(memory_format=torch.channels_last)
    heads = {"dlib": torch.nn.Linear(model.cfg.embed_dim, fr["dlib"].shape[1]),
             "mfn": torch.nn.Linear(model.cfg.embed_dim, fr["mfn"].shape[1])}
    params = list(model.parameters()) + [p for h in heads.values() for p in h.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(train) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = min(100, total // 10)
    ema = WeightAverage(model, cfg.ema)
    settings = {**dataclasses.asdict(cfg), "samples": int(len(targets))}
    last = out / "last.pt"
    step, history = 0, []
    if last.exists():
        ck = torch.load(last, map_location="cpu", weights_only=True)
        if json.loads(ck["settings"]) != settings:
            raise ValueError(f"{last} is a run with other settings; pass the same options to resume, or another --out")
        model.load_state_dict(ck["model"])
        for k, h in heads.items():
            h.load_state_dict(ck[f"head_{k}"])
        ema.state, step, history = ck["ema"], int(ck["step"]), json.loads(ck["history"])
        opt.load_state_dict(ck["opt"])
        print(f"resumed at step {step}/{total}", flush=True)

    def save_last() -> None:
        _save({"model": {k: v.contiguous() for k, v in model.state_dict().items()}, "opt": opt.state_dict(),
               "ema": ema.state, "step": step, "history": json.dumps(history), "settings": json.dumps(settings),
               **{f"head_{k}": h.state_dict() for k, h in heads.items()}}, last)

    model.train()
    pbar = tqdm(total=total, initial=step, desc="recognition student", file=sys.stdout, mininterval=15)
    while step < total:
        epoch, offset = divmod(step, steps_per_epoch)
        for b, (r, flip) in enumerate(epoch_batches(train, cfg.batch_size, cfg.seed, epoch, offset, steps_per_epoch)):
            crops = rows["crop"][r].copy()
            crops[flip] = crops[flip][:, :, ::-1]
            for g in opt.param_groups:
                g["lr"] = warmup_cosine(step, cfg.lr, warmup, total)
            x = to_tensor(crops).contiguous(memory_format=torch.channels_last)
            emb = model.pool(model.feature_map(x))
            pred = model.head(emb)
            t = z[r]
            loss = pred.new_zeros(())
            for i, w in ((0, cfg.utility_weight), (1, 1.0)):
                loss = loss + w * (F.mse_loss(pred[:, i], t[:, i]) / 2
                                   + cfg.rank_weight * pairwise_rank_loss(pred[:, i], t[:, i]))
            flip_t = torch.from_numpy(flip)[:, None]
            mfn_t = torch.where(flip_t, fr["mfn_mirror"][r], fr["mfn"][r])
            for head, target in ((heads["mfn"], mfn_t), (heads["dlib"], fr["dlib"][r])):
                loss = loss + cfg.fr_weight * (1 - F.cosine_similarity(head(emb), target, dim=1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            ema.update(model, step)
            pbar.update(1)
            pbar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            if step % cfg.checkpoint_every == 0:
                save_last()
        p = _predict(ema.model_copy(model), rows["crop"][held])
        srcc = {n: float(spearmanr(p[:, i], targets[held, i]).statistic) for i, n in enumerate(SCORE_NAMES)}
        history.append({"epoch": epoch + 1, "step": step, **{f"srcc_{k}": v for k, v in srcc.items()}})
        print(f"epoch {epoch + 1}/{cfg.epochs}: held-out SRCC with the targets "
              + "  ".join(f"{k} {v:.4f}" for k, v in srcc.items()), flush=True)
        save_last()
    pbar.close()
    final = ema.model_copy(model)
    weights = out / "student.pt"
    _save({k: v.contiguous() for k, v in final.state_dict().items()}, weights)
    lo, hi = np.percentile(targets[train], 1, axis=0), np.percentile(targets[train], 99, axis=0)
    info = {"student": "student_mfn", "config": {**dataclasses.asdict(cfg), "mirror_average": False},
            "samples": {"train": int(len(train)), "held_out": int(len(held))},
            "scores": [{"name": n, "index": i, "mean": float(mean[i]), "std": float(std[i]),
                        "teacher_p01": float(lo[i]), "teacher_p99": float(hi[i])} for i, n in enumerate(SCORE_NAMES)],
            "history": history, "trained_steps": step, "planned_steps": total, "complete": True,
            "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), **provenance}
    (out / "student.json").write_text(json.dumps(info, indent=2))
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fiqa_compile.train.recognition_student",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=Path, required=True, action="append",
                    help="frame set of the training people (labels.frame_set); repeat for sets of other --seeds")
    ap.add_argument("--out", type=Path, required=True, help="run folder (resumes when the settings match)")
    ap.add_argument("--init", type=Path, required=True, help="distilled student to start from")
    ap.add_argument("--epochs", type=int, default=RecognitionStudentConfig.epochs, help="passes (default %(default)s)")
    ap.add_argument("--lr", type=float, default=RecognitionStudentConfig.lr, help="peak learning rate (default %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed (default %(default)s)")
    args = ap.parse_args(argv)
    from fiqa_compile.distill import load_init
    from fiqa_compile.labels.frame_set import load_sets
    from fiqa_compile.models.registry import create_model

    torch.set_num_threads(args.threads)
    t0 = time.time()
    init_state, init_record = load_init(args.init, "student_mfn", "--init", "student_mfn")
    init_model = create_model("student_mfn")
    init_model.load_state_dict(init_state)
    data = load_sets(args.frames)
    rows, targets = training_targets(data, init_model.eval())
    print(f"{len(targets)} labelled faces of {len(np.unique(rows['identity']))} people "
          f"({time.time() - t0:.0f} s to label)", flush=True)
    stamps = [json.loads((f / "settings.json").read_text()) for f in args.frames]
    cfg = RecognitionStudentConfig(epochs=args.epochs, lr=args.lr, seed=args.seed)
    # The perceptual score is still the teachers' (through the init student), so the compile checks them as its own.
    teachers = json.loads((args.init / "student.json").read_text()).get("teachers")
    provenance = {"teachers": teachers, "command": "python -m fiqa_compile.train.recognition_student " + " ".join(sys.argv[1:] if argv is None else argv),
                  "data": [str(f) for f in args.frames], "frame_sets": stamps, "init": init_record, "torch": torch.__version__,
                  "utility_target": UTILITY_MEANING,
                  "perceptual_from": "the --init student's perceptual score (face + mirror mean)"}
    info = fit(rows, targets, args.out, cfg, init_state, provenance)
    print(json.dumps({k: info[k] for k in ("samples", "history", "sha256")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
