"""Published edge FIQA models (``/work/shared/peers``) as side-by-side baselines for the benchmarks.

LightQNet (Chen et al. 2021; width 1.0 and 0.25, TensorFlow frozen graphs) and an SDD-FIQA MobileFaceNet (MNN) put
their scores beside the project's on the same faces. They are **reference baselines only**: never a teacher, a label
source, a training target or an initialisation of anything the project ships.

Their engines pin numpy/protobuf versions the project's venv cannot share, so each runs in its own venv
(``bash bench/peers/setup_peers.sh``) through ``bench/peers/worker.py``; this module only aligns faces (numpy + cv2)
and moves arrays through temporary files. A bench script imports it as the others import ``common``::

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peers import PEERS, lightqnet_input, sdd_fiqa_input, score_peers, peer_latency

Landmarks are the project's five points in image order (``fiqa_sdk.detection``): the eye and mouth corner on the
image's left first. The peers' own detectors (MTCNN for LightQNet, the ArcFace template for SDD-FIQA) use the same
order, so no swap is needed.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fiqa_sdk.align import align_face, estimate_similarity
from fiqa_sdk.frames import to_bgr

from .worker import MODELS

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORKER = HERE / "worker.py"
SETUP_HINT = "run bash bench/peers/setup_peers.sh"
DEFAULT_MODELS_DIR = REPO.parent / "shared" / "peers"


def default_peers_dir() -> Path:
    """Where setup_peers.sh puts the venvs: $FIQA_PEERS_DIR, else .peers in the repository."""
    return Path(os.environ.get("FIQA_PEERS_DIR") or REPO / ".peers")


def default_models_dir() -> Path:
    return Path(os.environ.get("FIQA_PEER_MODELS") or DEFAULT_MODELS_DIR)


@dataclass(frozen=True)
class Peer:
    name: str
    file: str            # in the models dir
    file_bytes: int      # size of the published file
    venv: str            # which setup_peers.sh venv runs it
    input_size: int      # side of the uint8 RGB face it takes
    description: str

    def make_input(self, frame_bgr: np.ndarray, landmarks5: np.ndarray) -> np.ndarray:
        return (lightqnet_input if self.venv == "tf" else sdd_fiqa_input)(frame_bgr, landmarks5)


PEERS: list[Peer] = [
    Peer("lightqnet-dm100", MODELS["lightqnet-dm100"]["file"], 1_875_662, "tf", 96,
         "LightQNet width 1.0 (Chen et al., IEEE SPL 2021), TensorFlow frozen graph, sigmoid confidence"),
    Peer("lightqnet-dm025", MODELS["lightqnet-dm025"]["file"], 298_422, "tf", 96,
         "LightQNet width 0.25, TensorFlow frozen graph, sigmoid confidence"),
    Peer("sdd_fiqa", MODELS["sdd_fiqa"]["file"], 3_823_180, "mnn", 112,
         "SDD-FIQA-style MobileFaceNet regressor (CheckerBoards/mnn-SDD-FIQA), MNN; score ~25-80, not monotone "
         "in very heavy blur"),
]
PEER_NAMES = tuple(p.name for p in PEERS)
_BY_NAME = {p.name: p for p in PEERS}

# LightQNet's face_normalizer: left eye, right eye, mouth centre onto these points of a 160x160 crop.
LIGHTQNET_CROP = 160
LIGHTQNET_SIZE = 96
LIGHTQNET_TEMPLATE_160 = LIGHTQNET_CROP * np.array([[0.3419, 0.4616], [0.6565, 0.4598], [0.5012, 0.8240]],
                                                   dtype=np.float64)


def peer(name: str) -> Peer:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEER_NAMES)}") from None


def lightqnet_points(landmarks5: np.ndarray) -> np.ndarray:
    """The three points LightQNet aligns on: both eyes and the mean of the two mouth corners."""
    lm = np.asarray(landmarks5, dtype=np.float64).reshape(5, 2)
    return np.stack([lm[0], lm[1], lm[3:].mean(0)])


def lightqnet_matrix(landmarks5: np.ndarray) -> np.ndarray:
    """2x3 frame -> 160x160 crop matrix. The least-squares similarity without reflection is what skimage's
    SimilarityTransform.estimate computes (Umeyama), as the authors' code calls it."""
    return estimate_similarity(lightqnet_points(landmarks5), LIGHTQNET_TEMPLATE_160)


