"""Run one published edge FIQA peer on pre-aligned faces; started by ``bench/peers`` with that peer's venv python.

    worker.py --model {lightqnet-dm100,lightqnet-dm025,sdd_fiqa} --models-dir DIR --inputs X.npz --out Y.npy
              [--threads 1] [--time N]

``X.npz`` holds ``faces``: uint8 [N, H, W, 3] RGB, already aligned for the model (96x96 for LightQNet, 112x112 for
SDD-FIQA; ``bench/peers.lightqnet_input`` / ``sdd_fiqa_input`` make them). ``Y.npy``: float32 [N] scores, higher is
better. ``--time N`` also times batch-1 inference on the first face N times and prints one JSON line (the last line
of stdout; the engines print their own chatter before it).

The peers are reference baselines only. This file imports nothing from the project: it runs in an environment
that holds only TensorFlow or MNN, which pin numpy and protobuf versions the project's venv cannot share.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

# Full sha256 of each file as published in /work/shared/peers (its README prints prefix...suffix of these): a
# different file under the same name would give numbers that are not the paper's model.
MODELS = {
    "lightqnet-dm100": {"file": "lightqnet-dm100.pb", "size": 96,
                        "sha256": "057b8ea2714953b70745934bcd7a927f4676a827a55509a2adc64e7282f836f3"},
    "lightqnet-dm025": {"file": "lightqnet-dm025.pb", "size": 96,
                        "sha256": "731eade9066ca76c78c9a989dd5d5c73d9dd2dfc3084bdb5fdfb6ad87cac6c10"},
    "sdd_fiqa": {"file": "sdd_fiqa.mnn", "size": 112,
                 "sha256": "6f7963707baacc034f0cd23bf8beba4170fa199478acd9dbc233f32776dc5874"},
}
LIGHTQNET_BATCH = 64


def verify(path: Path, expected: str) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected:
        sys.exit(f"worker: {path} has sha256 {digest}, expected {expected}: not the published model")


class LightQNet:
    """Frozen TF1 graph: input:0 [N,96,96,3] float32 RGB (x-128)/128 -> confidence_st:0 [N,1] sigmoid."""

    def __init__(self, path: Path, threads: int):
        import tensorflow as tf

        self.engine = f"tensorflow {tf.__version__}"
        graph_def = tf.compat.v1.GraphDef()
        graph_def.ParseFromString(path.read_bytes())
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=1)
        self.sess = tf.compat.v1.Session(graph=self.graph, config=config)
        self.x = self.graph.get_tensor_by_name("input:0")
        self.y = self.graph.get_tensor_by_name("confidence_st:0")

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(faces), LIGHTQNET_BATCH):
            x = (faces[i:i + LIGHTQNET_BATCH].astype(np.float32) - 128.0) / 128.0
            out.append(self.sess.run(self.y, feed_dict={self.x: x}).reshape(-1))
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


class SddFiqa:
    """MNN MobileFaceNet: input (1,3,112,112) float32 NCHW (Caffe layout) RGB (x-127.5)/127.5 -> output, one
    regression score. The graph is fixed at batch 1, so faces go one at a time."""

    def __init__(self, path: Path, threads: int):
        import importlib.metadata

        import MNN

        self.MNN = MNN
        self.engine = f"MNN {importlib.metadata.version('MNN')}"
        self.interp = MNN.Interpreter(str(path))
        # 'high' = fp32 throughout, as the authors' Android app (Precision_High) runs it.
        self.sess = self.interp.createSession({"numThread": threads, "precision": "high"})
        self.inp = self.interp.getSessionInput(self.sess, "input")

    def _one(self, face: np.ndarray) -> float:
        MNN = self.MNN
        x = ((face.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None].copy()
        tmp = MNN.Tensor((1, 3, 112, 112), MNN.Halide_Type_Float, x, MNN.Tensor_DimensionType_Caffe)
        self.inp.copyFrom(tmp)
        self.interp.runSession(self.sess)
        out = self.interp.getSessionOutput(self.sess, "output")
        host = MNN.Tensor(out.getShape(), MNN.Halide_Type_Float, np.zeros(out.getShape(), np.float32),
                          MNN.Tensor_DimensionType_Caffe)
        out.copyToHostTensor(host)
        return float(np.asarray(host.getNumpyData()).reshape(-1)[0])

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        return np.array([self._one(f) for f in faces], dtype=np.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, choices=sorted(MODELS))
    ap.add_argument("--models-dir", required=True, type=Path)
    ap.add_argument("--inputs", required=True, type=Path, help="npz with 'faces': uint8 [N,H,W,3] RGB, aligned")
    ap.add_argument("--out", type=Path, help="where to write float32 [N] scores (.npy)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--time", type=int, default=0, metavar="N", help="also time N batch-1 runs; print JSON")
    args = ap.parse_args(argv)
    if args.out is None and not args.time:
        ap.error("nothing to do: give --out, --time N, or both")
    if args.threads < 1:
        ap.error("--threads must be >= 1")

    spec = MODELS[args.model]
    path = args.models_dir / spec["file"]
    if not path.is_file():
        sys.exit(f"worker: no {path}")
    verify(path, spec["sha256"])

    with np.load(args.inputs) as z:
        faces = np.asarray(z["faces"])
    s = spec["size"]
    if faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[1:] != (s, s, 3):
        sys.exit(f"worker: {args.model} needs uint8 [N,{s},{s},3] RGB faces, got {faces.dtype} {faces.shape}")

    # TF's oneDNN kernels read OMP_NUM_THREADS besides the session's intra-op pool.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    model = (LightQNet if args.model.startswith("lightqnet") else SddFiqa)(path, args.threads)

    if args.out is not None:
        scores = model(faces)
        np.save(args.out, scores.astype(np.float32))

    if args.time:
        if len(faces) == 0:
            sys.exit("worker: --time needs at least one face")
        one = faces[:1]
        for _ in range(max(5, args.time // 10)):  # first runs allocate and pick kernels
            model(one)
        samples = []
        for _ in range(args.time):
            t0 = time.perf_counter()
            model(one)
            samples.append((time.perf_counter() - t0) * 1000.0)
        t = np.asarray(samples)
        print(json.dumps({"model": args.model, "engine": model.engine, "threads": args.threads, "batch": 1,
                          "median_ms": round(float(np.median(t)), 3), "p90_ms": round(float(np.percentile(t, 90)), 3),
                          "min_ms": round(float(t.min()), 3), "runs": len(t)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
