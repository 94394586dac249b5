# Two commands do all the set-up on a fresh machine (Python 3.10+ with venv):
#   make run    runs the gateway with the demo endpoints on port 5002
#   make test   runs the lint and the whole test suite
#   make bench  runs the benchmark (gateway vs direct; installs wrk when missing and run as root)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --editable .
	touch $(STAMP)

run: $(STAMP)
	$(PY) run_gateway.py $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m bench $(ARGS)

clean:
	rm -rf $(VENV) _cache .pytest_cache
