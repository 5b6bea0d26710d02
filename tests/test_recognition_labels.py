"""Known answers of the two-model recognition-utility labels (fiqa_compile.labels.recognition) on tiny embedding sets.

Embeddings are built from an orthonormal basis, so every cosine in a test is chosen, not measured.
"""
from __future__ import annotations

import numpy as np
import pytest

from fiqa_compile.labels.recognition import (PRIOR_PHOTOS, clean_rows, cross_similarity, impostor_threshold,
                                             mfn_norm, recognition_labels, shrunk_cross)

DIM = 8
B = np.eye(DIM)


def at(cos: float, a: int, b: int) -> np.ndarray:
    """A unit vector at cosine ``cos`` to basis vector ``a``, turned towards basis vector ``b``."""
    return cos * B[a] + np.sqrt(1.0 - cos ** 2) * B[b]


def make(rows: list[dict]) -> dict[str, np.ndarray]:
    """The frame-set columns recognition_labels reads. A row: photo, identity, version, and optionally
    detected (default True), dlib / mfn (unit directions), norm (MobileFaceNet's embedding norm, default 20) and
    mirror_norm (default: norm). An undetected row gets NaN embeddings, as frame_set writes it."""
    cols = {k: [] for k in ("photo", "identity", "version", "detected", "emb_dlib", "emb_mfn", "emb_mfn_mirror")}
    for r in rows:
        found = r.get("detected", True)
        norm = r.get("norm", 20.0)
        dlib = np.asarray(r.get("dlib", B[0]), float)
        mfn = np.asarray(r.get("mfn", dlib), float)
        cols["photo"].append(r["photo"])
        cols["identity"].append(r["identity"])
        cols["version"].append(r["version"])
        cols["detected"].append(found)
        cols["emb_dlib"].append(dlib if found else np.full(DIM, np.nan))
        cols["emb_mfn"].append(norm * mfn if found else np.full(DIM, np.nan))
        cols["emb_mfn_mirror"].append(r.get("mirror_norm", norm) * mfn if found else np.full(DIM, np.nan))
    return {"photo": np.array(cols["photo"]), "identity": np.array(cols["identity"]),
            "version": np.array(cols["version"]), "detected": np.array(cols["detected"]),
            **{k: np.array(cols[k], np.float32) for k in ("emb_dlib", "emb_mfn", "emb_mfn_mirror")}}


def three_people(extra: list[dict] = ()) -> list[dict]:
    """A: two clean photos at cosine 0.95 (dlib) / 0.9 (MobileFaceNet); B: two at 0.1 / 0.3; C: one photo.
    A's and B's photos have MobileFaceNet norms 10 and 12, C's 11; every impostor pair is orthogonal."""
    return [
        {"photo": 0, "identity": "A", "version": 0, "dlib": B[0], "mfn": B[0], "norm": 10.0},
        {"photo": 1, "identity": "A", "version": 0, "dlib": at(0.95, 0, 1), "mfn": at(0.9, 0, 1), "norm": 12.0},
        {"photo": 2, "identity": "B", "version": 0, "dlib": B[2], "mfn": B[2], "norm": 10.0},
        {"photo": 3, "identity": "B", "version": 0, "dlib": at(0.1, 2, 3), "mfn": at(0.3, 2, 3), "norm": 12.0},
        {"photo": 4, "identity": "C", "version": 0, "dlib": B[4], "mfn": B[4], "norm": 11.0},
        *extra,
    ]


# ------------------------------------------------------------------------------------------------- the parts
def test_mfn_norm_is_the_mean_of_the_face_and_its_mirror():
    d = make([{"photo": 0, "identity": "A", "version": 0, "norm": 10.0, "mirror_norm": 14.0},
              {"photo": 0, "identity": "A", "version": 1, "detected": False}])
    n = mfn_norm(d)
    assert n[0] == pytest.approx(12.0) and np.isnan(n[1])


def test_clean_rows_skip_undetected_and_degraded_rows():
    d = make([{"photo": 0, "identity": "A", "version": 1},
              {"photo": 0, "identity": "A", "version": 0},
              {"photo": 1, "identity": "A", "version": 0, "detected": False},
              {"photo": 1, "identity": "A", "version": 1}])
    assert clean_rows(d) == {0: 1}


