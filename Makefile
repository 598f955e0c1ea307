VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

install: $(STAMP)

# torch is installed first, pinned, so no dependency can pull a CUDA build; re-runs are no-ops until pyproject changes
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"
	touch $(STAMP)

demo: install
	$(VENV)/bin/vtprune demo --out demo-out

test: install
	$(PY) -m pytest -n 2 tests

clean:
	rm -rf $(VENV) demo-out
