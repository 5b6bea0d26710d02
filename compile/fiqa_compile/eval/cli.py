"""``fiqa-eval``: which quality measure removes the most recognition errors? EDC on cross-quality face pairs.

Pairs of the held-out identities (genuine within a person, impostor across people; a share with one side
degraded) are compared with a face-recognition model's embeddings (--fr: dlib's ResNet, or MobileFaceNet). The
similarity threshold is fixed once at the target FMR over all impostor comparisons; then genuine comparisons are
discarded in ascending pair quality (the min of the two samples' qualities) and the FNMR of the rest is plotted
against the discarded share. The step-wise pAUC up to each discard limit, minus the theoretical best's, is what
each method leaves on the table (lower is better).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fiqa_compile.cli_args import non_negative_int, plain, positive_int
from fiqa_compile.eval.edc import EDC, edc
from fiqa_compile.eval.pairs import (HELD_OUT, IMPOSTORS_PER_FMR, SPLIT_SEED, PairError, Pairs, build_pairs,
                                     embed_stored_crops, held_out_rows, impostors_for_fmr, samples_from_faces)
from fiqa_compile.eval.scorers import (SPEC_HELP, MethodSpecError, MethodUnavailable, QualityMethod, SampleView,
                                       default_specs, effective_face_px, label_source_iod, parse_method)
from fiqa_compile.fr import FR_MODELS, FRModelUnavailable, create_recognizer
from fiqa_sdk.json_safe import finite_or_null

DEFAULT_FMR = 1e-2
DEFAULT_LIMITS = (0.2, 0.3)


@dataclass
class MethodResult:
    """A method's EDC on one pair set; stochastic methods carry the mean (and std) pAUC over their seeds."""

    spec: str
    name: str
    curve: EDC                      # the first seed's curve (the one plotted)
    pauc: dict[float, float]        # mean over seeds
    pauc_std: dict[float, float]    # 0 for deterministic methods
    seeds: int
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        c = self.curve
        key = lambda lim: f"{lim:g}"  # noqa: E731
        out = {"spec": self.spec, "name": self.name,
               "pauc": {key(k): v for k, v in self.pauc.items()},
               "pauc_best": {key(k): v for k, v in c.pauc_best.items()},
               "pauc_excess": {key(k): self.pauc[k] - c.pauc_best[k] for k in self.pauc},
               "fnmr_at_0_discard": c.start_error, "threshold": c.threshold, "fmr_target": c.fmr_target,
               "fmr_at_threshold": c.fmr_at_threshold, "n_genuine": c.n_comparisons,
               "n_genuine_errors": c.n_errors, "seeds": self.seeds, "seconds": round(self.seconds, 2)}
        if self.seeds > 1:
            out["pauc_std"] = {key(k): v for k, v in self.pauc_std.items()}
        return {**out, **self.extra}


def pair_edc(pairs: Pairs, genuine_qualities: np.ndarray, fmr: float, limits: Sequence[float],
             pair_quality: str = "min") -> EDC:
    """The EDC of ``pairs`` for genuine-pair qualities ([G] pairwise or [G, 2] per side)."""
    return edc(pairs.side_scores(True), genuine_qualities, pairs.side_scores(False), fmr=fmr,
               pair_quality=pair_quality, limits=tuple(limits))


def evaluate_qualities(spec: str, name: str, pairs: Pairs, per_seed: Sequence[np.ndarray], fmr: float,
                       limits: Sequence[float], pair_quality: str = "min") -> MethodResult:
    """EDC of one method given its per-sample qualities (arrays indexed by sample row), one array per seed."""
    if not per_seed:
        raise ValueError("per_seed needs at least one quality array")
    sides = pairs.side_rows(True)
    curves = [pair_edc(pairs, q[sides], fmr, limits, pair_quality) for q in per_seed]
    pauc = {float(k): float(np.mean([c.pauc[k] for c in curves])) for k in curves[0].pauc}
    std = {float(k): float(np.std([c.pauc[k] for c in curves])) for k in curves[0].pauc}
    return MethodResult(spec=spec, name=name, curve=curves[0], pauc=pauc, pauc_std=std, seeds=len(curves))


