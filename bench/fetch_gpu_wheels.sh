#!/usr/bin/env bash
# Fetch what bench/gpu_check.sh needs on the GPU machine, into .cache/gpu-wheels (ignored by git; the
# device tool carries it: carry=[".cache/gpu-wheels"]). That machine has no network and its own python3
# (3.12) with torch, torchvision, timm, numpy, pillow, huggingface_hub, safetensors, regex, tqdm and
# scikit-image, but not open_clip or pydantic. Only those missing pieces are fetched, each with
# --no-deps, so nothing here can replace its torch. The photo corpus is written out too, so both
# machines test the same bytes. Run it here, once, where PyPI is reachable:
#     bash bench/fetch_gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.cache/gpu-wheels}
PY=${PYTHON:-.venv/bin/python}

# The project's pins (pyproject.toml) and, for their dependencies, the versions in .venv.
WHEELS=(
    open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
    pydantic==2.14.3 pydantic-core==2.50.4 pydantic-settings==2.16.3
    annotated-types==0.8.0 typing-inspection==0.4.5 python-dotenv==1.2.4 typing-extensions==4.16.0
)
rm -rf "$DEST"
mkdir -p "$DEST/corpus"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST" "${WHEELS[@]}"

"$PY" - "$DEST/corpus" <<'PYTHON'
import sys
from pathlib import Path

from harness.photos import photo_corpus

folder = Path(sys.argv[1])
for name, data in photo_corpus():
    (folder / name).write_bytes(data)
PYTHON
ls "$DEST"
du -sh "$DEST"
