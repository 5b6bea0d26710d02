"""Recognition utility on people no model was trained on: the default bundles beside the published edge peers.

    python bench/recognition_utility.py                      # needs runs/frames/heldout-eval (below)
    python -m fiqa_compile.labels.frame_set --faces ../shared/data/lfw-dev --out runs/frames/heldout-eval \
        --split held-out --protocol eval                     # ~6 minutes on 2 cores

The sample set holds the held-out people of lfw-dev (share 0.15, seed 0: no photo of them was used for labels,
teachers, students or calibration), every photo clean and degraded *in the frame* once per damage family (blur,
noise, JPEG, downscaling, low light), each detected and aligned as the device does. Cross-quality comparisons: every
within-person photo pair (at most ``--max-per-person`` per person) and 100 / FMR impostor pairs, side b of half of
them swapped for a degraded version. Each comparison is scored by two face-recognition models, dlib's ResNet and
MobileFaceNet, with the threshold at FMR 1e-3.

For each quality method and FR model: EDC pAUC to 20 % discard (lower is better), and per damage family the AUC
with which a low pair quality flags a false non-match (0.5 is chance). Methods: the default bundles through
``fiqa_sdk.Scorer`` (INT8, as a device runs them), ``--method`` specs of ``fiqa-eval`` (teachers, bundles,
baselines), the peers of ``../shared/peers`` on their own runtimes (``bench/peers``; listed as skipped when absent),
and, as a reference that is not a quality model, MobileFaceNet's own embedding norm.

Writes ``results/recognition_utility.json`` / ``.md`` / ``_edc.png``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_basics  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
FMR = 1e-3
LIMIT = 0.2
FR_MODELS = ("dlib", "mobilefacenet")
FAMILIES = ("clean", "blur", "noise", "jpeg", "downscale", "low_light")
DEFAULT_METHODS = ("bundle:sdk/fiqa_sdk/bundles/default-android-arm64", "bundle:sdk/fiqa_sdk/bundles/default-cpu",
                   "baseline:sharpness", "baseline:random")


class Samples:
    """Detected rows of a frame set, in the shape ``fiqa_compile.eval.pairs.build_pairs`` pairs."""

    def __init__(self, data: dict[str, np.ndarray]):
        keep = data["detected"].astype(bool)
        self.data = {k: v[keep] for k, v in data.items()}
        self.identity = self.data["identity"]
        self.photo = self.data["photo"]
        self.version = self.data["version"]
        self.emb = self.data["emb_dlib"]

    def embeddings(self, fr: str) -> np.ndarray:
        return self.data["emb_dlib"] if fr == "dlib" else self.data["emb_mfn"]


@dataclass
class Evaluation:
    """A held-out frame set with its seeded pairings and both FR models' comparison scores."""

    data: dict[str, np.ndarray]
    samples: Samples
    pairings: list
    rows: np.ndarray  # the sample rows any pairing uses: the faces a method must score
    kinds: np.ndarray  # damage family per sample row
    scores: list[dict[str, np.ndarray]]  # per pairing, per FR model


def prepare(set_path: Path, max_per_person: int = 30, seeds: int = 5) -> Evaluation:
    """Load a held-out frame set and draw ``seeds`` cross-quality pairings (FileNotFoundError when it is not built)."""
    from fiqa_compile.eval.pairs import build_pairs, cosine_scores, impostors_for_fmr
    from fiqa_compile.labels.frame_set import family_of, load

    data = load(set_path)
    samples = Samples(data)
    pairings = [build_pairs(samples, n_impostors=impostors_for_fmr(FMR), degraded_share=0.5,
                            max_genuine_per_identity=max_per_person, seed=seed) for seed in range(seeds)]
    rows = np.unique(np.concatenate([p.rows for p in pairings]))
    kinds = np.array([family_of(k) for k in samples.data["kind"]])
    scores = [{fr: cosine_scores(samples.embeddings(fr), p.a, p.b) for fr in FR_MODELS} for p in pairings]
    print(f"{seeds} pairings of {int(pairings[0].genuine.sum())} genuine / {int((~pairings[0].genuine).sum())} "
          f"impostor comparisons over {len(rows)} faces", file=sys.stderr)
    return Evaluation(data, samples, pairings, rows, kinds, scores)