def test_cross_similarity_is_against_the_persons_other_photos():
    a0, a1, a2 = B[0], at(0.8, 0, 1), at(0.6, 0, 2)
    d = make([{"photo": 0, "identity": "A", "version": 0, "dlib": a0},
              {"photo": 1, "identity": "A", "version": 0, "dlib": a1},
              {"photo": 2, "identity": "A", "version": 0, "dlib": a2},
              {"photo": 2, "identity": "A", "version": 1, "dlib": B[7]},  # degraded: never a reference
              {"photo": 3, "identity": "C", "version": 0, "dlib": B[5]}])
    e = d["emb_dlib"].astype(float)
    cos, others = cross_similarity(e, d, clean_rows(d))
    centre = (a1 + a2) / np.linalg.norm(a1 + a2)  # photo 0 against the normalised sum of photos 1 and 2
    assert cos[0] == pytest.approx(float(a0 @ centre), abs=1e-6)
    assert cos[2] == pytest.approx(float(a2 @ (a0 + a1) / np.linalg.norm(a0 + a1)), abs=1e-6)
    assert list(others) == [2, 2, 2, 0, 0]
    assert np.isnan(cos[3]) and np.isnan(cos[4])  # a degraded row and a person with one photo


def test_shrunk_cross_weights_the_photos_against_the_norms_prediction():
    # known points (norm, cos) = (0, 0), (1, 1), (2, 0): the least-squares line is flat at 1/3
    cos = np.array([0.0, 1.0, 0.0, np.nan, np.nan])
    others = np.array([1.0, 2.0, 1.0, 0.0, 0.0])
    norm = np.array([0.0, 1.0, 2.0, 5.0, np.nan])
    out = shrunk_cross(cos, others, norm)
    assert PRIOR_PHOTOS == 2.0
    w1, w2 = 1 / (1 + 2), 2 / (2 + 2)
    assert out[0] == pytest.approx(w1 * 0 + (1 - w1) / 3)      # 2/9: one other photo is worth a third
    assert out[1] == pytest.approx(w2 * 1 + (1 - w2) / 3)      # 2/3: two other photos are worth half
    assert out[2] == pytest.approx(2 / 9)
    assert out[3] == pytest.approx(1 / 3)                      # no other photo: the prediction alone
    assert np.isnan(out[4])                                    # no norm, no photos: nothing to say
    # the prediction follows the norm: collinear points (1, .2), (2, .4), (3, .6) give cos = 0.2 * norm
    out = shrunk_cross(np.array([0.2, 0.4, 0.6, np.nan]), np.array([1.0, 1.0, 1.0, 0.0]), np.array([1.0, 2, 3, 4]))
    np.testing.assert_allclose(out, [0.2, 0.4, 0.6, 0.8], atol=1e-9)
    # many other photos: the photos' own cosine wins over the prediction
    out = shrunk_cross(np.array([0.0, 1.0, 0.0]), np.array([1.0, 1e9, 1.0]), np.array([0.0, 1.0, 2.0]))
    assert out[1] == pytest.approx(1.0, abs=1e-6)


def test_impostor_threshold_is_the_quantile_of_clean_different_people():
    a = B[0]
    b = at(0.6, 0, 1)  # cos(A, B) = 0.6; everyone else is orthogonal
    d = make([{"photo": 0, "identity": "A", "version": 0, "dlib": a},
              {"photo": 1, "identity": "A", "version": 0, "dlib": a},       # genuine pair at 1.0: not an impostor
              {"photo": 2, "identity": "B", "version": 0, "dlib": b},
              {"photo": 3, "identity": "C", "version": 0, "dlib": B[3]},
              {"photo": 3, "identity": "C", "version": 1, "dlib": b},       # degraded C = B: not a clean row
              {"photo": 4, "identity": "D", "version": 0, "dlib": B[4], "detected": False}])
    e = d["emb_dlib"].astype(float)
    clean = clean_rows(d)
    # ordered pairs of different people among A, A', B, C: 10, of which 4 (A-B, A'-B both ways) score 0.6
    assert impostor_threshold(e, d, clean, fmr=1e-3) == pytest.approx(0.6)
    assert impostor_threshold(e, d, clean, fmr=0.1) == pytest.approx(0.6)
    assert impostor_threshold(e, d, clean, fmr=0.5) == pytest.approx(0.0, abs=1e-9)
    assert np.isfinite(impostor_threshold(e, d, clean))  # the undetected photo's NaN embedding is not used


