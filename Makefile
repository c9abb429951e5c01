# `make demo` and the test targets create .venv with Python 3.12 when it is missing, install the package, then run.
#   make test        unit, contract, equality and refusal tests (the check before every commit)
#   make test-long   whole runs: end-to-end CLI runs, baselines, experiments, audits, several processes
#   make test-all    both (what CI runs)
# The tests run in two pytest-xdist workers (PYTEST_WORKERS=1 for one); see tests/conftest.py.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q --durations=30 -n $(PYTEST_WORKERS)

.PHONY: demo test test-long test-all clean

$(PY):
	"$$(scripts/find-python312)" -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/jaxunlearn demo

test: $(STAMP)
	$(PYTEST) --dist worksteal -m "not slow"

test-long: $(STAMP)
	$(PYTEST) --dist loadscope -m slow

test-all: test test-long

clean:
	rm -rf $(VENV)
