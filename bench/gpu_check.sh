#!/usr/bin/env bash
# The engine's GPU checks, under 8 minutes on an H200. Run this on a GPU machine (CUDA, python3 with
# torch and torchvision installed; no network needed there):
#     make gpu-wheels                  # first, where PyPI is reachable: wheels, gofakes3, corpus into .cache/gpu-wheels
#     bash bench/gpu_check.sh          # then on the GPU machine, from a checkout with .cache/gpu-wheels copied in
# The worker's own dependencies (open_clip, pydantic, confluent-kafka, boto3, ...) are installed from those
# wheels --no-deps into a private folder, so the machine's torch stays as it is. Figures go to $OUT
# (default /tmp/gpu-check); record them in BENCHMARKS.md.
# Each part (bench/gpu_check.py) runs as its own process under a hard time limit and appends every
# figure to $OUT/gpu_check.jsonl as it is measured, so a part that overruns or crashes costs only
# itself; the summary ($OUT/gpu_check.json, the log's end) is written last. A rerun of some parts:
#     GPU_CHECK_PARTS="e2e decode" bash bench/gpu_check.sh
# Dry run of every part on the CPU, tiny model, one process (tests/engine/test_engine_bench_scripts.py):
#     bash bench/gpu_check.sh --cpu-smoke
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=${GPU_WHEELS:-.cache/gpu-wheels}
OUTDIR=${OUT:-/tmp/gpu-check}
mkdir -p "$OUTDIR"
rm -f "$OUTDIR/gpu_check.jsonl"
export PYTHONUNBUFFERED=1
LOG="$OUTDIR/gpu_check.log"
CHECK=(bench/gpu_check.py --wheels "$WHEELS" --jsonl "$OUTDIR/gpu_check.jsonl")

if [[ " $* " == *" --cpu-smoke "* ]]; then
    PY=${PYTHON:-.venv/bin/python}
    timeout --kill-after=5 150 "$PY" "${CHECK[@]}" --cpu-smoke --json "$OUTDIR/gpu_check.json" 2>&1 | tee "$LOG"
    exit "${PIPESTATUS[0]}"
fi

PY=${PYTHON:-python3}
if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "no wheels in $WHEELS: run make gpu-wheels where PyPI is reachable and copy $WHEELS here" >&2
    exit 2
fi
SITE=/tmp/gpu-check-site
if ! "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl >"$OUTDIR/pip.log" 2>&1; then
    tail -20 "$OUTDIR/pip.log" | tee "$LOG" >&2
    exit 3
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
    "$PY" -c "import torch, torchvision, open_clip, confluent_kafka, boto3, fastavro, pydantic, PIL, numpy; print('# python', __import__('sys').version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__, 'open_clip', open_clip.__version__, 'librdkafka', confluent_kafka.libversion()[0], 'boto3', boto3.__version__, 'pillow', PIL.__version__, 'numpy', numpy.__version__, 'cores', __import__('os').cpu_count())"
} 2>&1 | tee -a "$LOG"

# Each part's hard limit in seconds: its own budget (gpu_check.py GPU_BUDGET) plus 10-20 s for starting
# Python, torch and the CUDA context, and for the last step a budget check lets through. Together 493 s.
LIMITS="models:130 attention:35 compile:75 decode:68 e2e:185"
for part in ${GPU_CHECK_PARTS:-models attention compile decode e2e}; do
    limit=$(tr ' ' '\n' <<<"$LIMITS" | sed -n "s/^$part://p")
    if [[ -z $limit ]]; then
        echo "unknown part $part (known: $LIMITS)" >&2
        continue
    fi
    timeout --kill-after=5 "$limit" "$PY" "${CHECK[@]}" --parts "$part" 2>&1 | tee -a "$LOG"
    status=${PIPESTATUS[0]}
    if [[ $status == 124 || $status == 137 ]]; then
        echo "{\"part\": \"$part\", \"kind\": \"status\", \"status\": \"killed at its hard limit of $limit s\"}" \
            >>"$OUTDIR/gpu_check.jsonl"
    fi
done
"$PY" bench/gpu_check.py --summarize --jsonl "$OUTDIR/gpu_check.jsonl" --json "$OUTDIR/gpu_check.json" 2>&1 \
    | tee -a "$LOG"
exit "${PIPESTATUS[0]}"
