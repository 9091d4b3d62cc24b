# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make run    create .venv, install polyroute, run the main job
#   make test   create .venv, install polyroute with dev extras, lint, type-check and run the tests
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck benchmark clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/polyroute run

test: $(STAMP) lint typecheck
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check router training features tests
	$(BIN)/ruff format --check router training features tests
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

benchmark: $(STAMP)
	$(BIN)/polyroute benchmark --dataset ../shared/data/routerbench --json experiments/results/routerbench.json --plots experiments/results/routerbench
	$(BIN)/polyroute benchmark --dataset ../shared/data/mmlu_pro --json experiments/results/mmlu_pro.json --plots experiments/results/mmlu_pro

clean:
	rm -rf $(VENV) runs mlruns mlflow.db