# ------------------------------------------------------------------------------------------------ the labels
def test_persons_other_photos_set_how_recognisable_a_photo_is():
    extra = [{"photo": 0, "identity": "A", "version": 1, "dlib": at(0.7, 0, 6), "mfn": at(0.7, 0, 6), "norm": 5.0}]
    out = recognition_labels(make(three_people(extra)))
    # the norm's line is flat (both people have norms 10 and 12): 0.525 for dlib, 0.6 for MobileFaceNet
    w = 1 / (1 + PRIOR_PHOTOS)
    np.testing.assert_allclose(out["cross_dlib"], [w * .95 + (1 - w) * .525] * 2 + [w * .1 + (1 - w) * .525] * 2
                               + [.525, w * .95 + (1 - w) * .525], atol=1e-5)
    np.testing.assert_allclose(out["cross_mobilefacenet"], [w * .9 + (1 - w) * .6] * 2 + [w * .3 + (1 - w) * .6] * 2
                               + [.6, w * .9 + (1 - w) * .6], atol=1e-5)
    assert out["own_dlib"][5] == pytest.approx(0.7, abs=1e-6)  # the degraded version against its own clean photo
    np.testing.assert_allclose(out["threshold_dlib"], 0.0, atol=1e-6)  # all impostors orthogonal
    label = out["label"]
    assert label[0] > label[4] > label[2]  # A's photos agree, C has only the prediction, B's photos disagree
    assert label[5] < label[0]
    np.testing.assert_allclose(label, (out["margin_dlib"] + out["margin_mobilefacenet"]) / 2)


def test_a_version_that_moved_away_gets_a_lower_label():
    e0 = B[0]
    extra = [
        {"photo": 0, "identity": "A", "version": 1, "dlib": e0, "mfn": e0, "norm": 9.0},        # unchanged
        {"photo": 0, "identity": "A", "version": 2, "dlib": at(0.5, 0, 7), "mfn": e0},        # dlib lost it
        {"photo": 0, "identity": "A", "version": 3, "dlib": at(0.5, 0, 7), "mfn": at(0.5, 0, 7)},  # both did
    ]
    out = recognition_labels(make(three_people(extra)))
    own_d, own_m, label = out["own_dlib"], out["own_mobilefacenet"], out["label"]
    np.testing.assert_allclose(own_d[[0, 5, 6, 7]], [1, 1, .5, .5], atol=1e-6)
    np.testing.assert_allclose(own_m[[0, 5, 6, 7]], [1, 1, 1, .5], atol=1e-6)
    assert label[5] == pytest.approx(label[0], abs=1e-6)  # the norm of a degraded version does not enter
    assert label[0] > label[6] > label[7]
    # its margins: the clean photo's expected genuine score scaled by how much the degradation kept
    assert out["margin_dlib"][6] / out["margin_dlib"][0] == pytest.approx(0.5, rel=1e-5)  # threshold 0 here


def test_undetected_rows_get_no_label():
    extra = [
        {"photo": 0, "identity": "A", "version": 1, "detected": False},
        {"photo": 5, "identity": "C", "version": 0, "detected": False},   # C's second photo: its face was lost
        {"photo": 5, "identity": "C", "version": 1, "dlib": B[4]},         # a version found, but no clean reference
    ]
    d = make(three_people(extra))
    out = recognition_labels(d)
    label = out["label"]
    assert np.isnan(label[[5, 6, 7]]).all()
    assert np.isnan(out["own_dlib"][[5, 6, 7]]).all() and np.isnan(out["norm_mobilefacenet"][[5, 6, 7]]).all()
    assert np.isfinite(label[:5]).all()
    # the lost photo is not one of C's other photos: C still has only the norm's prediction
    assert out["cross_dlib"][4] == pytest.approx(0.525, abs=1e-5)
    # and the labels of the found rows are those of the set without the lost ones
    np.testing.assert_allclose(label[:5], recognition_labels(make(three_people()))["label"], atol=1e-9)
