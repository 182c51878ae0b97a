# make demo: create .venv if missing, install metapl into it, run the main job (digits, 3 methods).
# make test: install the dev extras and run the whole test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast install install-dev lint clean bench-accuracy bench-speed bench-shards bench-threads bench-scale

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

# make bench-accuracy: every method on digits, 2 seeds, 1,000 steps (--quick; docs/results.md has the full commands).
bench-accuracy: install
	$(BIN)/python benchmarks/accuracy.py --quick --jobs 2

# make bench-speed: step time and peak memory of supervised, UDA and every MPL mode against MPL's floor, on
# WRN-28-2 and the small CNN, 2 CPU threads (about 10 minutes; BENCH_ARGS=--quick for a short run). With
# KEK_DIR=<checkout of kekmodel/MPL-pytorch> it also times the peer beside metapl (benchmarks/peer.py).
bench-speed: install
	$(BIN)/python benchmarks/speed.py $(BENCH_ARGS)

# make bench-shards: unlabeled images per second from WebDataset shards against the folder reader (20,000 images,
# 2 workers), and the main process's memory from 10 to 10,000 shards (docs/scale.md#measured; about 10 minutes).
bench-shards: install-dev
	$(BIN)/python benchmarks/shard_speed.py $(BENCH_ARGS)

# make bench-threads: step time at 1 thread against all cores for every CPU preset, on a quiet and on a busy machine
# (a busy-loop process on one core); a Markdown table and benchmarks/results/threads.json (docs/performance.md#threads;
# about 4 minutes on 2 cores; BENCH_ARGS=--quick for about 2).
bench-threads: install
	$(BIN)/python benchmarks/threads.py $(BENCH_ARGS)

# make bench-scale: metapl shard and metapl label (from shards) against their floors, the main process's memory of label
# and of Reduced MPL training from 10,000 to 1,000,000 sharded images, and the label store's bytes per image
# (docs/scale.md#measured-scale; about 50 minutes and 3 GB of temporary files on 2 cores; BENCH_ARGS=--quick: 20,000 images).
bench-scale: install-dev
	$(BIN)/python benchmarks/scale.py $(BENCH_ARGS)

# Tests run in one process per core (pytest-xdist), at most 4: each is a single-threaded PyTorch (tests/conftest.py).
PYTEST_PARALLEL := -n auto --maxprocesses 4

test: install-dev
	@$(BIN)/python -m pytest $(PYTEST_PARALLEL); status=$$?; \
	if [ $$status -eq 5 ]; then echo 'make test: pytest collected no tests' >&2; exit 1; fi; exit $$status

# make test-fast: the tests not marked slow (no end-to-end runs or subprocesses), for quick checks while editing.
test-fast: install-dev
	@$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not slow"; status=$$?; \
	if [ $$status -eq 5 ]; then echo 'make test-fast: pytest collected no tests' >&2; exit 1; fi; exit $$status

# make lint: ruff (style, imports, bugbear) over the code and tests, and mypy's type check of metapl/ and tests/
# (Python 3.10, the lowest supported, with check_untyped_defs: the bodies of unannotated tests are checked too).
lint: install-dev
	$(BIN)/ruff check metapl tests benchmarks
	$(BIN)/ruff format --check metapl tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf runs .pytest_cache .ruff_cache
