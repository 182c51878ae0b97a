# make demo: create .venv if missing, install metapl into it, run the main job (digits, 3 methods).
# make test: install the dev extras and run the whole test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-dev lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/metapl demo --out runs/demo

test: install-dev
	@$(BIN)/python -m pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo 'make test: pytest collected no tests' >&2; exit 1; fi; exit $$status

lint: install-dev
	$(BIN)/ruff check metapl tests benchmarks

clean:
	rm -rf runs .pytest_cache .ruff_cache
