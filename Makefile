# Every target creates .venv on first use and reinstalls when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up down status test test-fast gen lint breaking bench-mesh bench-ingest bench-gateway bench-kpi bench-bi clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

up: $(STAMP)
	$(BIN)/towerco up

down: $(STAMP)
	$(BIN)/towerco down

status: $(STAMP)
	$(BIN)/towerco status

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m 'not slow' $(PYTEST_ARGS)

gen: $(STAMP)
	$(BIN)/python scripts/gen.py

lint: $(STAMP)
	$(BIN)/python scripts/buf.py lint
	$(BIN)/ruff check .

# buf breaking (FILE rules) of proto/ against a git ref: make breaking AGAINST=origin/main
AGAINST ?= main
breaking: $(STAMP)
	$(BIN)/python scripts/buf.py breaking $(AGAINST)

bench-mesh: $(STAMP)
	$(BIN)/python -m bench.mesh

bench-ingest: $(STAMP)
	$(BIN)/python -m bench.ingest

bench-gateway: $(STAMP)
	$(BIN)/python -m bench.gateway

bench-kpi: $(STAMP)
	$(BIN)/python -m bench.kpi

bench-bi: $(STAMP)
	$(BIN)/python -m bench.bi

clean:
	rm -rf $(VENV) .towerco .pytest_cache build *.egg-info