def lightqnet_input(frame_bgr: np.ndarray, landmarks5: np.ndarray) -> np.ndarray:
    """uint8 [96, 96, 3] RGB face for LightQNet, made as the authors' code makes it: warpAffine to 160x160 (bilinear,
    black outside the frame), bilinear resize to 96x96. RGB because training read images as RGB (their demo's
    main.py feeds cv2's BGR unconverted, which their training never saw)."""
    crop = cv2.warpAffine(to_bgr(frame_bgr), lightqnet_matrix(landmarks5), (LIGHTQNET_CROP, LIGHTQNET_CROP))
    crop = cv2.resize(crop, (LIGHTQNET_SIZE, LIGHTQNET_SIZE), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(crop[:, :, ::-1])


def sdd_fiqa_input(frame_bgr: np.ndarray, landmarks5: np.ndarray) -> np.ndarray:
    """uint8 [112, 112, 3] RGB face for SDD-FIQA: the project's own ArcFace-112 alignment (the template the peer's
    README gives), so it sees exactly the crop the project's scorer sees."""
    return np.ascontiguousarray(align_face(frame_bgr, landmarks5, 112)[:, :, ::-1])


def make_inputs(names: Sequence[str], faces: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """{peer name: uint8 [N, S, S, 3]} for ``score_peers`` from (frame_bgr, landmarks5) pairs; each alignment is
    computed once and shared by the peers that take it."""
    faces = list(faces)
    by_kind: dict[str, np.ndarray] = {}
    out = {}
    for name in names:
        p = peer(name)
        if p.venv not in by_kind:
            s = p.input_size
            by_kind[p.venv] = (np.stack([p.make_input(f, lm) for f, lm in faces]) if faces
                               else np.zeros((0, s, s, 3), np.uint8))
        out[name] = by_kind[p.venv]
    return out


_HASHES: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _HASHES[key]


def peer_python(name: str, peers_dir: Path | str | None = None) -> Path:
    return Path(peers_dir or default_peers_dir()) / peer(name).venv / "bin" / "python"


def unavailable(name: str, peers_dir: Path | str | None = None, models_dir: Path | str | None = None) -> str | None:
    """Why ``name`` cannot run here (None when it can): a missing venv, a missing or altered model file."""
    p = peer(name)
    py = peer_python(name, peers_dir)
    if not py.exists():
        return f"no {p.venv} venv at {py.parent.parent}: {SETUP_HINT}"
    path = Path(models_dir or default_models_dir()) / p.file
    if not path.is_file():
        return f"no model file {path}"
    if _sha256(path) != MODELS[name]["sha256"]:
        return f"{path} is not the published file (sha256 differs)"
    return None


def _worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _run_worker(name: str, args: list[str], peers_dir, models_dir, timeout: float) -> str:
    cmd = [str(peer_python(name, peers_dir)), str(WORKER), "--model", name,
           "--models-dir", str(Path(models_dir or default_models_dir())), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_worker_env(), timeout=timeout)
    if r.returncode != 0:
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"peer worker for {name} failed (exit {r.returncode}): {tail}")
    return r.stdout


def score_peers(names: Sequence[str], inputs: dict[str, np.ndarray], peers_dir: Path | str | None = None,
                models_dir: Path | str | None = None, threads: int = 1) -> dict[str, np.ndarray | str]:
    """Score aligned faces with each named peer: {name: float32 [N] scores (higher is better)}, or, for a peer that
    cannot run here, {name: 'skipped: <reason>'}.

    ``inputs[name]``: uint8 [N, S, S, 3] RGB from :func:`lightqnet_input` (S=96) or :func:`sdd_fiqa_input` (S=112),
    or :func:`make_inputs`. ``peers_dir``: the venvs (default $FIQA_PEERS_DIR or .peers); ``models_dir``: the model
    files (default $FIQA_PEER_MODELS or /work/shared/peers next to the repository). A worker that starts but fails
    raises RuntimeError: that is a bug to see, not a baseline to leave out quietly."""
    out: dict[str, np.ndarray | str] = {}
    for name in names:
        p = peer(name)
        if name not in inputs:
            raise ValueError(f"no inputs for peer {name!r}")
        faces = np.asarray(inputs[name])
        s = p.input_size
        if faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[1:] != (s, s, 3):
            raise ValueError(f"{name} needs uint8 [N, {s}, {s}, 3] RGB faces, got {faces.dtype} {faces.shape}")
        why = unavailable(name, peers_dir, models_dir)
        if why:
            out[name] = f"skipped: {why}"
            continue
        if len(faces) == 0:
            out[name] = np.zeros(0, np.float32)
            continue
        with tempfile.TemporaryDirectory(prefix="fiqa-peer-") as tmp:
            src, dst = Path(tmp) / "faces.npz", Path(tmp) / "scores.npy"
            np.savez(src, faces=faces)
            _run_worker(name, ["--inputs", str(src), "--out", str(dst), "--threads", str(threads)],
                        peers_dir, models_dir, timeout=120 + 0.05 * len(faces))
            scores = np.load(dst).astype(np.float32)
        if scores.shape != (len(faces),):
            raise RuntimeError(f"peer worker for {name} returned shape {scores.shape} for {len(faces)} faces")
        out[name] = scores
    return out


def peer_latency(name: str, runs: int = 200, peers_dir: Path | str | None = None,
                 models_dir: Path | str | None = None, face: np.ndarray | None = None) -> dict | str:
    """The worker's batch-1, one-thread timing of ``name`` over ``runs`` runs: a dict with ``median_ms`` (per face),
    ``p90_ms``, ``min_ms``, ``runs``, ``engine``; or 'skipped: <reason>'. Engine start-up and alignment are not
    in it. ``face``: the uint8 RGB input to time on (default a fixed noise face: these CNNs cost the same on any)."""
    p = peer(name)
    why = unavailable(name, peers_dir, models_dir)
    if why:
        return f"skipped: {why}"
    if face is None:
        face = np.random.default_rng(0).integers(0, 256, (p.input_size, p.input_size, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="fiqa-peer-") as tmp:
        src = Path(tmp) / "faces.npz"
        np.savez(src, faces=np.asarray(face, np.uint8)[None])
        stdout = _run_worker(name, ["--inputs", str(src), "--threads", "1", "--time", str(int(runs))],
                             peers_dir, models_dir, timeout=120 + runs)
    line = next((ln for ln in reversed(stdout.splitlines()) if ln.startswith("{")), None)
    if line is None:
        raise RuntimeError(f"peer worker for {name} printed no timing: {stdout[-300:]}")
    return json.loads(line)
