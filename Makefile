# Every target creates .venv on first use and reinstalls when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up down status test test-fast gen lint typecheck sdk-wheel breaking bench-mesh bench-ingest bench-gateway bench-kpi bench-detect bench-bi bench-noc bench-incident-latency clean

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

# The SDK distribution (towerco-sdk: sdk/ + gen/towerco) as a wheel in dist/
sdk-wheel: $(STAMP)
	$(BIN)/python -m pip wheel --no-deps --no-build-isolation -w dist ./sdk
	rm -rf sdk/build sdk/*.egg-info

lint: $(STAMP)
	$(BIN)/python scripts/buf.py lint
	$(BIN)/ruff check .
	$(BIN)/mypy

# mypy --strict on sdk/, mesh/ and the domain modules ([tool.mypy] in pyproject.toml)
typecheck: $(STAMP)
	$(BIN)/mypy

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

bench-noc: $(STAMP)
	$(BIN)/python -m bench.noc

clean:
	rm -rf $(VENV) .towerco .pytest_cache build *.egg-info

bench-detect: $(STAMP)
	$(BIN)/python -m bench.detect

bench-incident-latency: $(STAMP)
	$(BIN)/python -m bench.incident_latency
