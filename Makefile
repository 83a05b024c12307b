# The two commands of the README:  make demo  /  make test
# Both create .venv (Python 3.11+) and install EdgeFleet into it first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test install bench lint lock

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "EdgeFleet needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -U pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/edgefleet demo

test: install
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=30

bench: install
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

# ruff and mypy, as .ci/run runs them. mypy reads the folders as edgefleet.* through links.
lint: install
	$(BIN)/ruff check .
	mkdir -p .typecheck/edgefleet
	for d in protocol agent compression cloud; do ln -sfn ../../$$d .typecheck/edgefleet/$$d; done
	$(BIN)/mypy

# Re-resolve every dependency within the bounds of pyproject.toml and write constraints.txt.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q -U pip
	.lock-venv/bin/pip install -q '.[dev]'
	{ echo "# The exact versions the tests run with (Python 3.11, x86_64). Written by 'make lock' from the bounds"; \
	  echo "# in pyproject.toml; 'make' and .ci/run install with 'pip install -c constraints.txt'."; \
	  .lock-venv/bin/pip freeze --all --exclude-editable | grep -vi '^edgefleet'; } > constraints.txt
	rm -rf .lock-venv
