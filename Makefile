# The two commands of the README:  make demo  /  make test
# Both create .venv (Python 3.11+) and install EdgeFleet into it first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test install bench lint

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "EdgeFleet needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/edgefleet demo

test: install
	$(BIN)/python -m pytest

bench: install
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

# ruff and mypy, as .ci/run runs them. mypy reads the folders as edgefleet.* through links.
lint: install
	$(BIN)/ruff check .
	mkdir -p .typecheck/edgefleet
	for d in protocol agent compression cloud; do ln -sfn ../../$$d .typecheck/edgefleet/$$d; done
	$(BIN)/mypy