def score_method(method: QualityMethod, view: SampleView, rows: np.ndarray, n_samples: int,
                 seeds: int) -> list[np.ndarray]:
    """Qualities of ``view`` (the samples at ``rows``) spread into full-length arrays, one per seed."""
    out = []
    for s in range(seeds if method.stochastic else 1):
        full = np.full(n_samples, np.nan)
        full[rows] = method.score(view, seed=s)
        out.append(full)
    return out


def format_table(results: Sequence[MethodResult], limits: Sequence[float]) -> str:
    """Plain-text table: pAUC (mean ± std over seeds) and excess over the theoretical best, per limit.

    A seconds column (scoring + EDC time) appears when the results were timed.
    """
    timed = any(r.seconds > 0 for r in results)
    header = ["method"] + [h for lim in limits for h in (f"pAUC@{lim:g}", f"excess@{lim:g}")]
    header += ["seconds"] if timed else []
    table = []
    for r in results:
        row = [r.name]
        for lim in map(float, limits):
            sd = f" ±{r.pauc_std[lim]:.4f}" if r.seeds > 1 else ""
            row += [f"{r.pauc[lim]:.4f}{sd}", f"{r.pauc[lim] - r.curve.pauc_best[lim]:.4f}"]
        table.append(row + ([f"{r.seconds:.1f}"] if timed else []))
    if results:
        best = results[0].curve.pauc_best
        table.append(["theoretical best"] + [v for lim in map(float, limits) for v in (f"{best[lim]:.4f}", "0")]
                     + ([""] if timed else []))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *table)]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in table])


def describe_curve(c: EDC, pairs: Pairs) -> str:
    s = pairs.summary()
    return (f"{s['genuine']} genuine / {s['impostor']} impostor comparisons ({s['degraded_share']:.0%} with one side "
            f"degraded); threshold {c.threshold:.4f} at FMR {c.fmr_target:g} (achieved {c.fmr_at_threshold:.4g}); "
            f"FNMR at 0% discard {c.start_error:.4f} ({c.n_errors} errors)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="fiqa-eval", description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Method specs: " + SPEC_HELP + ". Without --method: the embedded teachers (when this install has "
               "them) and every baseline; a default method whose inputs are missing is listed as skipped.\n\n"
               "Example: fiqa-eval --labels runs/labels/lfw-dev --method teacher:runs/teachers/vit_fiqa_mini "
               "--method baseline:sharpness --method baseline:random --out runs/eval\n\n"
               "Compared by MobileFaceNet instead of dlib (bash scripts/get_mobilefacenet.sh first): the same command "
               "with --fr mobilefacenet, which embeds the label set's stored crops, or fiqa-eval --faces DIR --fr "
               "mobilefacenet --out runs/eval-mfn")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--labels", type=Path, help="label set made by fiqa-labels (uses its degraded versions and "
                                                 "stored dlib embeddings, so nothing is detected again; with --fr "
                                                 "mobilefacenet its stored crops are embedded)")
    src.add_argument("--faces", type=Path, help="face folder <identity>/<photo>; detects, degrades and embeds "
                                                "every face version with --fr (slower than --labels)")
    ap.add_argument("--fr", choices=FR_MODELS, default="dlib",
                    help="face-recognition model whose cosine similarity is the comparison score: dlib (ResNet, "
                         "128-d; default) or mobilefacenet (TFLite, 192-d, of the 112x112 crop; fetch it with "
                         "bash scripts/get_mobilefacenet.sh)")
    ap.add_argument("--method", action="append", default=None, metavar="SPEC",
                    help=f"quality method, repeatable: {SPEC_HELP}")
    ap.add_argument("--fmr", type=float, default=DEFAULT_FMR, help="target FMR fixing the threshold (default 1e-2)")
    ap.add_argument("--discard-limit", type=float, nargs="+", default=list(DEFAULT_LIMITS),
                    help="pAUC discard limits (default 0.2 0.3)")
    ap.add_argument("--out", type=Path, required=True, help="output folder for eval.json and edc.png")
    ap.add_argument("--force", action="store_true", help="replace an eval.json / edc.png already in --out")
    ap.add_argument("--split", choices=("held-out", "all"), default="held-out",
                    help=f"held-out: only the identities the teachers never saw (share {HELD_OUT}, seed "
                         f"{SPLIT_SEED}, as fiqa-train); all: every identity (an external test set)")
    ap.add_argument("--degraded-share", type=float, default=0.5,
                    help="share of genuine and of impostor pairs whose side b is a degraded version (default 0.5)")
    ap.add_argument("--impostors", type=positive_int, default=None,
                    help=f"impostor comparisons (default {IMPOSTORS_PER_FMR}/FMR)")
    ap.add_argument("--max-genuine-per-identity", type=non_negative_int, default=50,
                    help="cap on one person's genuine pairs, sampled (default 50; 0 = all)")
    ap.add_argument("--pair-quality", choices=("min", "mean"), default="min",
                    help="how two samples' qualities combine (default min, ISO/IEC 29794-1)")
    ap.add_argument("--random-seeds", type=positive_int, default=5, help="seeds the random baseline is averaged over (default 5)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the pair sampling (default 0)")
    ap.add_argument("--photos", type=Path, default=None,
                    help="with --labels: the photo folder fiqa-labels read (for baseline:face_size; default: "
                         "the --faces recorded in labels.json)")
    ap.add_argument("--versions", type=non_negative_int, default=1, help="with --faces: degraded versions per photo (default 1)")
    ap.add_argument("--limit", type=positive_int, default=None, help="with --faces: a seeded subset of N photos")
    ap.add_argument("--bundle-backend", default="auto", help="runtime backend for bundle: methods (default auto)")
    return ap


