"""How far can a per-face quality score go on the recognition-utility benchmark? Oracles beside the product.

    python bench/recognition_ceiling.py          # needs runs/frames/heldout-eval (see bench/recognition_utility.py)

A quality score sees one face. A genuine comparison fails for two kinds of reasons: what happened to *this* image
(blur, noise, JPEG, low resolution, low light, a detector that moved the landmarks) and how well this photo matches
the person's *other* photos (pose, expression, occlusion, age, lighting) — the identity term, which depends on
photos the score never sees. This benchmark puts on the same held-out pairs as ``recognition_utility.py``:

  * the product (the embedded student, torch fp32: the INT8 bundles score within 0.0001 of it) and LightQNet 1.0;
  * **oracles** built from the held-out people's own embeddings and identities (not quality models: a device has
    neither), from the label definition of :mod:`fiqa_compile.labels.recognition`:
      - the damage term alone (``own``: each face's cosine with its own clean photo, both FR models);
      - the identity term alone (``cross``: the clean photo's cosine with the person's other photos);
      - the full label (the two combined), what a perfect learner of the training label would reach;
      - the student's score plus the oracle identity term: the product if it knew the identity term exactly;
  * the issue's targets: 0.9 x LightQNet 1.0 and 0.75 x Laplacian sharpness, per FR model.

Writes ``results/recognition_ceiling.json`` / ``.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_basics  # noqa: E402
from recognition_utility import (FAMILIES, FR_MODELS, RESULTS, ROOT, family_auc_rows, measure, prepare,  # noqa: E402
                                 score_methods, score_peers)

STUDENT = "student:compile/fiqa_compile/weights/student_mfn"
IDENTITY_WEIGHTS = (0.3, 0.6, 1.0)


def standardised(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit spread over the finite entries; NaN (a face without a clean reference) -> the mean."""
    z = (x - np.nanmean(x)) / np.nanstd(x)
    return np.nan_to_num(z, nan=0.0)


def oracles(data: dict[str, np.ndarray]) -> dict[str, tuple[str, np.ndarray]]:
    """Per sample row: the label's damage term, identity term and the full label (they use identities)."""
    from fiqa_compile.labels.recognition import recognition_labels

    parts = recognition_labels(data)
    own = np.mean([standardised(parts[f"own_{fr}"]) for fr in FR_MODELS], 0)
    cross = np.mean([standardised(parts[f"cross_{fr}"]) for fr in FR_MODELS], 0)
    label = np.nan_to_num(parts["label"], nan=np.nanmin(parts["label"]))
    return {"oracle:own": ("oracle: damage term alone (own photo's clean version)", own),
            "oracle:cross": ("oracle: identity term alone (the person's other photos)", cross),
            "oracle:label": ("oracle: full label (damage x identity)", label)}


def write_markdown(record: dict, path: Path) -> None:
    t = record["targets"]
    lines = ["# Recognition utility: how far a per-face score can go", "",
             f"Same held-out people and pairings as `recognition_utility.md` ({record['pairs']['genuine']} genuine "
             f"comparisons per pairing, {record['pairs']['pairings']} pairings, FMR 1e-3, pAUC to 20 % discard, "
             "lower is better). Oracle rows use the held-out people's identities and embeddings: no device has "
             "them. They bound what a score of one face can reach.", "",
             "| method | pAUC dlib | pAUC MobileFaceNet |", "|---|---:|---:|"]
    for m in record["methods"].values():
        if "skipped" in m:
            lines.append(f"| {m['name']} | skipped: {m['skipped']} | |")
            continue
        lines.append(f"| {m['name']} | {m['dlib']['pauc']:.4f} | {m['mobilefacenet']['pauc']:.4f} |")
    for key, name in (("lightqnet", "target: 0.9 x LightQNet 1.0"), ("laplacian", "target: 0.75 x Laplacian")):
        if key in t:
            lines.append(f"| **{name}** | {t[key]['dlib']:.4f} | {t[key]['mobilefacenet']:.4f} |")
    lines += ["", "Per damage family (AUC with which a low pair quality flags a false non-match; dlib / MobileFaceNet):",
              ""]
    lines += family_auc_rows(record, "| method | " + " | ".join(FAMILIES) + " |")
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", type=Path, default=ROOT / "runs/frames/heldout-eval", help="held-out frame set")
    ap.add_argument("--faces", type=Path, default=ROOT.parent / "shared/data/lfw-dev",
                    help="the photos the set was built from (the peers align from the frames)")
    ap.add_argument("--no-peers", action="store_true", help="leave LightQNet out")
    ap.add_argument("--out", type=Path, default=RESULTS / "recognition_ceiling", help="output stem")
    args = ap.parse_args(argv)

    t0 = time.time()
    try:
        ev = prepare(args.set)
    except FileNotFoundError as e:
        print(f"recognition_ceiling: {e}", file=sys.stderr)
        return 2
    n = len(ev.samples.photo)
    methods = score_methods(ev.samples, ev.rows, [STUDENT, "baseline:sharpness"], "auto")
    if not args.no_peers:
        methods.update({k: v for k, v in score_peers(ev.samples, ev.rows, args.faces).items() if k.endswith("dm100")})
    q_full = {}
    for spec, (name, q) in methods.items():
        if isinstance(q, str):
            continue
        q_full[spec] = np.zeros(n)
        q_full[spec][ev.rows] = q
    named = {spec: (name, q_full.get(spec)) for spec, (name, q) in methods.items()}
    for spec, (name, q) in oracles(ev.samples.data).items():
        named[spec] = (name, q)
    if STUDENT in q_full:
        student, cross = standardised(q_full[STUDENT]), named["oracle:cross"][1]
        for w in IDENTITY_WEIGHTS:
            named[f"oracle:student+{w}cross"] = (f"oracle: student + {w} x identity term", student + w * cross)

    record: dict = {"set": str(args.set), "pairs": {"genuine": int(ev.pairings[0].genuine.sum()),
                                                    "pairings": len(ev.pairings)},
                    "methods": {}, "machine": machine_basics()}
    for spec, (name, q) in named.items():
        if q is None:
            record["methods"][spec] = {"name": name, "skipped": methods[spec][1]}
            continue
        entry = {"name": name, **measure(q, ev)}
        for fr in FR_MODELS:
            entry[fr].pop("curve")
        record["methods"][spec] = entry
    m = record["methods"]
    record["targets"] = {}
    if "pauc" in m.get("peer:lightqnet-dm100", {}).get("dlib", {}):
        record["targets"]["lightqnet"] = {fr: 0.9 * m["peer:lightqnet-dm100"][fr]["pauc"] for fr in FR_MODELS}
    if "baseline:sharpness" in m and "dlib" in m["baseline:sharpness"]:
        record["targets"]["laplacian"] = {fr: 0.75 * m["baseline:sharpness"][fr]["pauc"] for fr in FR_MODELS}
    record["seconds"] = time.time() - t0

    args.out.parent.mkdir(parents=True, exist_ok=True)
    from fiqa_sdk.json_safe import finite_or_null
    args.out.with_suffix(".json").write_text(json.dumps(finite_or_null(record), indent=2))
    write_markdown(record, args.out.with_suffix(".md"))
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
