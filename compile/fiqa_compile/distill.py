"""Label-free distillation of both teachers into one compact two-output student (``fiqa-distill``).

The student sees only aligned faces: clean and seeded degraded versions of a user's own unlabelled photos
(``--faces DIR``) or the crops of an existing label set (``--crops DIR``). The teachers score every crop; the
student learns both scores at once, with MSE on z-scored teacher scores plus a pairwise logistic ranking term
(the scores exist to rank faces and gate captures). The slow perceptual teacher is scored once and cached; the
utility teacher by default runs online on each (augmented) batch, so its target is exact whatever the crop and
throw-away hint heads can learn what it sees. Checkpoints every N steps; re-running the same command resumes.

A run's configuration is a recipe (:mod:`fiqa_compile.distill_recipe`, :class:`DistillConfig`); what each
setting does and why, and the embedded student's cycles, are in ``fiqa_compile/recipes/README.md``.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from fiqa_compile.cli_args import non_negative_int, positive_float, positive_int
from fiqa_compile.train.augment import AugmentConfig, augment_batch, mix_faces, swap_parts
from fiqa_compile.train.data import to_tensor
from fiqa_compile.train.schedule import epoch_batches, warmup_cosine
from fiqa_compile.train.tasks import pairwise_rank_loss

if TYPE_CHECKING:
    from fiqa_compile.distill_recipe import Recipe

SCORE_NAMES = ("utility", "perceptual")


@dataclass
class FaceCrops:
    """Aligned crops to distil on; ``group`` keeps one person's (or photo's) crops on one side of a split."""

    crop: np.ndarray        # [N,112,112,3] uint8 BGR
    lm68: np.ndarray        # [N,68,2] crop pixels
    group: np.ndarray       # [N] str
    version: np.ndarray     # [N] int, 0 = clean
    source: str

    def __len__(self) -> int:
        return len(self.crop)

    def split(self, held_out: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        groups = np.unique(self.group)
        held = set(np.random.default_rng(seed).choice(groups, size=max(1, round(held_out * len(groups))),
                                                      replace=False).tolist())
        mask = np.array([g in held for g in self.group])
        return np.where(~mask)[0], np.where(mask)[0]


def crops_from_labels(directory: Path) -> FaceCrops:
    """Reuse the crops of a label set (their labels are ignored: distillation is label-free)."""
    from fiqa_compile.train.data import LabelSet

    ls = LabelSet.load(directory)
    return FaceCrops(ls.crop, ls.lm68, ls.identity, ls.version, source=f"crops of {directory}")


def crops_from_folder(folder: Path, versions: int, seed: int, max_steps: int = 2) -> FaceCrops:
    """Detect, align and degrade the central face of every photo in ``folder`` (identity sub-folders optional)."""
    import cv2
    from tqdm import tqdm

    from fiqa_calibration.crops import face_versions
    from fiqa_compile.fr.dlib_fr import DlibFaceRecognizer
    from fiqa_sdk.detection import RetinaFaceDetector

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--faces {folder} is not a directory")
    exts = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in exts and p.is_file())
    if not paths:
        raise ValueError(f"--faces {folder} holds no images ({sorted(exts)})")
    # No landmark refinement: the embedded student was distilled on these crops and its command must reproduce them.
    det = RetinaFaceDetector(score_threshold=0.6, max_side=640, refine_landmarks=False)
    lmk = DlibFaceRecognizer().landmarks68
    crops, lms, groups, vers, failures = [], [], [], [], 0
    for photo, p in enumerate(tqdm(paths, desc="aligning faces", file=sys.stdout, mininterval=5)):
        frame = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if frame is None:
            failures += 1
            continue
        out, _, failure = face_versions(frame, det, photo, versions, seed, max_steps, landmarks68=lmk)
        if failure:
            failures += 1
            continue
        group = p.parent.name if p.parent != folder else p.stem
        for fv in out:
            crops.append(fv.crop)
            lms.append(fv.lm68)
            groups.append(group)
            vers.append(fv.version)
    if len(set(groups)) < 2:
        raise ValueError(f"--faces {folder}: faces found in {len(set(groups))} photo(s) of {len(paths)}; distillation "
                         "needs at least 2 (ideally hundreds) of face photos")
    print(f"{len(paths) - failures} of {len(paths)} photos gave a face ({failures} skipped)", flush=True)
    return FaceCrops(np.stack(crops), np.stack(lms), np.array(groups), np.array(vers),
                     source=f"{len(paths)} photos in {folder}, {versions} degraded versions each, seed {seed}")


def teacher_targets(teachers: dict, data: FaceCrops) -> np.ndarray:
    """[N, 2] teacher scores (utility, perceptual) on their label scales."""
    from tqdm import tqdm

    out = np.zeros((len(data), 2), np.float32)
    chunk = 1024
    for k in tqdm(range(0, len(data), chunk), desc="teacher scores", file=sys.stdout, mininterval=5):
        sl = slice(k, k + chunk)
        out[sl, 0] = teachers["utility"].score(data.crop[sl])
        out[sl, 1] = teachers["perceptual"].score(data.crop[sl], data.lm68[sl])
    return out


def _fingerprint(data: FaceCrops, *teachers) -> str:
    """sha256 over the crops' pixels and the teachers' weights hashes: what a cached score depends on."""
    h = hashlib.sha256(memoryview(np.ascontiguousarray(data.crop)).cast("B"))
    for t in teachers:
        h.update(str(getattr(t, "info", {}).get("sha256", "")).encode())
    return h.hexdigest()


def _cached_scores(cache: Path, key: str, data: FaceCrops, compute, fingerprint: str) -> np.ndarray:
    """``compute()`` kept in ``cache`` under ``key`` so a resumed run does not score again.

    A cache of other crops or other teachers (its ``fingerprint``: :func:`_fingerprint`) belongs to another run;
    it is refused rather than replaced, because the run directory's checkpoint was trained on that data too.
    Caches written before fingerprints were recorded are checked by their length only.
    """
    if cache.exists():
        stored = np.load(cache)
        scores = stored[key]
        if len(scores) != len(data) or ("fingerprint" in stored.files and str(stored["fingerprint"]) != fingerprint):
            raise ValueError(f"{cache} holds teacher scores of other crops or other teachers than the {len(data)} of "
                             f"{data.source}: it belongs to another data set; use another run directory")
        return scores
    scores = compute()
    np.savez(cache, **{key: scores, "fingerprint": np.array(fingerprint)})
    return scores


def cached_tta_utility(teacher, data: FaceCrops, cache: Path) -> np.ndarray:
    """[N] utility teacher scores averaged over its test-time views, kept in ``cache`` (utility_tta.npz).

    The view set is mirror-symmetric, so the score also holds for the mirrored crops training feeds.
    """
    from tqdm import tqdm

    def compute() -> np.ndarray:
        out = np.zeros(len(data), np.float32)
        chunk = 512
        for k in tqdm(range(0, len(data), chunk), desc="utility teacher, 10 views", file=sys.stdout, mininterval=5):
            out[k:k + chunk] = teacher.score(data.crop[k:k + chunk], tta=True)
        return out

    return _cached_scores(cache, "utility_tta", data, compute, _fingerprint(data, teacher))


def distillation_targets(teachers: dict, data: FaceCrops, out: Path, utility_tta: bool) -> np.ndarray:
    """[N, 2] targets cached in the run directory ``out``: utility (the 10-view mean when ``utility_tta``), perceptual."""
    targets = cached_teacher_targets(teachers, data, out / "targets.npz")
    if utility_tta:
        targets[:, 0] = cached_tta_utility(teachers["utility"], data, out / "utility_tta.npz")
    return targets


def cached_teacher_targets(teachers: dict, data: FaceCrops, cache: Path) -> np.ndarray:
    """:func:`teacher_targets`, kept in ``cache`` (targets.npz; see :func:`_cached_scores`)."""
    return _cached_scores(cache, "targets", data, lambda: teacher_targets(teachers, data),
                          _fingerprint(data, teachers["utility"], teachers["perceptual"]))


@dataclass
class DistillConfig:
    student: str = "student_mfn"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    rank_weight: float = 1.0
    utility_weight: float = 1.0   # weight of the utility score's losses next to the perceptual one's
    held_out: float = 0.15
    seed: int = 0
    checkpoint_every: int = 100
    max_minutes: float | None = None
    online_utility: bool = True   # score the utility teacher on each augmented batch (else: cached scores)
    feature_weight: float = 1.0   # weight of the teacher-feature hint loss (online utility only)
    augment: float | None = None  # share of each batch re-aligned/re-lit/re-degraded; None: 0.5 online, else 0
    token_weight: float = 0.0     # weight of the patch-token hint: student map vs teacher tokens (online only)
    embedding_weight: float = 0.0  # weight of the FR-embedding hint, 1 - cosine (online utility only)
    mixup: float = 0.0            # share of each batch blended with another face of it (online utility only)
    part_swap: float = 0.0        # share of each batch given another face's eyes, nose or mouth (online only)
    ema: float = 0.0              # EMA decay of the saved weights (0 = off: the last weights are saved)
    utility_tta: bool = True      # utility target = the teacher's mean over its 10 test-time views (teachers.tta_views)
    mirror_average: bool = False  # learn the mean over each crop and its mirror image: what mirror_average bundles run

    def __post_init__(self) -> None:
        # checked when the recipe is read, not minutes later when training starts; messages name the recipe keys
        from fiqa_compile.models.registry import list_models

        students = list_models("student_")
        if self.student not in students:
            raise ValueError(f"student = {self.student!r} is not a student architecture; choose one of "
                             f"{', '.join(students)}")
        for name in ("epochs", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)}: need 1 or more")
        if self.seed < 0:
            raise ValueError(f"seed = {self.seed}: need 0 or more")
        if not self.lr > 0:
            raise ValueError(f"lr = {self.lr}: the learning rate must be positive")
        if not 0.0 < self.held_out < 1.0:
            raise ValueError(f"held_out = {self.held_out}: the held-out share must be between 0 and 1")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes = {self.max_minutes}: must be positive (leave it out for no limit)")
        for name in ("weight_decay", "rank_weight", "utility_weight", "feature_weight", "token_weight",
                     "embedding_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} = {getattr(self, name)}: must be 0 or more")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema = {self.ema}: the decay must be in [0, 1) (0 = off; e.g. 0.998)")
        if self.augment is None:
            self.augment = 0.5 if self.online_utility else 0.0
        for name in ("augment", "mixup", "part_swap"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} = {getattr(self, name)}: the share of each batch must be in [0, 1]")
        if not self.online_utility:  # each of these needs the teacher's output on the crop the student sees
            for name, why in (("mixup", "a blend of two faces has no cached teacher score"),
                              ("part_swap", "a face with another's eyes, nose or mouth has no cached teacher score"),
                              ("augment", "an augmented crop has no cached teacher score"),
                              ("token_weight", "the teacher's patch tokens come from the online teacher"),
                              ("embedding_weight", "the teacher's embedding comes from the online teacher")):
                if getattr(self, name) > 0:
                    raise ValueError(f"{name} needs online_utility: {why} (set {name} to 0, or online_utility "
                                     "to true)")


def changed_keys(was: dict, now: dict) -> list[str]:
    """The settings that differ between a run on disk and the one asked for (a key on one side only counts)."""
    missing = object()
    return sorted(k for k in {**was, **now} if was.get(k, missing) != now.get(k, missing))


def _save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _predict(model, crops: np.ndarray, batch: int = 512, mirror_average: bool = False) -> np.ndarray:
    """Scores of ``crops`` in eval mode (the model's mode is restored after); with ``mirror_average`` the mean over
    each crop and its mirror image, as a mirror_average bundle scores them."""
    def run(x: torch.Tensor) -> np.ndarray:
        y = model(x)
        return ((y + model(x.flip(-1))) / 2 if mirror_average else y).numpy()

    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = [run(to_tensor(crops[k:k + batch])) for k in range(0, len(crops), batch)]
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 2), np.float32)


class TeacherBatch(NamedTuple):
    """What the online utility teacher says about one batch (all float32, no grad)."""

    score: torch.Tensor           # [B] z-scored utility
    quality_features: torch.Tensor  # [B, D] input of the teacher's last linear layer
    patch_tokens: torch.Tensor    # [B, dim, grid, grid] normalised patch tokens, quality token dropped
    embedding: torch.Tensor       # [B, E] face-recognition embedding (not normalised)


class OnlineUtilityTeacher:
    """The utility teacher run on a training batch: its z-scored score and what it sees (:class:`TeacherBatch`).

    The quality features are the input of the teacher's last linear layer (``head_qs[-1]``), whatever feeds it
    (the quality token in "token" mode, the embedding in "full" mode): the score is a linear read-out of them.
    The patch tokens are the output of the final LayerNorm laid out on the patch grid.
    """

    def __init__(self, teacher, mean: float, std: float):
        head = getattr(teacher.model, "head_qs", None)
        if not isinstance(head, torch.nn.Sequential) or not isinstance(head[-1], torch.nn.Linear):
            raise ValueError(f"online utility distillation needs a ViT-FIQA teacher (head_qs ending in a Linear); "
                             f"{type(teacher.model).__name__} has none: set online_utility to false in the recipe")
        self.teacher, self.mean, self.std = teacher, mean, std
        self.model = teacher.model.eval()
        self.dim = head[-1].in_features
        cfg = self.model.cfg
        self.token_dim, self.grid, self.embedding_dim = cfg.dim, cfg.grid, cfg.embedding_dim
        self._feat: torch.Tensor | None = None
        self._tokens: torch.Tensor | None = None
        self._hooks = [head[-1].register_forward_hook(self._keep_feat),
                       self.model.norm.register_forward_hook(self._keep_tokens)]

    def _keep_feat(self, module, inputs, output) -> None:
        self._feat = inputs[0]

    def _keep_tokens(self, module, inputs, output) -> None:
        self._tokens = output

    def close(self) -> None:
        """Detach from the teacher, so its later forward passes (verification, scoring) keep nothing."""
        for h in self._hooks:
            h.remove()
        self._feat = self._tokens = None

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> TeacherBatch:
        out = self.model(x)
        score = out.quality.float() * self.teacher.std + self.teacher.mean
        b = x.shape[0]
        patches = self._tokens[:, -self.grid * self.grid:].float()
        grid = patches.transpose(1, 2).reshape(b, self.token_dim, self.grid, self.grid)
        return TeacherBatch((score - self.mean) / self.std, self._feat.float(), grid, out.embedding.float())


class WeightAverage:
    """Exponential moving average of a model's state (parameters and BatchNorm statistics).

    Averaged weights generalise better than the last ones of a noisy run; the decay ramps up over the first
    steps (``(1 + step) / (10 + step)``) so the average does not remember the start for long.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.state[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.state[k].copy_(v)

    def model_copy(self, model: torch.nn.Module) -> torch.nn.Module:
        """A copy of ``model`` holding the averaged weights (for evaluation and saving)."""
        m = copy.deepcopy(model)
        m.load_state_dict(self.state)
        return m


def distill(data: FaceCrops, targets: np.ndarray, out: Path, cfg: DistillConfig, provenance: dict,
            utility_teacher=None, init: dict | None = None) -> dict:
    """Train ``cfg.student`` on teacher ``targets``; write student.pt + student.json into ``out``.

    With ``cfg.online_utility`` the utility column of ``targets`` only sets the score scale and the held-out
    check; training targets for utility come from ``utility_teacher`` on each augmented batch. With
    ``cfg.utility_tta`` that column holds the teacher's test-time-view mean (:func:`cached_tta_utility`), which
    is the target of crops that were not augmented; augmented ones are scored online over the same views. ``init`` (a
    student state_dict of the same architecture) is where a fresh run starts instead of random weights: a
    student already distilled keeps learning (a new learning-rate cycle) rather than starting over. A run that
    resumes from its own ``last.pt`` ignores it.
    """
    from scipy.stats import spearmanr
    from tqdm import tqdm

    from fiqa_compile.models.registry import create_model

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    train, held = data.split(cfg.held_out, cfg.seed)
    mean = targets[train].mean(0)
    std = targets[train].std(0) + 1e-8
    z = ((targets - mean) / std).astype(np.float32)
    # channels-last roughly halves a CPU training step of depthwise-conv students; weights are saved contiguous.
    model = create_model(cfg.student)
    if init is not None:
        model.load_state_dict(init)
    model = model.to(memory_format=torch.channels_last)
    online = None
    if cfg.online_utility:
        if utility_teacher is None:
            raise ValueError("online utility distillation needs the utility teacher (utility_teacher=...)")
        online = OnlineUtilityTeacher(utility_teacher, float(mean[0]), float(std[0]))
    # Hint heads map the student's embedding / last map onto what the teacher sees; they are not exported.
    hints: dict[str, torch.nn.Module] = {}
    if online is not None and cfg.feature_weight > 0:
        hints["hint"] = torch.nn.Linear(model.cfg.embed_dim, online.dim)
    if online is not None and cfg.token_weight > 0:
        hints["token_hint"] = torch.nn.Conv2d(model.cfg.feat_ch, online.token_dim, 1)
    if online is not None and cfg.embedding_weight > 0:
        hints["embedding_hint"] = torch.nn.Linear(model.cfg.embed_dim, online.embedding_dim)
    augment = AugmentConfig(fraction=cfg.augment) if online is not None and cfg.augment > 0 else None
    params = list(model.parameters()) + [p for h in hints.values() for p in h.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(train) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = min(200, total // 10)

    ema = WeightAverage(model, cfg.ema) if cfg.ema > 0 else None
    last = out / "last.pt"
    # what a resumed run must share with the one that wrote last.pt (the time limit and checkpoint rate may change)
    run_settings = {**{k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("max_minutes", "checkpoint_every")},
                    "samples": int(len(data.crop))}
    for name in ("mirror_average", "part_swap"):  # runs from before these options existed resume unchanged
        if not run_settings[name]:
            run_settings.pop(name)
    step, history = 0, []
    if last.exists():
        ck = torch.load(last, map_location="cpu", weights_only=True)
        # hint heads and the average belong to the settings: a run with other ones is refused, not mixed
        kept = {k for k in ck if k in ("hint", "token_hint", "embedding_hint", "ema")}
        wanted = set(hints) | ({"ema"} if ema is not None else set())
        if kept != wanted:
            raise ValueError(f"{last} was written with other hint/ema settings (it holds {sorted(kept) or 'none'}, "
                             f"this run needs {sorted(wanted) or 'none'}); use another --out")
        if "settings" in ck and (diff := changed_keys(json.loads(ck["settings"]), run_settings)):
            raise ValueError(f"{last} is a run with other settings ({', '.join(diff)}); resuming would mix them. "
                             "Pass the same recipe and options again to resume, or use another --out")
        model.load_state_dict(ck["model"])
        for name, h in hints.items():
            h.load_state_dict(ck[name])
        if ema is not None:
            ema.state = ck["ema"]
        opt.load_state_dict(ck["opt"])
        step, history = int(ck["step"]), json.loads(ck["history"])
        print(f"resumed distillation at step {step}/{total}", flush=True)

    def save_last() -> None:
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        extra = {name: h.state_dict() for name, h in hints.items()}
        if ema is not None:
            extra["ema"] = ema.state
        _save({"model": state, "opt": opt.state_dict(), "step": step, "history": json.dumps(history),
               "settings": json.dumps(run_settings), **extra}, last)

    def final_model() -> torch.nn.Module:
        """What is evaluated and saved: the averaged weights when ema is on, else the last ones."""
        return ema.model_copy(model) if ema is not None else model

    t0, stopped = time.time(), False
    model.train()
    pbar = tqdm(total=total, initial=step, desc=f"distil {cfg.student}", file=sys.stdout, mininterval=15)
    while step < total and not stopped:
        epoch, offset = divmod(step, steps_per_epoch)
        for b, (rows, f) in enumerate(epoch_batches(train, cfg.batch_size, cfg.seed, epoch, offset, steps_per_epoch),
                                      start=offset):
            crops = data.crop[rows].copy()
            crops[f] = crops[f][:, :, ::-1]
            augmented = np.zeros(len(rows), bool)
            if augment is not None:
                crops, augmented = augment_batch(crops, augment, np.random.default_rng([cfg.seed, epoch, b]))
            if cfg.mixup > 0:  # DistillConfig refuses it without the online teacher
                crops, mixed = mix_faces(crops, cfg.mixup, np.random.default_rng([cfg.seed, epoch, b, 1]))
                augmented |= mixed
            if cfg.part_swap > 0:
                crops, swapped = swap_parts(crops, cfg.part_swap, np.random.default_rng([cfg.seed, epoch, b, 2]))
                augmented |= swapped
            for g in opt.param_groups:
                g["lr"] = warmup_cosine(step, cfg.lr, warmup, total)
            x = to_tensor(crops).contiguous(memory_format=torch.channels_last)
            fmap = model.feature_map(x)
            emb = model.pool(fmap)
            pred = model.head(emb)
            if cfg.mirror_average:  # the loss sees what a mirror_average bundle scores; hints use the crop's pass
                pred = (pred + model(x.flip(-1))) / 2
            t = torch.from_numpy(z[rows])
            loss = pred.new_zeros(())
            if online is not None:
                seen = online(x)
                t_util = seen.score
                if cfg.utility_tta:  # cached view mean where the crop is a data crop (or its mirror), else online
                    t_util = t[:, 0].clone()
                    if augmented.any():
                        tta = utility_teacher.score(crops[augmented], tta=True)
                        t_util[torch.from_numpy(augmented)] = torch.from_numpy((tta - mean[0]) / std[0]).float()
                t = torch.stack((t_util, t[:, 1]), 1)
                loss = loss + hint_loss(hints, cfg, fmap, emb, seen)
            # the cached perceptual target only holds for crops that were not augmented
            keep = torch.from_numpy(~augmented)
            for i, rows_i, w in ((0, slice(None), cfg.utility_weight), (1, keep, 1.0)):
                p_i, t_i = pred[rows_i, i], t[rows_i, i]
                if len(p_i):
                    loss = loss + w * (F.mse_loss(p_i, t_i) / 2 + cfg.rank_weight * pairwise_rank_loss(p_i, t_i))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if ema is not None:
                ema.update(model, step)
            pbar.update(1)
            pbar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            if step % cfg.checkpoint_every == 0:
                save_last()
            if cfg.max_minutes and time.time() - t0 > cfg.max_minutes * 60:
                stopped = True
                break
        if not stopped:
            p = _predict(final_model(), data.crop[held], mirror_average=cfg.mirror_average)
            srcc = {n: float(spearmanr(p[:, i], z[held, i]).statistic) for i, n in enumerate(SCORE_NAMES)}
            entry = {"epoch": epoch + 1, "step": step, **{f"srcc_{k}": v for k, v in srcc.items()}}
            if ema is not None:  # the raw weights too, so a run shows what averaging bought
                p_raw = _predict(model, data.crop[held], mirror_average=cfg.mirror_average)
                entry.update({f"raw_srcc_{n}": float(spearmanr(p_raw[:, i], z[held, i]).statistic)
                              for i, n in enumerate(SCORE_NAMES)})
            history.append(entry)
            print(f"epoch {epoch + 1}/{cfg.epochs}: held-out SRCC vs teachers "
                  + "  ".join(f"{k} {v:.4f}" for k, v in srcc.items())
                  + (f" (raw weights: utility {entry['raw_srcc_utility']:.4f})" if ema is not None else ""),
                  flush=True)
            save_last()
    pbar.close()
    if online is not None:
        online.close()
    save_last()
    weights = out / "student.pt"
    model = final_model()
    _save({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    p = _predict(model, data.crop[held], mirror_average=cfg.mirror_average) * std + mean
    lo = np.percentile(targets[train], 1, axis=0)
    hi = np.percentile(targets[train], 99, axis=0)
    info = {
        "student": cfg.student, "config": dataclasses.asdict(cfg), "data": data.source,
        "samples": {"train": int(len(train)), "held_out": int(len(held))},
        "scores": [{"name": n, "index": i, "mean": float(mean[i]), "std": float(std[i]),
                    "teacher_p01": float(lo[i]), "teacher_p99": float(hi[i])} for i, n in enumerate(SCORE_NAMES)],
        "held_out_srcc": {n: float(spearmanr(p[:, i], targets[held, i]).statistic) for i, n in enumerate(SCORE_NAMES)},
        "trained_steps": step, "planned_steps": total, "complete": step >= total and not stopped,
        "history": history, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), **provenance,
    }
    (out / "student.json").write_text(json.dumps(info, indent=2))
    np.save(out / "held_out_rows.npy", held)
    return info


def hint_loss(hints: dict[str, torch.nn.Module], cfg: DistillConfig, fmap: torch.Tensor, emb: torch.Tensor,
              seen: TeacherBatch) -> torch.Tensor:
    """The weighted sum of the hint losses that are on: quality features, patch tokens, FR embedding."""
    loss = emb.new_zeros(())
    if "hint" in hints:
        loss = loss + cfg.feature_weight * F.mse_loss(hints["hint"](emb), seen.quality_features)
    if "token_hint" in hints:
        grid = seen.patch_tokens.shape[-2:]
        mapped = F.interpolate(hints["token_hint"](fmap), size=grid, mode="bilinear", align_corners=False)
        loss = loss + cfg.token_weight * F.mse_loss(mapped, seen.patch_tokens)
    if "embedding_hint" in hints:
        cos = F.cosine_similarity(hints["embedding_hint"](emb), seen.embedding, dim=1)
        loss = loss + cfg.embedding_weight * (1 - cos).mean()
    return loss


def load_init(path: Path, student: str, flag: str, arch_flag: str) -> tuple[dict, dict]:
    """Weights of a distilled student to start from, and what to record of it (its own chain of starts too).

    Its sha256 is checked. A student of the same family with fewer blocks per stage is grown into ``student``
    (:func:`~fiqa_compile.models.students.deepen_state_dict`: the added blocks start as identities); any other
    architecture is refused, naming ``flag``/``arch_flag``.
    """
    from fiqa_compile.student_store import load_student
    from fiqa_compile.models.registry import get_config
    from fiqa_compile.models.students import StudentConfig, deepen_state_dict

    model, info = load_student(path)
    state = model.state_dict()
    record = {"path": str(path), "sha256": info["sha256"], "command": info.get("command"), "data": info.get("data"),
              "epochs": info.get("config", {}).get("epochs"), "init": info.get("init")}
    if info["student"] != student:
        small, large = get_config(info["student"]), get_config(student)
        try:
            if not isinstance(large, StudentConfig):
                raise ValueError(f"{student} is not a student")
            state = deepen_state_dict(state, small, large)
        except ValueError as e:
            raise ValueError(f"{flag} {path} is a {info['student']}, which cannot start the {arch_flag} {student} "
                             f"({e}): pass {arch_flag} {info['student']} or another {flag}") from e
        record["grown_from"] = info["student"]
    return state, record


DESCRIPTION = """\
Distil the two teachers into a small two-output student (utility, perceptual), label-free, on aligned faces
of your own photos (--faces) or of a label set (--crops). The training settings come from a recipe (--recipe:
a JSON or TOML file, or the name of a shipped one such as 11_part_swap_long; fiqa_compile/recipes/README.md
lists the keys and the shipped recipes). Re-running the same command resumes from the last checkpoint."""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fiqa-distill", description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--faces", type=Path, metavar="DIR", help="folder of your own unlabelled face photos")
    src.add_argument("--crops", type=Path, metavar="DIR", help="a fiqa-labels directory whose aligned crops to reuse")
    ap.add_argument("--out", type=Path, required=True, metavar="DIR",
                    help="run directory (student.pt, student.json, checkpoints)")
    ap.add_argument("--recipe", default=None, metavar="FILE",
                    help="the distillation settings (default: the built-in ones, listed in the recipes' README)")
    ap.add_argument("--init", type=Path, default=None, metavar="DIR",
                    help="student directory (student.pt + student.json) to start from instead of random weights: "
                         "a new learning-rate cycle on top of it")
    ap.add_argument("--epochs", type=positive_int, default=None, metavar="N",
                    help="passes over the training crops (default: the recipe's)")
    ap.add_argument("--lr", type=positive_float, default=None,
                    help="peak learning rate of the warm-up + cosine schedule (default: the recipe's)")
    ap.add_argument("--seed", type=non_negative_int, default=None, metavar="N",
                    help="seed of the split, batches, augmentation and degradations (default: the recipe's)")
    ap.add_argument("--max-minutes", type=positive_float, default=None, metavar="M",
                    help="stop after this many minutes with a checkpoint; re-run to continue (default: no limit)")
    ap.add_argument("--threads", type=positive_int, default=None, metavar="N",
                    help="torch CPU threads (default: torch's choice)")
    return ap


def main(argv: list[str] | None = None) -> int:
    from fiqa_compile.errors import CompileError
    from fiqa_compile.teachers import TeacherError

    try:
        return _main(argv)
    except (TeacherError, CompileError, OSError, ValueError) as e:  # OSError: unreadable input, --out a file
        print(f"fiqa-distill: error: {e}", file=sys.stderr)
        return 2


def recipe_of(args: argparse.Namespace) -> "Recipe":
    """The run's :class:`~fiqa_compile.distill_recipe.Recipe`: ``--recipe`` with the command line's overrides."""
    from fiqa_compile.distill_recipe import load_recipe, with_overrides

    return with_overrides(load_recipe(args.recipe), epochs=args.epochs, lr=args.lr, seed=args.seed,
                          max_minutes=args.max_minutes)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from fiqa_compile.errors import CompileError
    from fiqa_compile.teachers import load_teacher_pair

    recipe = recipe_of(args)
    cfg = recipe.config
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.out.exists() and not args.out.is_dir():
        raise CompileError(f"--out {args.out} is a file; pass a folder for the run")
    if (args.out / "student.pt").exists() and not (args.out / "last.pt").exists():
        # a finished run keeps last.pt (re-running resumes it); a bare student is someone's result, not a run
        raise CompileError(f"--out {args.out} holds a student (student.pt) that no fiqa-distill run there can "
                           "resume; it would be overwritten: pass a new --out (start from that student with "
                           f"--init {args.out})")
    teachers = load_teacher_pair(recipe.utility_teacher, recipe.perceptual_teacher)
    provenance = {"command": "fiqa-distill " + " ".join(sys.argv[1:] if argv is None else argv),
                  "recipe": recipe.record(),
                  "teachers": {k: {"model": t.info["model"], "sha256": t.info["sha256"], "path": str(t.path)}
                               for k, t in teachers.items()}, "torch": torch.__version__}
    init = None
    if args.init is not None:  # checked before minutes of aligning and scoring, and before --out is made
        init, provenance["init"] = load_init(args.init, cfg.student, "--init", "recipe's student =")
    args.out.mkdir(parents=True, exist_ok=True)
    data = crops_from_labels(args.crops) if args.crops else crops_from_folder(args.faces, recipe.versions, cfg.seed)
    targets = distillation_targets(teachers, data, args.out, cfg.utility_tta)
    info = distill(data, targets, args.out, cfg, provenance, utility_teacher=teachers["utility"], init=init)
    print(json.dumps({k: info[k] for k in ("student", "samples", "held_out_srcc", "complete", "sha256")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
