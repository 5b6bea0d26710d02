"""Pair building for the EDC: identities, the held-out split, one degraded side, cosine scores.

Synthetic samples (identity centres plus noise as embeddings) are enough for the pair logic: no faces needed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from fiqa_compile.eval.pairs import (PairError, build_pairs, chain_downscale, cosine_scores, held_out_rows,
                                     impostors_for_fmr)
from fiqa_compile.train.data import LabelSet


@dataclass
class Samples:
    identity: np.ndarray
    photo: np.ndarray
    version: np.ndarray
    emb: np.ndarray

    def __len__(self) -> int:
        return len(self.photo)

    def split(self, held_out: float = 0.15, seed: int = 0):
        return LabelSet.split(self, held_out, seed)


def make_samples(n_ids: int = 40, photos: tuple[int, ...] = (1, 2, 3, 4), versions: int = 2, seed: int = 0,
                 dim: int = 16) -> Samples:
    """Identities with 1-4 photos; photos of multi-photo identities get ``versions`` degraded rows (as fiqa-labels)."""
    rng = np.random.default_rng(seed)
    ident, photo, version, emb = [], [], [], []
    p = 0
    for i in range(n_ids):
        centre = rng.normal(size=dim)
        n_photos = photos[i % len(photos)]
        for _ in range(n_photos):
            e = centre + 0.3 * rng.normal(size=dim)
            for v in range(1 + (versions if n_photos >= 2 else 0)):
                ident.append(f"id{i:03d}")
                photo.append(p)
                version.append(v)
                emb.append(e + (0.0 if v == 0 else 1.0) * rng.normal(size=dim))
            p += 1
    e = np.asarray(emb)
    return Samples(np.asarray(ident), np.asarray(photo), np.asarray(version), e / np.linalg.norm(e, axis=1,
                                                                                                  keepdims=True))


def test_genuine_share_identity_impostors_never_and_scores_are_cosines():
    s = make_samples()
    pairs = build_pairs(s, n_impostors=300, degraded_share=0.5, seed=1)
    ident = s.identity
    assert pairs.genuine.any() and (~pairs.genuine).any()
    assert np.all(ident[pairs.a[pairs.genuine]] == ident[pairs.b[pairs.genuine]])
    assert np.all(ident[pairs.a[~pairs.genuine]] != ident[pairs.b[~pairs.genuine]])
    assert int((~pairs.genuine).sum()) == 300
    # a genuine pair is two different photos; impostor photo pairs are distinct (no duplicate comparisons)
    assert np.all(s.photo[pairs.a] != s.photo[pairs.b])
    imp = np.sort(np.stack([s.photo[pairs.a[~pairs.genuine]], s.photo[pairs.b[~pairs.genuine]]], 1), axis=1)
    assert len(np.unique(imp, axis=0)) == len(imp)
    expected = np.sum(s.emb[pairs.a] * s.emb[pairs.b], axis=1)
    np.testing.assert_allclose(pairs.scores, expected, atol=1e-12)


def test_all_genuine_photo_pairs_without_a_cap():
    s = make_samples(n_ids=8, photos=(3, 4), versions=0)
    pairs = build_pairs(s, n_impostors=20, degraded_share=0.0)
    # 4 identities with 3 photos (3 pairs each) and 4 with 4 photos (6 pairs each)
    assert int(pairs.genuine.sum()) == 4 * 3 + 4 * 6
    capped = build_pairs(s, n_impostors=20, degraded_share=0.0, max_genuine_per_identity=2)
    assert int(capped.genuine.sum()) == 8 * 2


def test_degradation_only_on_side_b_of_the_requested_share():
    s = make_samples()
    pairs = build_pairs(s, n_impostors=400, degraded_share=0.5, seed=3)
    assert np.all(s.version[pairs.a] == 0), "side a is always a clean version"
    assert np.array_equal(s.version[pairs.b] > 0, pairs.degraded)
    for genuine in (True, False):
        m = pairs.genuine == genuine
        assert int(pairs.degraded[m].sum()) == round(0.5 * m.sum())
    # the degraded side is a version of the photo the pair was built on: same identity as its clean photo
    clean_of_photo = {int(p): int(r) for r, (p, v) in enumerate(zip(s.photo, s.version)) if v == 0}
    b_clean = np.array([clean_of_photo[int(p)] for p in s.photo[pairs.b]])
    assert np.all(s.identity[b_clean] == s.identity[pairs.b])
    none = build_pairs(s, n_impostors=400, degraded_share=0.0, seed=3)
    assert not none.degraded.any() and np.all(s.version[none.b] == 0)
    # degraded versions lower the genuine scores (the embeddings were built that way): the pairing is not a no-op
    g = pairs.genuine
    assert pairs.scores[g & pairs.degraded].mean() < pairs.scores[g & ~pairs.degraded].mean()


def test_held_out_rows_restrict_pairs_and_match_the_label_split():
    s = make_samples(n_ids=60)
    held = held_out_rows(s)
    assert np.array_equal(held, s.split(0.15, 0)[1])
    held_ids = set(s.identity[held])
    assert 0 < len(held_ids) < 60
    pairs = build_pairs(s, held, n_impostors=100, seed=0)
    assert set(s.identity[pairs.a]) <= held_ids and set(s.identity[pairs.b]) <= held_ids
    assert set(pairs.rows) <= set(held)


def test_seeded_and_reproducible():
    s = make_samples()
    p1 = build_pairs(s, n_impostors=200, seed=5)
    p2 = build_pairs(s, n_impostors=200, seed=5)
    p3 = build_pairs(s, n_impostors=200, seed=6)
    assert np.array_equal(p1.a, p2.a) and np.array_equal(p1.b, p2.b)
    assert not (np.array_equal(p1.a, p3.a) and np.array_equal(p1.b, p3.b))


def test_clear_errors_for_impossible_requests():
    s = make_samples(n_ids=6, photos=(2,), versions=1)
    with pytest.raises(PairError, match="impostor pairs"):
        build_pairs(s, n_impostors=10_000)
    single = make_samples(n_ids=5, photos=(1,))
    with pytest.raises(PairError, match="no identity has two photos"):
        build_pairs(single, n_impostors=5)
    no_versions = make_samples(n_ids=6, photos=(2,), versions=0)
    with pytest.raises(PairError, match="degraded versions"):
        build_pairs(no_versions, n_impostors=10, degraded_share=0.5)
    with pytest.raises(PairError, match="degraded_share"):
        build_pairs(s, n_impostors=10, degraded_share=1.5)
    bad = Samples(s.identity, s.photo, s.version, s.emb.copy())
    bad.emb[0] = 0.0
    with pytest.raises(PairError, match="zero or NaN"):
        cosine_scores(bad.emb, np.array([0]), np.array([1]))


def test_impostor_count_for_fmr_and_chain_downscale():
    assert impostors_for_fmr(1e-2) == 10_000
    assert impostors_for_fmr(1e-3) == 100_000
    with pytest.raises(PairError):
        impostors_for_fmr(0.0)
    assert chain_downscale("") == 1.0
    blur = json.dumps({"version": 1, "steps": [{"kind": "gaussian_blur", "severity": 0.5, "seed": 1}]})
    assert chain_downscale(blur) == 1.0
    down = json.dumps({"version": 1, "steps": [{"kind": "downscale", "severity": 1.0, "seed": 1}]})
    assert chain_downscale(down) == pytest.approx(8.0)
