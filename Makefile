# Two commands on a fresh machine: `make demo` and `make test`. Both build the virtualenv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Rebuilt whenever pyproject.toml changes.
INSTALLED := $(VENV)/.installed

.PHONY: test demo lint typecheck pytest bench-cpu gpu-wheels clean

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -c "import harness.kafka_broker as k; k.ensure_jars()"
	touch $@

test: $(INSTALLED) lint typecheck pytest

lint: $(INSTALLED)
	$(PY) -m ruff check worker harness tests bench demo

typecheck: $(INSTALLED)
	$(PY) -m mypy

pytest: $(INSTALLED)
	$(PY) -m pytest

demo: $(INSTALLED)
	$(PY) -m demo

bench-cpu: $(INSTALLED)
	$(PY) bench/preprocess_bench.py
	$(PY) bench/pipeline_bench.py

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
