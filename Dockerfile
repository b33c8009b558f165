# syntax=docker/dockerfile:1
# The worker image: `make image` (docker build -t clip-embedding-worker:<version> .). The Helm chart's
# default image is clip-embedding-worker:<appVersion>, and appVersion is the version below.
# tests/test_install.py performs this file's build and install steps without Docker.

# CUDA base: the CUDA release the pinned torch is built for. torch==2.15.0 from PyPI is the cu132
# build (torch.version.cuda "13.2"; it requires cuda-toolkit==13.2.2), so 13.2.2, not a 12.x image:
# the image's NVIDIA_REQUIRE_CUDA (cuda>=13.2) makes the NVIDIA container runtime refuse a node
# whose driver is too old for it, at start, instead of torch failing later. "base", not "runtime":
# the torch wheel brings its own cuBLAS, cuDNN, NCCL, ... as pip packages, so the runtime flavour's
# copies would be gigabytes never loaded. Bump it together with torch (test_install.py checks it).
ARG CUDA_IMAGE=nvidia/cuda:13.2.2-base-ubuntu24.04

# -- builder: the package as a wheel (pure Python, so any Python 3.11 builds it) ------------------
FROM python:3.11-slim AS builder
WORKDIR /src
# Only what the wheel needs (.dockerignore keeps the rest of the context out too). worker/schemas
# is a link to ../schemas, so both are copied.
COPY pyproject.toml README.md ./
COPY schemas/ schemas/
COPY worker/ worker/
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# -- the image -----------------------------------------------------------------------------------
FROM ${CUDA_IMAGE}
# Python 3.11 (requires-python >= 3.11; the version the test suite runs): Ubuntu 24.04 ships 3.12,
# so it comes from the deadsnakes PPA. ca-certificates: TLS to S3, Kafka and the model hubs.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates software-properties-common gpg-agent \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && apt-get purge -y --auto-remove software-properties-common gpg-agent \
    && rm -rf /var/lib/apt/lists/*

# The wheel, installed (not editable) into a virtualenv with its pinned dependencies (torch
# 2.15.0+cu132 and friends) from the index. The wheel is bind-mounted, so no layer keeps a copy.
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python3.11 -m venv /opt/venv \
    && /opt/venv/bin/python -m pip install --no-cache-dir /wheels/*.whl

# Non-root, with the uid/gid the chart's podSecurityContext runs as (10001), numeric so that
# Kubernetes can verify runAsNonRoot against the image.
RUN groupadd --gid 10001 worker && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin worker
USER 10001:10001
WORKDIR /home/worker
# A fixed mmap threshold: buffers of big objects go back to the OS when freed (glibc would raise the
# threshold to 32 MB after the first free and keep such buffers in arenas it never trims).
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    MALLOC_MMAP_THRESHOLD_=1048576

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
