# The two commands of README.md. Everything else is a means to them.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.txloom-installed

.PHONY: run test lint bench clean

# The dropins are copied into site-packages by the editable install: edits reinstall.
$(STAMP): pyproject.toml examples/txloom-extras/pyproject.toml twisted/plugins/*.py \
		examples/txloom-extras/twisted/plugins/*.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet -e examples/txloom-extras
	touch $(STAMP)

## make run: start txloom's all-in-one node on embedded defaults (data under ./var)
run: $(STAMP)
	mkdir -p var
	$(BIN)/twistd --nodaemon --pidfile= txloom --data var

## make test: lint, then the whole suite
test: $(STAMP)
	$(BIN)/ruff check src tests bench twisted examples
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench twisted examples
	$(BIN)/ruff format --check src tests bench twisted examples

bench: $(STAMP)
	for b in bench/*_bench.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build dist .pytest_cache .hypothesis twisted/plugins/dropin.cache
