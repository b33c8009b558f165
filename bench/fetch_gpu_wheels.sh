#!/usr/bin/env bash
# Fetch what bench/gpu_check.sh needs on a GPU machine, into .cache/gpu-wheels (ignored by git), so
# that the GPU machine needs no network: copy that folder into the checkout there. The GPU machine is
# expected to have its own python3 (3.12) with torch, torchvision, timm, numpy, pillow, huggingface_hub,
# safetensors, regex, tqdm, scikit-image, prometheus-client, urllib3, httpx's pieces, attrs and certifi,
# but not the worker's own dependencies. Only those missing pieces are fetched, each with --no-deps, at
# the versions in .venv, so nothing here can replace its torch:
# - open_clip and pydantic (the engine and the settings);
# - confluent-kafka (librdkafka inside: its mock cluster stands in for Kafka), fastavro, boto3, pycurl
#   (libcurl inside: the S3 GETs) and the schema registry client's imports, so that `python -m worker` runs there end to end;
# - gofakes3, an S3 server as one static Go binary (harness/gofakes3.py builds it here with Go), into bin/;
# - the photo corpus, so both machines test the same bytes.
# Run it once, where PyPI and the Go module proxy are reachable:
#     make gpu-wheels        # or: bash bench/fetch_gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.cache/gpu-wheels}
PY=${PYTHON:-.venv/bin/python}
LIMIT_MIB=60  # kept small enough to copy to the GPU machine with the checkout (64 MiB together)

NAMES=(
    open_clip_torch ftfy wcwidth
    pydantic pydantic-core pydantic-settings annotated-types typing-inspection python-dotenv typing-extensions
    confluent-kafka fastavro boto3 botocore s3transfer jmespath pycurl
    authlib joserfc cryptography cffi pycparser cachetools httpx2 httpcore2 truststore
)
mapfile -t WHEELS < <("$PY" - "${NAMES[@]}" <<'PYTHON'
import importlib.metadata as metadata
import sys

for name in sys.argv[1:]:
    print(f"{name}=={metadata.version(name)}")
PYTHON
)
rm -rf "$DEST"
mkdir -p "$DEST/corpus" "$DEST/bin"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DEST" "${WHEELS[@]}"

if [[ $(go env GOOS)/$(go env GOARCH) != linux/amd64 ]]; then
    echo "gofakes3 must be built for linux/amd64 (the GPU machine); this Go builds for $(go env GOOS)/$(go env GOARCH)" >&2
    exit 1
fi
cp "$("$PY" -c "from harness.gofakes3 import ensure_binary; print(ensure_binary())")" "$DEST/bin/gofakes3"

"$PY" - "$DEST/corpus" <<'PYTHON'
import sys
from pathlib import Path

from harness.photos import photo_corpus

folder = Path(sys.argv[1])
for name, data in photo_corpus():
    (folder / name).write_bytes(data)
PYTHON
ls "$DEST" "$DEST/bin"
size=$(du -sb "$DEST" | cut -f1)
echo "$DEST: $((size / 1024 / 1024)) MiB (limit $LIMIT_MIB MiB)"
if ((size > LIMIT_MIB * 1024 * 1024)); then
    echo "$DEST is over $LIMIT_MIB MiB: too large to copy to the GPU machine with the checkout" >&2
    exit 1
fi
