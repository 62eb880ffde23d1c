# calseg developer entry points. Each target creates its own virtual environment on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
S2P_VENV ?= .venv-suite2p

.PHONY: all venv demo test test-all bench evaluate suite2p-env clean

all: test

# the dask extra is installed so that the test of --scheduler on a real LocalCluster runs
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,nwb,dask]'
	touch $(STAMP)

venv: $(STAMP)

## demo: run calseg's main job on the bundled sample recording (output in demo_out/) and score it
demo: $(STAMP)
	$(VENV)/bin/calseg info sample_data/movie.tif
	$(VENV)/bin/calseg run sample_data/movie.tif -o demo_out --force
	$(VENV)/bin/calseg score sample_data/truth demo_out

## test: the whole default test suite (fast, offline, seeded)
test: $(STAMP)
	$(PY) -m pytest -q

## test-all: including tests marked slow
test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

## bench: timings (prints figures; never asserts on time): micro-benchmarks, then calseg run (without
## and with rigid motion correction) and Suite2p (without and with registration, when .venv-suite2p
## exists) on 512x512 recordings of 1,000, 3,000 and 10,000 frames; BENCH_ARGS=--quick for a short
## run, e.g. BENCH_ARGS="--no-micro --size 128x128 --frames 200,400"
bench: $(STAMP) $(VENV)/.condat-tried
	$(PY) benchmarks/bench.py $(BENCH_ARGS)

# the C reference for the TV benchmark, tried once per environment (it is not on every index)
$(VENV)/.condat-tried: $(STAMP)
	$(PY) -m pip install --quiet condat-tv 2>/dev/null || echo "condat-tv not installable: C reference skipped"
	touch $@

## evaluate: accuracy table on simulated recordings and spikefinder, beside Suite2p/OASIS when
## their environment exists (make suite2p-env); EVAL_ARGS=--quick for a short run
evaluate: $(STAMP)
	$(PY) benchmarks/evaluate.py $(EVAL_ARGS)

## suite2p-env: Suite2p 1.1.0 (CPU) and OASIS in their own environment, .venv-suite2p
suite2p-env:
	bash scripts/suite2p_env.sh

clean:
	rm -rf $(VENV) demo_out .pytest_cache build *.egg-info
