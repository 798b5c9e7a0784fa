# The two commands the README starts with: `make demo` and `make test`.
# Both (re)create the virtual environment when pyproject files change.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.frip-installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml adapters/frip-adapter-acme/pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "frip-engine needs Python 3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[he,arcface,demo,dev]"
	# insightface pins the GUI opencv-python; its real needs are in the arcface extra.
	$(BIN)/python -m pip install --quiet --no-deps "insightface==2.1"
	$(BIN)/python -m pip install --quiet -e adapters/frip-adapter-acme
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/frip demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) results .pytest_cache .mypy_cache .ruff_cache
