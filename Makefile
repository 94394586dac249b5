# Two commands do all the set-up on a fresh machine (Python 3.10+ with venv):
#   make run         runs the gateway with the demo endpoints on port 5002 (installs what serving needs:
#                    requirements.txt and endpoints/requirements.txt)
#   make test        runs the lint, builds the docs and runs the whole test suite (installs the rest)
#   make docs        builds the documentation site into site/ (strict: a broken link fails)
#   make docs-serve  serves it on http://127.0.0.1:8000 while you edit docs/
#   make bench       runs the benchmark (gateway vs direct; installs wrk when missing and run as root)
VENV ?= .venv
PY := $(VENV)/bin/python
SERVE := $(VENV)/.serve-installed
DEV := $(VENV)/.dev-installed
ENDPOINT_REQUIREMENTS := $(wildcard endpoints/requirements.txt)
export NO_MKDOCS_2_WARNING := 1
# Processes pytest runs the suite on (pytest-xdist): the integration tests mostly wait on the
# gateways they start, so more processes than cores pay; PYTEST_WORKERS=0 runs it in one.
PYTEST_WORKERS ?= 4

.PHONY: run test lint docs docs-serve bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(SERVE): $(PY) requirements.txt pyproject.toml $(ENDPOINT_REQUIREMENTS)
	$(PY) -m pip install --quiet -r requirements.txt $(addprefix -r ,$(ENDPOINT_REQUIREMENTS))
	$(PY) -m pip install --quiet --no-deps --editable .
	touch $(SERVE)

$(DEV): $(SERVE) requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(DEV)

run: $(SERVE)
	$(PY) run_gateway.py $(ARGS)

lint: $(DEV)
	$(PY) -m ruff check .

docs: $(DEV)
	$(PY) -m mkdocs build --strict --quiet

docs-serve: $(DEV)
	$(PY) -m mkdocs serve --strict

test: lint docs
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

bench: $(DEV)
	$(PY) -m bench $(ARGS)

clean:
	rm -rf $(VENV) _cache .pytest_cache site
