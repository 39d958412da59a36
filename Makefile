# alignkd — every target creates and fills .venv itself when it is missing.
#   make demo                      the whole pipeline end to end on the embedded toy world
#   make test                      ruff, then the full test suite (what CI runs)
#   make teacher-cache [SUBSET=short|long] [WORKFLOW=...]
#   make student-train [SUBSET=short|long] [WORKFLOW=...]
VENV     ?= .venv
PY       := $(VENV)/bin/python
ALIGNKD  := $(VENV)/bin/alignkd
WORKFLOW ?= workflows/toy.yaml
SUBSET   ?= short
# CPU build from local disk; on a GPU machine set TORCH_SPEC to your CUDA torch (or to "" to keep it).
TORCH_SPEC ?= torch==2.13.0
STAMP    := $(VENV)/.alignkd-installed

.PHONY: venv test test-fast demo teacher-cache student-train world data reproduce bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if [ -n "$(TORCH_SPEC)" ]; then $(PY) -m pip install -q "$(TORCH_SPEC)"; fi
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

# lint first (ruff, configured in pyproject.toml; about a second), then the tests
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -m "not slow"

demo: $(STAMP)
	$(ALIGNKD) demo --workflow $(WORKFLOW)

world: $(STAMP)
	$(ALIGNKD) toy world --workflow $(WORKFLOW)

data: $(STAMP)
	$(ALIGNKD) data build --workflow $(WORKFLOW)

teacher-cache: $(STAMP)
	$(ALIGNKD) teacher-dump --workflow $(WORKFLOW) --subset $(SUBSET)

student-train: $(STAMP)
	$(ALIGNKD) student-train --workflow $(WORKFLOW) --subset $(SUBSET) --stage all

reproduce: $(STAMP)
	$(ALIGNKD) reproduce --workflow $(WORKFLOW)

bench: $(STAMP)
	$(PY) -m benchmarks.run --out results/bench

clean:
	rm -rf runs results
