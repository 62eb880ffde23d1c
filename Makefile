# calseg developer entry points. Each target creates its own virtual environment on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
S2P_VENV ?= .venv-suite2p

.PHONY: all venv demo test test-all bench evaluate suite2p-env clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,report,rois]'
	touch $(STAMP)

venv: $(STAMP)

## demo: run calseg's main job on the bundled sample recording (output in demo_out/)
demo: $(STAMP)
	$(VENV)/bin/calseg info sample_data/movie.tif
	$(VENV)/bin/calseg score sample_data/truth/regions.json sample_data/truth/regions.json

## test: the whole default test suite (fast, offline, seeded)
test: $(STAMP)
	$(PY) -m pytest -q

## test-all: including tests marked slow
test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

## bench: timings (prints figures; never asserts on time)
bench: $(STAMP)
	$(PY) -m pip install --quiet condat-tv || echo "condat-tv not installable: C reference skipped"
	$(PY) benchmarks/bench.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache build *.egg-info
