# Two commands on a fresh machine: `make demo` and `make test`. Both build the virtualenv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Rebuilt whenever pyproject.toml or the lock changes: the runtime dependencies at the lock's versions
# (requirements.lock, what the image installs), so the suite tests what ships, with the dev tools on
# top. Installed by uv (into .cache/uv, as `make lock` uses it): it links torch's 6 GB of CUDA wheels
# from its cache in seconds where pip copies them for two minutes. Also fetches what the tests'
# servers need into .cache (the Kafka broker's jars, and Apicurio Registry as the Schema Registry:
# ~150 MB), so that tests run offline afterwards.
INSTALLED := $(VENV)/.installed
UV_VERSION := 0.13.10
UV := .cache/uv/bin/uv
# A real helm renders the chart in tests/test_helm_chart.py; built from its Go module (~2.5 min
# the first time on a machine, seconds once Go's caches are warm).
HELM := .cache/bin/helm
HELM_VERSION := v3.22.0
# Prometheus's rule tester: tests/test_alerts.py runs `promtool test rules` on the chart's PrometheusRule.
# Built from its Go module (v0.316.0 is Prometheus 3.16.0): ~12.5 min the first time on a machine (2 shared cores),
# ~10 s once Go's caches are warm.
PROMTOOL := .cache/bin/promtool
PROMTOOL_VERSION := v0.316.0

.PHONY: test demo docs lint typecheck imports pytest bench bench-cpu gpu-wheels lock lock-cu128 image clean

$(INSTALLED): pyproject.toml requirements.lock $(UV)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	sed -e '/--hash=/d' -e 's/ \\$$//' requirements.lock > $(VENV)/constraints.txt  # no hashes beside -e .
	$(UV) pip install --quiet --python $(PY) -e '.[dev]' -c $(VENV)/constraints.txt
	$(PY) -c "import harness.kafka_broker as k; k.ensure_jars()"
	$(PY) -c "import harness.schema_registry as r; r.ensure_registry(); r.train_aot_cache()"
	touch $@

# The checks run side by side (the tool builds beside the install, the linters beside the tests), and
# so do the test modules: pytest-xdist, PYTEST_WORKERS processes each taking whole modules (most tests
# wait on brokers and processes, so three share two cores well), the slow ones first
# (tests/conftest.py). `make pytest PYTEST_WORKERS=0` runs them in one process.
PYTEST_WORKERS ?= 3

test:
	$(MAKE) --jobs=4 lint typecheck imports pytest

lint: $(INSTALLED)
	$(PY) -m ruff check worker harness tests bench demo

typecheck: $(INSTALLED)
	$(PY) -m mypy

# The layers of pyproject.toml's [tool.importlinter]: no module imports from a layer above its own.
imports: $(INSTALLED)
	$(VENV)/bin/lint-imports

pytest: $(INSTALLED) $(HELM) $(PROMTOOL)
	$(PY) -m pytest --numprocesses=$(PYTEST_WORKERS) --dist=loadfile --no-loadscope-reorder --durations=20

$(HELM):
	GOBIN=$(CURDIR)/.cache/bin GOFLAGS=-mod=mod go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

$(PROMTOOL):
	GOBIN=$(CURDIR)/.cache/bin GOFLAGS=-mod=mod go install github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION)

demo: $(INSTALLED)
	$(PY) -m demo

# docs/configuration.md, rendered from the settings model in worker/config/ (tests/test_docs.py
# fails when the committed page differs).
docs: $(INSTALLED)
	$(PY) -m worker.config_reference --write docs/configuration.md

# The CPU benchmarks (BENCHMARKS.md): preprocessing alone, the output's Avro encoding and the input's
# decode, the S3 GET (boto3's and the worker's, against s3proxy, and what each benchmark S3 server
# costs), the worker end to end next to model-only, the fetch + decode stage with one decode worker
# and two, and where one worker's CPU goes (a real broker and gofakes3, a few minutes in all).
bench: $(INSTALLED)
	$(PY) bench/preprocess_bench.py
	$(PY) bench/encode_bench.py
	$(PY) bench/decode_bench.py
	$(PY) bench/fetch_bench.py
	$(PY) bench/pipeline_bench.py
	$(PY) bench/decoder_bench.py
	$(PY) bench/decoder_bench.py --source memory
	$(PY) bench/cpu_bench.py

bench-cpu: bench

# What bench/gpu_check.sh needs on a CUDA host without network (wheels, an S3 server binary, the photo
# corpus) into .cache/gpu-wheels; run it where PyPI and the Go module proxy are reachable, then copy
# that folder to the GPU machine. Needs Go.
gpu-wheels: $(INSTALLED)
	bash bench/fetch_gpu_wheels.sh

# requirements.lock: every package the image installs, pinned with its hashes, for Linux x86_64 and
# CPython 3.11, resolved from pyproject.toml's [project.dependencies] by uv (metadata only: the
# CUDA wheels are not downloaded). Run it after changing a dependency; tests/test_install.py fails
# while the lock and pyproject.toml disagree. uv comes into .cache/uv, not into the project.
LOCK_FLAGS := --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	--custom-compile-command "make lock"

$(UV):
	$(PYTHON) -m venv .cache/uv
	.cache/uv/bin/pip install --quiet uv==$(UV_VERSION)

lock: $(UV)
	$(UV) pip compile pyproject.toml $(LOCK_FLAGS) --output-file requirements.lock

# The CUDA 12.8 variant's lock (make image CUDA=12.8 uses it when present): torch and torchvision
# from the PyTorch index's cu128 builds, the rest from PyPI. Needs that index to be reachable.
lock-cu128: $(UV)
	$(UV) pip compile pyproject.toml $(LOCK_FLAGS) --torch-backend cu128 --output-file requirements-cu128.lock

# The worker image (Dockerfile), tagged with the package version: the Helm chart's default image
# is clip-embedding-worker:<appVersion>. Needs Docker with BuildKit; nothing else here does.
#   CUDA=12.8                  torch's CUDA 12.8 build on a CUDA 12.8 base (default 13.2)
#   PRETRAINED=...             the weights baked into /opt/models: MODEL_NAME's OpenCLIP tag, or
#                              s3://bucket/key; default openai, the chart's config.model.pretrained
#                              (modelCache.type=image); empty for an image without weights
#   PYTHON_DIGEST, CUDA_DIGEST the base images' digests (sha256:...), see the Dockerfile
IMAGE ?= clip-embedding-worker
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE_TAG ?= $(VERSION)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
SOURCE ?= $(shell git remote get-url origin 2>/dev/null)
CUDA ?= 13.2
MODEL_NAME ?= ViT-B-32
PRETRAINED ?= openai
WEIGHTS_SHA256 ?=
PYTHON_DIGEST ?=
CUDA_DIGEST ?=

image:
	docker build -t $(IMAGE):$(IMAGE_TAG) \
		--build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) --build-arg SOURCE=$(SOURCE) \
		--build-arg CUDA=$(CUDA) $(if $(CUDA_DIGEST),--build-arg CUDA_$(subst .,_,$(CUDA))_DIGEST=$(CUDA_DIGEST)) \
		$(if $(PYTHON_DIGEST),--build-arg PYTHON_DIGEST=$(PYTHON_DIGEST)) \
		--build-arg MODEL_NAME=$(MODEL_NAME) --build-arg PRETRAINED=$(PRETRAINED) \
		--build-arg WEIGHTS_SHA256=$(WEIGHTS_SHA256) .

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
