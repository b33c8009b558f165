# syntax=docker/dockerfile:1.10
# The worker image: `make image` (docker build with the arguments below). The Helm chart's default
# image is clip-embedding-worker:<appVersion>, and appVersion is the package version.
# tests/test_install.py performs this file's build and install steps without Docker.

# -- build arguments -----------------------------------------------------------------------------
# CUDA: which CUDA build of torch, on the matching nvidia/cuda base (the cuda-<CUDA> stages below).
#   13.2 (default): torch==2.15.0 from PyPI is the cu132 build (torch.version.cuda "13.2"; it requires
#        cuda-toolkit==13.2.2). Node driver R580 or newer.
#   12.8: torch's cu128 build from the PyTorch index, for nodes whose driver is R570 or newer but
#        older than R580 (`make image CUDA=12.8`).
# The image's NVIDIA_REQUIRE_CUDA (from the base) makes the NVIDIA container runtime refuse a node
# whose driver is too old for it, at start, instead of torch failing later.
ARG CUDA=13.2

# Base images, pinned by digest. Each image is a tag plus an optional digest; with the digest set,
# the build uses exactly that image whatever the tag points to today. To pin or update one, read the
# digest of the tag's multi-platform index and pass it (or write it here as the default):
#   docker buildx imagetools inspect python:3.11-slim --format '{{json .Manifest.Digest}}'
#   docker buildx imagetools inspect nvidia/cuda:13.2.2-base-ubuntu24.04 --format '{{json .Manifest.Digest}}'
#   make image PYTHON_DIGEST=sha256:... CUDA_DIGEST=sha256:...
# Empty: the tag alone (what it points to at build time). "base", not "runtime": the torch wheel
# brings its own cuBLAS, cuDNN, NCCL, ... as pip packages, so the runtime flavour's copies would be
# gigabytes never loaded. Bump the CUDA bases together with torch (test_install.py checks them).
ARG PYTHON_IMAGE=python:3.11-slim
# python:3.11-slim's index as Docker's official-images record (docker-library/repo-info) gave it, 2026-08-05.
ARG PYTHON_DIGEST=sha256:90744cff8f32887f075c47d747a173ff333e9e98801667af93c357fa9f5e28ff
ARG CUDA_13_2_IMAGE=nvidia/cuda:13.2.2-base-ubuntu24.04
ARG CUDA_13_2_DIGEST=
ARG CUDA_12_8_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04
ARG CUDA_12_8_DIGEST=

# -- builder: the package as a wheel (pure Python, so any Python 3.11 builds it) ------------------
FROM ${PYTHON_IMAGE}${PYTHON_DIGEST:+@}${PYTHON_DIGEST} AS builder
WORKDIR /src
# Only what the wheel needs (.dockerignore keeps the rest of the context out too). worker/schemas
# is a link to ../schemas, so both are copied.
COPY pyproject.toml README.md ./
COPY schemas/ schemas/
COPY worker/ worker/
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# -- the CUDA bases: only the one CUDA names is pulled ---------------------------------------------
FROM ${CUDA_13_2_IMAGE}${CUDA_13_2_DIGEST:+@}${CUDA_13_2_DIGEST} AS cuda-13.2
FROM ${CUDA_12_8_IMAGE}${CUDA_12_8_DIGEST:+@}${CUDA_12_8_DIGEST} AS cuda-12.8