def _load(args: argparse.Namespace, recognizer):
    """(samples, rows to evaluate, source iod per row or None, description); ``emb`` is ``recognizer``'s."""
    if args.labels is not None:
        from fiqa_compile.train.data import LabelSet

        samples = LabelSet.load(args.labels)
        source_iod = None
        where = str(args.labels)
    else:
        samples = samples_from_faces(args.faces, versions=args.versions, seed=args.seed, limit=args.limit,
                                     progress=True, fr=recognizer)
        source_iod = samples.source_iod
        where = str(args.faces)
    rows = held_out_rows(samples) if args.split == "held-out" else np.arange(len(samples))
    if args.labels is not None and recognizer is not None:
        # a label set's emb is dlib's; a crop-only model embeds the stored crops of the rows evaluated
        samples.emb = embed_stored_crops(samples, rows, recognizer, progress=True)
    return samples, rows, source_iod, where


def _recognizer(args: argparse.Namespace):
    """The --fr model; None for dlib with a label set, whose stored embeddings are dlib's (no model to load)."""
    if args.labels is not None and args.fr == "dlib":
        return None
    return create_recognizer(args.fr)


def _methods(args: argparse.Namespace) -> tuple[list[QualityMethod], list[dict]]:
    explicit = args.method is not None
    methods, skipped = [], []
    for spec in (args.method if explicit else default_specs()):
        try:
            methods.append(parse_method(spec, args.bundle_backend))
        except MethodUnavailable as e:
            if explicit:
                raise
            skipped.append({"spec": spec, "reason": str(e)})
    return methods, skipped


