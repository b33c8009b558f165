#!/usr/bin/env bash
# The engine's GPU checks in one call of the device tool (under 5 minutes on an H200):
#     bash bench/fetch_gpu_wheels.sh                   # here, once: wheels + corpus into .cache/gpu-wheels
#     run(command="bash bench/gpu_check.sh", carry=[".cache/gpu-wheels"], timeout_s=420)
# The machine starts bare with its own python3 and torch: the carried wheels (open_clip, pydantic, ...)
# are installed --no-deps into a private folder, so its torch stays as it is. Results: the log and
# gpu_check.json under $OUT. Dry run of everything but CUDA, here: bash bench/gpu_check.sh --cpu-smoke
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=${GPU_WHEELS:-.cache/gpu-wheels}
OUTDIR=${OUT:-/tmp/gpu-check}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1

if [[ " $* " == *" --cpu-smoke "* ]]; then
    PY=${PYTHON:-.venv/bin/python}
else
    PY=${PYTHON:-python3}
    if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        echo "no wheels in $WHEELS: run bench/fetch_gpu_wheels.sh and carry $WHEELS" >&2
        exit 2
    fi
    SITE=/tmp/gpu-check-site
    "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$WHEELS"/*.whl || exit 3
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader || true
fi
"$PY" -c "import torch, torchvision, open_clip, pydantic, PIL, numpy; print('# python', __import__('sys').version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__, 'open_clip', open_clip.__version__, 'pillow', PIL.__version__, 'numpy', numpy.__version__)" || exit 4

timeout --kill-after=10 290 "$PY" bench/gpu_check.py --corpus "$WHEELS/corpus" --json "$OUTDIR/gpu_check.json" "$@" \
    2>&1 | tee "$OUTDIR/gpu_check.log"
status=${PIPESTATUS[0]}
[[ $status == 124 ]] && echo "gpu_check.py ran past 290 s and was stopped" >&2
exit "$status"