# -- the image -----------------------------------------------------------------------------------
FROM cuda-${CUDA}
ARG CUDA
# Python 3.11 (requires-python >= 3.11; the version the test suite runs): Ubuntu 24.04 ships 3.12,
# so it comes from the deadsnakes PPA. ca-certificates: TLS to S3, Kafka and the model hubs.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates software-properties-common gpg-agent \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && apt-get purge -y --auto-remove software-properties-common gpg-agent \
    && rm -rf /var/lib/apt/lists/*

# The dependencies exactly as requirements.lock pins them, each file checked against its hash
# (`make lock` regenerates it from pyproject.toml), then the worker's wheel without dependencies, then
# `pip check`. The locks stay in the image (/opt/locks) as the record of what is installed.
# CUDA=12.8 uses requirements-cu128.lock when it is there (`make lock-cu128`, where the PyTorch index
# is reachable). Without it, everything but the torch family comes from requirements.lock by hash,
# and torch and torchvision at the locked versions, with their CUDA 12 wheels, from the PyTorch
# index by version: pinned, but not hash-checked.
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
COPY requirements*.lock /opt/locks/
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    set -eu \
    && python3.11 -m venv /opt/venv \
    && lock=/opt/locks/requirements.lock torch_index= \
    && if [ "$CUDA" != 13.2 ]; then \
         variant="/opt/locks/requirements-cu$(echo "$CUDA" | tr -d .).lock"; \
         if [ -f "$variant" ]; then lock="$variant"; \
         else \
           torch_index="https://download.pytorch.org/whl/cu$(echo "$CUDA" | tr -d .)"; \
           awk '/^[a-z0-9]/ { skip = ($0 ~ /^(torch|torchvision|triton|nvidia-|cuda-)/) } !skip' "$lock" > /tmp/base.lock; \
           lock=/tmp/base.lock; \
         fi; \
       fi \
    && /opt/venv/bin/python -m pip install --no-cache-dir --require-hashes --no-deps -r "$lock" \
    && if [ -n "$torch_index" ]; then \
         /opt/venv/bin/python -m pip install --no-cache-dir --index-url "$torch_index" \
           $(grep -oE '^(torch|torchvision)==[^ ]+' /opt/locks/requirements.lock); \
       fi \
    && /opt/venv/bin/python -m pip install --no-cache-dir --no-deps /wheels/*.whl \
    && /opt/venv/bin/python -m pip check \
    && rm -f /tmp/base.lock

# Non-root, with the uid/gid the chart's podSecurityContext runs as (10001), numeric so that
# Kubernetes can verify runAsNonRoot against the image.
RUN groupadd --gid 10001 worker && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin worker

# Model weights baked into the image (the chart's modelCache.type=image): PRETRAINED is what
# `clip-worker fetch-model` downloads at build time, as config.model.pretrained would name it (an
# OpenCLIP tag of MODEL_NAME, or s3://bucket/key); empty, none. It
# lands in /opt/models, the image's model.cache_dir, where `clip-worker run` with the same
# MODEL_NAME and PRETRAINED finds it without downloading. WEIGHTS_SHA256, when set, is checked.
# S3 credentials, for s3://, come as build secrets and stay out of the layers:
#   docker build --secret id=aws,src=$HOME/.aws/credentials ...
ARG MODEL_NAME=ViT-B-32
ARG PRETRAINED=
ARG WEIGHTS_SHA256=
ARG S3_REGION=
ARG S3_ENDPOINT_URL=
ENV CLIP_WORKER_MODEL__CACHE_DIR=/opt/models
RUN --mount=type=secret,id=aws,target=/run/secrets/aws,required=false \
    set -eu \
    && mkdir -p /opt/models \
    && if [ -n "$PRETRAINED" ]; then \
         env AWS_SHARED_CREDENTIALS_FILE=/run/secrets/aws HF_HOME=/tmp/hf \
           CLIP_WORKER_MODEL__MODEL_NAME="$MODEL_NAME" CLIP_WORKER_MODEL__PRETRAINED="$PRETRAINED" \
           ${WEIGHTS_SHA256:+CLIP_WORKER_MODEL__WEIGHTS_SHA256=$WEIGHTS_SHA256} \
           ${S3_REGION:+CLIP_WORKER_S3__REGION=$S3_REGION} \
           ${S3_ENDPOINT_URL:+CLIP_WORKER_S3__ENDPOINT_URL=$S3_ENDPOINT_URL} \
           clip-worker fetch-model; \
         rm -rf /tmp/hf; \
       fi \
    && chown -R 10001:10001 /opt/models

USER 10001:10001
WORKDIR /home/worker
# A fixed mmap threshold: buffers of big objects go back to the OS when freed (glibc would raise the
# threshold to 32 MB after the first free and keep such buffers in arenas it never trims).
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    MALLOC_MMAP_THRESHOLD_=1048576

# OCI annotations (`docker inspect`, registries): `make image` passes VERSION (pyproject.toml),
# REVISION (git rev-parse HEAD) and SOURCE (the git remote's URL, empty without one). No licenses
# label: pyproject.toml declares no licence.
ARG VERSION=unknown
ARG REVISION=unknown
ARG SOURCE=
LABEL org.opencontainers.image.title="clip-embedding-worker" \
      org.opencontainers.image.description="A Kafka consumer that turns image references on S3 into OpenCLIP embeddings on a GPU." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"

# /metrics, /livez, /readyz (CLIP_WORKER_PIPELINE__METRICS_PORT).
EXPOSE 9400
# For plain Docker; Kubernetes ignores it and uses the chart's probes. /livez is 200 while the model
# loads, then while the poll loop turns.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('CLIP_WORKER_PIPELINE__METRICS_PORT', '9400'), timeout=4)"]

# `clip-worker` with no arguments runs the worker, as `clip-worker run` does (it handles SIGTERM itself,
# so it can be PID 1); arguments after the image name pick another command, e.g. `check` or
# `embed FILE...`, and `--help` lists them.
ENTRYPOINT ["clip-worker"]
