#!/usr/bin/env bash
# Create the virtual environments that run the published edge FIQA peers (/work/shared/peers, baselines only):
#   tf   TensorFlow CPU for LightQNet's frozen graphs (TF pins its own numpy/protobuf, so never the project venv)
#   mnn  MNN for the SDD-FIQA MobileFaceNet
# Idempotent: an environment that already imports the pinned version is left alone.
#
#   FIQA_PEERS_DIR=path   where the environments go (default: .peers in the repository, gitignored)
#   PYTHON=python3.11     the interpreter that creates them (default: python3.11, else python3)
set -euo pipefail

caller="$PWD"
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PEERS="${FIQA_PEERS_DIR:-$PWD/.peers}"
case "$PEERS" in /*) ;; *) PEERS="$caller/$PEERS" ;; esac  # relative to where it was called from, as Python reads it
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif command -v python3.11 >/dev/null 2>&1; then PY=python3.11
else PY=python3; fi
TF_VERSION=2.19.0
MNN_VERSION=3.6.1

say() { printf '[peers] %s\n' "$*" >&2; }
# pip warns once per package about configured local index folders missing on this machine; drop only that line.
pipq() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

mkdir -p "$PEERS"

make_venv() {
    local dir="$1"
    if [ ! -x "$dir/bin/python" ]; then
        say "creating $dir with $("$PY" --version 2>&1)"
        "$PY" -m venv "$dir"
        pipq "$dir/bin/python" -m pip install --quiet --upgrade pip
    fi
}

# A package index that lacks tensorflow-cpu for this platform still has tensorflow, whose Linux wheel is the same
# CPU build plus optional CUDA extras that pip only installs when asked ([and-cuda]). A dry run with --no-deps reads
# only the wheel's metadata from the index, not the 250 MB wheel.
tf_dist() {
    if "$PY" -m pip install --dry-run --quiet --no-deps --ignore-installed "tensorflow-cpu==$TF_VERSION" >/dev/null 2>&1
    then echo tensorflow-cpu; else echo tensorflow; fi
}

# Refuse an environment into which something has pulled a GPU stack: TF alone is already ~600 MB.
check_no_gpu_stack() {
    local dir="$1" bad
    bad="$("$dir/bin/python" -m pip list --format=freeze 2>/dev/null | grep -iE '^(torch|nvidia-|jax|tensorrt)' || true)"
    if [ -n "$bad" ]; then
        say "unexpected packages in $dir: $(echo "$bad" | tr '\n' ' ')"
        exit 1
    fi
}

# --- tf ---
TF="$PEERS/tf"
if [ -x "$TF/bin/python" ] && "$TF/bin/python" -c "
import os; os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'
import tensorflow as tf, sys; sys.exit(tf.__version__ != '$TF_VERSION')" >/dev/null 2>&1; then
    say "tf: $TF already has tensorflow $TF_VERSION; skipped"
else
    start=$SECONDS
    make_venv "$TF"
    dist="$(tf_dist)"
    say "tf: installing $dist==$TF_VERSION into $TF (about 600 MB)"
    pipq "$TF/bin/python" -m pip install --quiet "$dist==$TF_VERSION"
    check_no_gpu_stack "$TF"
    "$TF/bin/python" -c "
import os; os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'
import numpy, tensorflow as tf; print('[peers] tf: tensorflow', tf.__version__, 'numpy', numpy.__version__)" >&2
    say "tf: done in $((SECONDS - start)) s"
fi

# --- mnn ---
MNN="$PEERS/mnn"
if [ -x "$MNN/bin/python" ] && "$MNN/bin/python" -c "
import importlib.metadata as md, sys
import MNN, numpy
sys.exit(md.version('MNN') != '$MNN_VERSION')" >/dev/null 2>&1; then
    say "mnn: $MNN already has MNN $MNN_VERSION; skipped"
else
    start=$SECONDS
    make_venv "$MNN"
    say "mnn: installing MNN==$MNN_VERSION and numpy into $MNN"
    pipq "$MNN/bin/python" -m pip install --quiet "MNN==$MNN_VERSION" numpy
    check_no_gpu_stack "$MNN"
    "$MNN/bin/python" -c "
import importlib.metadata as md, numpy, MNN; print('[peers] mnn: MNN', md.version('MNN'), 'numpy', numpy.__version__)" >&2
    say "mnn: done in $((SECONDS - start)) s"
fi

du -sh "$TF" "$MNN" 2>/dev/null | sed 's/^/[peers] size /' >&2
say "environments ready under $PEERS"
