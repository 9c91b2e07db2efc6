# One command to set up and run the demo, one to set up and run the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test lint clean-demo

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	bash scripts/system_deps.sh
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q $(TORCH_PINS)
	$(VENV)/bin/pip install -q -e '.[dev,studio]'
	touch $@

demo: setup
	bash scripts/demo.sh

lint: setup
	$(VENV)/bin/ruff check .

# JIT_STUDIO_REQUIRED=1: the studio's browser test fails instead of skipping when Chromium or the extra is missing
test: setup
	$(VENV)/bin/ruff check .
	JIT_STUDIO_REQUIRED=1 $(PY) -m pytest
