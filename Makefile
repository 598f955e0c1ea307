VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
# lmms-eval goes in without its declared dependencies (they include torchvision and timm, which break transformers on
# a CPU machine); the `lmms` extra holds what its core really imports
LMMS_EVAL := lmms-eval==0.7.3

.PHONY: install lmms demo test clean

install: $(STAMP)

# torch is installed first, pinned, so no dependency can pull a CUDA build; re-runs are no-ops until pyproject changes
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test,lmms]"
	$(PIP) install -q --no-deps $(LMMS_EVAL)
	touch $(STAMP)

# the lmms-eval plugin (`lmms-eval --model vtprune`); part of install, named for the README
lmms: install

demo: install
	$(VENV)/bin/vtprune demo --out demo-out

test: install
	$(PY) -m pytest -n 2 tests

clean:
	rm -rf $(VENV) demo-out
