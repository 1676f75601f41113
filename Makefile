# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv when it is missing and install what they need into it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow fuzz lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Re-install when pyproject.toml changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[dev,verify,experiments]"
	touch $(STAMP)

# The main job: train the default configuration on scikit-learn's bundled digits (no download),
# certify it, and write report.json, training.png and checkpoints into runs/demo (a fresh run).
demo: $(STAMP)
	rm -rf runs/demo
	$(PY) -m liplax.cli train --config default --out runs/demo
	$(PY) -m liplax.cli bound runs/demo

# One worker per core (at most 4); a test file stays on one worker so its fixtures run once.
XDIST := -n auto --maxprocesses 4 --dist loadfile

test: $(STAMP)
	$(PY) -m pytest $(XDIST) --durations=15

test-slow: $(STAMP)
	$(PY) -m pytest -m slow $(XDIST)

# Property-based soundness at 10,000 examples per property (hours on 2 cores; one file at a time).
FUZZ_FILES := tests/test_properties.py $(sort $(wildcard tests/test_fuzz_*.py))

fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest --hypothesis-show-statistics $(FUZZ_FILES)

lint: $(STAMP)
	$(PY) -m ruff check liplax tests benchmarks experiments

bench: $(STAMP)
	$(PY) benchmarks/conv_norms.py
	$(PY) benchmarks/verifiers.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
