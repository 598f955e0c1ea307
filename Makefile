VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
# lmms-eval goes in without its declared dependencies (they include torchvision and timm, which break transformers on
# a CPU machine); the `lmms` extra holds what its core really imports
LMMS_EVAL := lmms-eval==0.7.3

TORCH_CPU := torch==2.13.0
TRANSFORMERS_FLOOR := 5.17.0
FLOOR_VENV ?= .venv-floor
# the transformers floor's smoke subset: equivalence with stock HF, decoding through generate's own settings and
# logits processors (private transformers functions), loading, the official files, the CLI's errors.
# Every family runs whose FamilySpec.min_transformers the floor meets (Molmo2 needs 5.23: it is not in 5.17, and the
# tests' family list leaves it out there); Qwen3-VL, LLaVA-OneVision and InternVL pass on 5.17 as on 5.23.
FLOOR_TESTS := tests/test_equivalence.py tests/test_generation.py tests/test_loading.py tests/runtime/test_executor.py \
	tests/methods/glimpse/test_official.py tests/methods/glimpse/test_plus.py tests/methods/glimpse/test_runtime.py \
	tests/adapters/test_qwen3_vl.py tests/adapters/test_qwen3_5.py tests/adapters/test_families.py

.PHONY: install lmms demo test test-floor clean

install: $(STAMP)

# torch is installed first, pinned, so no dependency can pull a CUDA build; re-runs are no-ops until pyproject changes
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_CPU)
	$(PIP) install -q -e ".[test,lmms]"
	$(PIP) install -q --no-deps $(LMMS_EVAL)
	touch $(STAMP)

# the lmms-eval plugin (`lmms-eval --model vtprune`); part of install, named for the README
lmms: install

demo: install
	$(VENV)/bin/vtprune demo --out demo-out

test: install
	$(PY) -m pytest -n 2 tests

# the lowest supported transformers in a scratch venv (CPU torch first, as install does), then a fast smoke subset
$(FLOOR_VENV)/.installed: pyproject.toml
	test -x $(FLOOR_VENV)/bin/python || python3 -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/pip install -q $(TORCH_CPU)
	$(FLOOR_VENV)/bin/pip install -q -e ".[test]" "transformers==$(TRANSFORMERS_FLOOR)"
	touch $@

test-floor: $(FLOOR_VENV)/.installed
	$(FLOOR_VENV)/bin/python -c "import transformers as t; assert t.__version__ == '$(TRANSFORMERS_FLOOR)', t.__version__"
	$(FLOOR_VENV)/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torchvision') and 'torchvision!')"
	$(FLOOR_VENV)/bin/python -m pytest -n 2 -q -p no:cacheprovider $(FLOOR_TESTS)

clean:
	rm -rf $(VENV) $(FLOOR_VENV) demo-out