def measure(q_full: np.ndarray, ev: Evaluation) -> dict:
    """Per FR model: pAUC (mean over the pairings, and each), FNMR, per-family AUC, the first pairing's curve."""
    out = {}
    for fr in FR_MODELS:
        per_seed = [evaluate(q_full, p, s[fr], ev.kinds[p.b]) for p, s in zip(ev.pairings, ev.scores)]
        entry = {k: float(np.mean([r[k] for r in per_seed])) for k in ("pauc", "pauc_30", "fnmr")}
        entry["pauc_per_pairing"] = [r["pauc"] for r in per_seed]
        entry["auc"] = {f: float(np.nanmean([r["auc"][f] for r in per_seed])) for f in FAMILIES}
        entry["curve"] = per_seed[0]["curve"]
        out[fr] = entry
    return out


def mann_whitney_auc(low: np.ndarray, high: np.ndarray) -> float:
    """P(a value of ``low`` < a value of ``high``), ties counted half: how well quality separates fail from match."""
    from scipy.stats import rankdata

    if len(low) == 0 or len(high) == 0:
        return float("nan")
    r = rankdata(np.concatenate([low, high]))
    return float((r[len(low):].sum() - len(high) * (len(high) + 1) / 2) / (len(low) * len(high)))


def evaluate(q_row: np.ndarray, pairs, scores: np.ndarray, families: np.ndarray) -> dict:
    """EDC pAUC and per-family AUC of one method's qualities (per sample row) for one FR model's scores."""
    from fiqa_compile.eval.edc import edc

    g = pairs.genuine
    pair_q = np.minimum(q_row[pairs.a], q_row[pairs.b])
    curve = edc(scores[g], pair_q[g], scores[~g], fmr=FMR, limits=(LIMIT, 0.3))
    fail = scores[g] < curve.threshold
    fam = families[g]
    auc = {}
    for f in FAMILIES:
        m = fam == f
        # A failing comparison should have the LOWER pair quality: AUC = P(q_fail < q_match).
        auc[f] = mann_whitney_auc(pair_q[g][m & fail], pair_q[g][m & ~fail])
    return {"pauc": curve.pauc_at(LIMIT), "pauc_30": curve.pauc_at(0.3), "fnmr": curve.start_error,
            "auc": auc, "curve": curve}


def score_methods(samples: Samples, rows: np.ndarray, specs: list[str], backend: str) -> dict[str, tuple[str, np.ndarray]]:
    from fiqa_compile.eval.scorers import MethodSpecError, SampleView, parse_method

    view = SampleView(crops=samples.data["crop"][rows])
    out = {}
    for spec in specs:
        try:
            m = parse_method(spec, backend)
        except MethodSpecError as e:
            print(f"  {spec}: skipped ({e})", file=sys.stderr)
            continue
        t0 = time.time()
        seeds = range(5) if m.stochastic else range(1)
        q = np.mean([m.score(view, s) for s in seeds], axis=0)
        print(f"  {spec}: {len(rows)} faces in {time.time() - t0:.1f} s", file=sys.stderr)
        out[spec] = (m.name, q)
    return out


def frames_for(samples: Samples, rows: np.ndarray, faces: Path):
    """Re-create each row's degraded frame (the chains are seeded) with its landmarks, for models that align their own way."""
    import cv2

    from fiqa_calibration import FaceFolder
    from fiqa_calibration.crops import frame_scale
    from fiqa_calibration.degradations import Chain

    folder = FaceFolder(faces)
    d = samples.data
    clean_lm = {int(p): lm for p, v, lm in zip(d["photo"], d["version"], d["lm5"]) if v == 0}
    for r in rows:
        photo = int(d["photo"][r])
        frame = cv2.imread(str(folder[photo][0]), cv2.IMREAD_COLOR)
        if d["version"][r] > 0:
            frame = Chain.from_dict(json.loads(str(d["chain"][r]))).apply(frame, scale=frame_scale(clean_lm[photo]))
        yield frame, d["lm5"][r]


