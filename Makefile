# One way in: `make serve` starts the service on the built-in model, `make test` runs the tests.
# Both create .venv and install the project into it the first time.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: install serve predict test test-slow clean

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

clean:
	rm -rf $(VENV) build *.egg-info
