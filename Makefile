# One way in: `make serve` starts the service on the built-in model, `make test` runs the tests.
# Both create .venv and install the project into it the first time.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: install serve predict test test-slow gpu-wheels gpu-check clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

serve: install
	$(PY) -m api

predict: install
	$(PY) -m detector.predict --out predictions.json $(IMAGES)

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

# make gpu-check: the GPU check (bench/gpu_check.py), the one command to run when a CUDA machine is lent.
# It runs the CUDA tests (pytest -m cuda), measures each speed mode's drift on the GPU, runs the engine
# benchmark at batch 1/4/8/16 and the server benchmark at concurrency 1-64 with batching on and off, and
# writes bench/results/gpu_check.json, gpu_engine.json and gpu_server.json (commit them). Its steps share
# 8 minutes; `timeout` kills it past GPU_CHECK_TIMEOUT_S whatever happens (what was measured by then is
# written already). Without CUDA it runs a tiny CPU mode into build/gpu-check-tiny (CI runs it, so that it
# cannot rot). Which Python runs it, first that applies:
# - GPU_CHECK_PY=... names one that has the dependencies;
# - .whl/ exists (`make gpu-wheels` here, then carried to a GPU machine without internet) and GPU_PYTHON
#   (python3) has torch: the wheels are installed with pip --no-index --target GPU_SITE, and GPU_PYTHON runs
#   the check from the tree with PYTHONPATH=GPU_SITE:. (no install of the project; the server it starts
#   inherits PYTHONPATH);
# - python3, where it has the dependencies already;
# - else .venv, created from PyPI like `make install` (torch's default Linux wheel carries CUDA).
GPU_CHECK_TIMEOUT_S ?= 570
GPU_CHECK_PY ?=
GPU_PYTHON ?= python3
GPU_SITE ?= /tmp/site
GPU_CHECK_DEPS := import torch, torchvision, fastapi, uvicorn, httpx, pycocotools, safetensors, pytest, pydantic_settings, multipart

# make gpu-wheels: the wheels the lent GPU machine lacks (bench/gpu_wheels.py), downloaded into .whl/.
gpu-wheels:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) bench/gpu_wheels.py

gpu-check:
	@py="$(GPU_CHECK_PY)"; \
	if [ -z "$$py" ] && [ -d .whl ] && $(GPU_PYTHON) -c 'import torch, torchvision' >/dev/null 2>&1; then \
		echo "$(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $(GPU_SITE) .whl/*.whl"; \
		$(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
			--target $(GPU_SITE) .whl/*.whl || exit 1; \
		export PYTHONPATH="$(GPU_SITE):$$PWD$${PYTHONPATH:+:$$PYTHONPATH}"; py="$(GPU_PYTHON)"; \
		echo "PYTHONPATH=$$PYTHONPATH"; \
		$$py -c '$(GPU_CHECK_DEPS)' || { echo "gpu-check: $$py lacks a dependency that .whl/ does not bring (bench/gpu_wheels.py)"; exit 1; }; \
	fi; \
	if [ -z "$$py" ] && python3 -c '$(GPU_CHECK_DEPS)' >/dev/null 2>&1; then py=python3; fi; \
	if [ -z "$$py" ]; then $(MAKE) install && py=$(PY); fi; \
	echo "timeout --kill-after=10 $(GPU_CHECK_TIMEOUT_S) $$py bench/gpu_check.py"; \
	timeout --kill-after=10 $(GPU_CHECK_TIMEOUT_S) $$py bench/gpu_check.py

clean:
	rm -rf $(VENV) build *.egg-info
