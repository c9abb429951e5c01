# `make demo` and `make test` create .venv with Python 3.12 when it is missing, install the package, then run.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test clean

$(PY):
	"$$(scripts/find-python312)" -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/jaxunlearn demo

test: $(STAMP)
	$(PY) -m pytest -q --durations=30

clean:
	rm -rf $(VENV)
