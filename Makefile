# Two entry points, each sets up its own virtual environment (.venv) on a fresh machine.
#   make demo  - run the picker on the bundled simulated demo micrographs (output in demo_out/)
#   make test  - run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test setup

$(BIN)/relion_pixer: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(BIN)/relion_pixer

demo: setup
	$(BIN)/relion_pixer --in_mics test_data/demo/micrographs.star --o demo_out/ --particle_diameter 200 --write_maps

test: setup
	$(BIN)/python -m pytest -q