def score_peers(samples: Samples, rows: np.ndarray, faces: Path) -> dict[str, tuple[str, np.ndarray]]:
    try:
        import peers
    except ImportError as e:
        print(f"  peers: skipped ({e})", file=sys.stderr)
        return {}
    lq, sdd = [], []
    for frame, lm in frames_for(samples, rows, faces):
        lq.append(peers.lightqnet_input(frame, lm))
        sdd.append(peers.sdd_fiqa_input(frame, lm))
    inputs = {"lightqnet-dm100": np.stack(lq), "lightqnet-dm025": np.stack(lq), "sdd_fiqa": np.stack(sdd)}
    names = {"lightqnet-dm100": "LightQNet width 1.0", "lightqnet-dm025": "LightQNet width 0.25",
             "sdd_fiqa": "SDD-FIQA MobileFaceNet"}
    out = {}
    for name, res in peers.score_peers(list(inputs), inputs).items():
        if isinstance(res, str):
            print(f"  peer {name}: {res}", file=sys.stderr)
            out[f"peer:{name}"] = (names[name], res)
        else:
            out[f"peer:{name}"] = (names[name], np.asarray(res, np.float64))
    return out


def fmt(x: float, digits: int = 4) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def write_markdown(record: dict, path: Path) -> None:
    p = record["pairs"]
    lines = ["# Recognition utility: default bundles vs published edge FIQA models", "",
             f"Held-out lfw-dev people ({record['set']['identities']} people, {record['set']['photos']} photos, "
             f"degraded in the frame, detected and aligned as the device does). {p['genuine']} genuine and "
             f"{p['impostor']} impostor comparisons, side b of {p['degraded_share']:.0%} degraded, in "
             f"{p['pairings']} seeded pairings whose results are averaged; threshold at FMR {FMR:g}. EDC pAUC to {LIMIT:.0%} discard (lower is better); FNMR with nothing discarded: "
             + ", ".join(f"{fr} {record['fnmr'][fr]:.4f}" for fr in FR_MODELS) + ".", "",
             "| method | pAUC dlib | pAUC MobileFaceNet | vs LightQNet 1.0 (dlib / MFN) |", "|---|---:|---:|---:|"]
    ref = record["methods"].get("peer:lightqnet-dm100", {})
    for spec, m in record["methods"].items():
        if "skipped" in m:
            lines.append(f"| {m['name']} | skipped: {m['skipped']} | | |")
            continue
        rel = " / ".join(f"{m[fr]['pauc'] / ref[fr]['pauc'] - 1:+.0%}" if fr in ref and "pauc" in ref.get(fr, {}) else "n/a"
                         for fr in FR_MODELS)
        lines.append(f"| {m['name']} | {fmt(m['dlib']['pauc'])} | {fmt(m['mobilefacenet']['pauc'])} | {rel} |")
    lines += ["", "Per damage family: AUC with which a low pair quality flags a false non-match of a genuine comparison "
              "(0.5 is chance; higher is better), dlib / MobileFaceNet; failures per family in the header.", ""]
    head = "| method | " + " | ".join(f"{f} ({record['failures']['dlib'][f]}/{record['failures']['mobilefacenet'][f]})"
                                      for f in FAMILIES) + " |"
    lines += family_auc_rows(record, head)
    path.write_text("\n".join(lines))


