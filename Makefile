# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make run    create .venv, install polyroute, run the main job
#   make test   create .venv, install polyroute with dev extras, lint, type-check and run the tests
#               (all but those marked slow; `make test-all` runs those too, as CI does)
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-all lint typecheck benchmark clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# uv (from PyPI) installs in well under a minute what pip takes minutes for; pip if uv fails
$(STAMP): pyproject.toml | $(BIN)/python
	if $(BIN)/pip install --quiet uv && $(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[dev]'; \
	then :; else \
	  echo "uv unavailable: installing with pip"; \
	  $(BIN)/pip install --quiet --upgrade pip && $(BIN)/pip install --quiet -e '.[dev]'; \
	fi
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/polyroute run

# the tests run in parallel, one test file per worker at a time (module fixtures built once);
# the slow tests (marked slow) are left to `make test-all`, which CI runs (.ci/run)
PYTEST := $(BIN)/pytest -q -n auto --maxprocesses 4 --dist loadfile

test: $(STAMP) lint typecheck
	$(PYTEST) -m "not slow"

test-all: $(STAMP) lint typecheck
	$(PYTEST)

lint: $(STAMP)
	$(BIN)/ruff check router training features tests
	$(BIN)/ruff format --check router training features tests
	$(BIN)/lint-imports

# mypy --strict on the packages and the tests (the files of [tool.mypy] in pyproject.toml)
typecheck: $(STAMP)
	$(BIN)/mypy

benchmark: $(STAMP)
	$(BIN)/polyroute benchmark --dataset ../shared/data/routerbench --json experiments/results/routerbench.json --plots experiments/results/routerbench
	$(BIN)/polyroute benchmark --dataset ../shared/data/mmlu_pro --json experiments/results/mmlu_pro.json --plots experiments/results/mmlu_pro

clean:
	rm -rf $(VENV) runs mlruns mlflow.db