def run(args: argparse.Namespace) -> dict:
    """Everything ``main`` does except argument parsing and exit codes; returns the eval.json document."""
    from fiqa_compile.eval.plots import plot_edc

    limits = tuple(float(v) for v in args.discard_limit)
    for lim in limits:
        if not 0.0 < lim <= 1.0:
            raise ValueError(f"--discard-limit values must be in (0, 1], got {lim}")
    if args.random_seeds < 1:
        raise ValueError(f"--random-seeds must be >= 1, got {args.random_seeds}")
    methods, skipped = _methods(args)  # before loading data: a bad spec fails in a second, not after minutes
    recognizer = _recognizer(args)     # likewise a missing FR model
    fr_info = recognizer.describe() if recognizer is not None else {
        "name": "dlib", "title": "dlib ResNet", "model": "dlib-resnet-v1", "dim": 128,
        "input": "the label set's stored dlib embeddings"}
    try:
        samples, rows, source_iod, where = _load(args, recognizer)
    finally:
        if recognizer is not None:
            recognizer.close()
    n_imp = args.impostors if args.impostors is not None else impostors_for_fmr(args.fmr)
    pairs = build_pairs(samples, rows, n_impostors=n_imp, degraded_share=args.degraded_share,
                        max_genuine_per_identity=args.max_genuine_per_identity or None, seed=args.seed)
    used = pairs.rows
    face_px = None
    if any(m.spec == "baseline:face_size" for m in methods):
        try:
            if source_iod is None:
                source_iod = label_source_iod(args.labels, samples, used, args.photos, progress=True)
            face_px = effective_face_px(source_iod[used], samples.chain[used])
        except MethodUnavailable as e:
            if args.method is not None:
                raise
            skipped.append({"spec": "baseline:face_size", "reason": str(e)})
            methods = [m for m in methods if m.spec != "baseline:face_size"]
    view = SampleView(crops=samples.crop[used], lm68=samples.lm68[used], face_px=face_px)
    results = []
    for m in methods:
        t0 = time.perf_counter()
        per_seed = score_method(m, view, used, len(samples), args.random_seeds)
        r = evaluate_qualities(m.spec, m.name, pairs, per_seed, args.fmr, limits, args.pair_quality)
        r.seconds = time.perf_counter() - t0
        results.append(r)
        print(f"  {m.name}: pAUC@{limits[0]:g} {r.pauc[limits[0]]:.4f} ({r.seconds:.1f} s)", flush=True)
    if not results:
        raise MethodSpecError("no method could be evaluated (all skipped: "
                              + "; ".join(s["reason"] for s in skipped) + ")")
    args.out.mkdir(parents=True, exist_ok=True)
    curves = {(f"{r.name} (seed 0 of {r.seeds})" if r.seeds > 1 else r.name): r.curve for r in results}
    png = plot_edc(curves, args.out / "edc.png", limit=max(limits),
                   title=f"EDC, {pairs.summary()['genuine']} genuine pairs, threshold at FMR {args.fmr:g}")
    first = results[0].curve
    doc = {
        "data": {"source": "labels" if args.labels is not None else "faces", "path": where, "split": args.split,
                 "held_out": HELD_OUT if args.split == "held-out" else None, "split_seed": SPLIT_SEED,
                 "samples_in_split": int(len(rows)),
                 "identities_in_split": int(len(np.unique(np.asarray(samples.identity)[rows])))},
        "pairs": pairs.summary(),
        "settings": {"fmr": args.fmr, "discard_limits": list(limits), "pair_quality": args.pair_quality,
                     "degraded_share": args.degraded_share, "impostors": n_imp,
                     "max_genuine_per_identity": args.max_genuine_per_identity or None,
                     "random_seeds": args.random_seeds, "seed": args.seed, "fr": fr_info["name"],
                     "fr_model": fr_info,
                     "comparison": f"cosine similarity of {fr_info['title']} ({fr_info['model']}) embeddings"},
        "threshold": first.threshold, "fmr_at_threshold": first.fmr_at_threshold,
        "fnmr_at_0_discard": first.start_error,
        "theoretical_best": {"pauc": {f"{k:g}": v for k, v in first.pauc_best.items()}},
        "methods": [r.to_dict() for r in results], "skipped": skipped, "edc_png": png.name,
    }
    (args.out / "eval.json").write_text(json.dumps(finite_or_null(doc), indent=2) + "\n")
    print(f"comparison: {doc['settings']['comparison']}")
    print(describe_curve(first, pairs))
    print(format_table(results, limits))
    for s in skipped:
        print(f"skipped {s['spec']}: {s['reason']}")
    print(f"wrote {args.out / 'eval.json'} and {png}")
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.fmr <= 0 or args.fmr >= 1 or not math.isfinite(args.fmr):
        ap.error(f"--fmr must be in (0, 1), got {args.fmr}")
    if args.out.exists() and not args.out.is_dir():
        ap.error(f"--out {args.out} is a file; pass a folder for eval.json and edc.png")
    if not 0.0 <= args.degraded_share <= 1.0:
        ap.error(f"--degraded-share must be in [0, 1], got {args.degraded_share}")
    held = [n for n in ("eval.json", "edc.png") if (args.out / n).exists()]
    if held and not args.force:
        print(f"fiqa-eval: error: {args.out} already holds {' and '.join(held)} from an earlier evaluation; pass "
              "another --out, or --force to replace them", file=sys.stderr)
        return 2
    try:
        run(args)
    except (MethodSpecError, PairError, ValueError, OSError, FRModelUnavailable) as e:  # OSError: unreadable input
        print(f"fiqa-eval: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