def family_auc_rows(record: dict, head: str) -> list[str]:
    """The per-family AUC table (dlib / MobileFaceNet per cell) under ``head``, then the machine line."""
    lines = [head, "|---|" + "---:|" * len(FAMILIES)]
    for m in record["methods"].values():
        if "skipped" in m:
            continue
        lines.append(f"| {m['name']} | " + " | ".join(
            f"{fmt(m['dlib']['auc'][f], 2)} / {fmt(m['mobilefacenet']['auc'][f], 2)}" for f in FAMILIES) + " |")
    return lines + ["", f"Machine: {record['machine']['cpu']}; {record['seconds']:.0f} s.", ""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", type=Path, default=ROOT / "runs/frames/heldout-eval", help="held-out frame set")
    ap.add_argument("--faces", type=Path, default=ROOT.parent / "shared/data/lfw-dev",
                    help="the photos the set was built from (peers align from the frames)")
    ap.add_argument("--method", action="append", default=None, help="fiqa-eval method spec, repeatable "
                    f"(default: {', '.join(DEFAULT_METHODS)})")
    ap.add_argument("--no-peers", action="store_true", help="leave the peers out")
    ap.add_argument("--max-per-person", type=int, default=30, help="genuine photo pairs per person (default 30)")
    ap.add_argument("--seeds", type=int, default=5,
                    help="pairings averaged (seeds 0..N-1: which photo is degraded, and which version; default 5)")
    ap.add_argument("--out", type=Path, default=RESULTS / "recognition_utility", help="output stem")
    args = ap.parse_args(argv)

    from fiqa_compile.labels.recognition import mfn_norm

    t0 = time.time()
    try:
        ev = prepare(args.set, args.max_per_person, args.seeds)
    except FileNotFoundError as e:
        print(f"recognition_utility: {e}", file=sys.stderr)
        return 2
    data, samples, pairings, rows = ev.data, ev.samples, ev.pairings, ev.rows

    q_rows = score_methods(samples, rows, list(args.method or DEFAULT_METHODS), "auto")
    if not args.no_peers:
        q_rows.update(score_peers(samples, rows, args.faces))
    q_rows["fr:mobilefacenet_norm"] = ("MobileFaceNet embedding norm (FR signal, not a FIQA model)",
                                       mfn_norm(samples.data)[rows])

    n = len(samples.photo)
    p0 = pairings[0]
    record: dict = {"set": {"path": str(args.set), "samples": int(n), "photos": int(len(np.unique(samples.photo))),
                            "identities": int(len(np.unique(samples.identity))),
                            "detected_share": float(np.mean(data["detected"]))},
                    "pairs": {"genuine": int(p0.genuine.sum()), "impostor": int((~p0.genuine).sum()),
                              "degraded_share": p0.degraded_share, "max_per_person": args.max_per_person,
                              "pairings": args.seeds},
                    "fmr": FMR, "limit": LIMIT, "methods": {}, "machine": machine_basics()}
    curves: dict[str, dict] = {fr: {} for fr in FR_MODELS}
    for spec, (name, q) in q_rows.items():
        if isinstance(q, str):
            record["methods"][spec] = {"name": name, "skipped": q}
            continue
        full = np.zeros(n)
        full[rows] = q
        entry = {"name": name, **measure(full, ev)}
        for fr in FR_MODELS:
            curves[fr][name] = entry[fr].pop("curve")
        record["methods"][spec] = entry
    any_m = next(m for m in record["methods"].values() if "dlib" in m)
    record["fnmr"] = {fr: any_m[fr]["fnmr"] for fr in FR_MODELS}
    from fiqa_compile.eval.edc import similarity_threshold
    record["failures"] = {}
    g = p0.genuine
    for fr in FR_MODELS:
        sc = ev.scores[0][fr]
        fail = sc[g] < similarity_threshold(sc[~g], FMR)
        record["failures"][fr] = {f: int(np.sum(fail & (ev.kinds[p0.b][g] == f))) for f in FAMILIES}
    record["seconds"] = time.time() - t0

    args.out.parent.mkdir(parents=True, exist_ok=True)
    from fiqa_sdk.json_safe import finite_or_null
    args.out.with_suffix(".json").write_text(json.dumps(finite_or_null(record), indent=2))
    write_markdown(record, args.out.with_suffix(".md"))
    from fiqa_compile.eval.plots import plot_edc
    for fr in FR_MODELS:
        plot_edc(curves[fr], args.out.parent / f"{args.out.name}_edc_{fr}.png", limit=0.3,
                 title=f"EDC, held-out lfw-dev, FR {fr}, FMR {FMR:g}")
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
