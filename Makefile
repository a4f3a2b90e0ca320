# Fresh machine: `make demo` or `make test`. Both create .venv and install the project first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned here (not in pyproject) so this machine takes the CPU wheel on disk, while the
# package itself accepts any recent torch for users elsewhere.
TORCH_PIN ?= torch==2.13.0

.PHONY: install browser demo test test-fast lint bench gpu-check clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: install
	$(VENV)/bin/rlhfkit demo

# The labelling page's browser test needs Debian's chromium (apt) and Playwright for Python (pip, also
# in the dev extra). Playwright's own browser download is never used. Where apt or pip cannot be
# used this target warns and carries on, and the browser test skips with its reason.
browser: install
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then \
		echo "[browser] installing chromium with apt-get"; \
		( apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null ) \
			|| echo "[browser] could not install chromium; the browser test will skip"; \
	fi
	@$(PY) -c "import playwright.sync_api" 2>/dev/null || $(PY) -m pip install -q playwright \
		|| echo "[browser] could not install playwright; the browser test will skip"

test: install browser
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check rlhfkit tests benchmarks

bench: install
	$(PY) benchmarks/run_all.py

# DDP, FSDP2, DeepSpeed ZeRO-3 (and vLLM rollouts) x sft, dpo, ppo, grpo on this machine's GPUs, under
# 10 minutes; without CUDA a CPU dry run (2 gloo processes; what needs CUDA is skipped, with why).
gpu-check: install
	$(PY) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) runs .pytest_cache
