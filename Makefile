# groundloop: `make demo` sets everything up and runs the main job; `make test` sets up and runs the tests.
PYTHON := .venv/bin/python
export PYTHONPATH := $(CURDIR)

.PHONY: setup system venv demo test test-fast bench clean

setup: system venv

system:
	@bash scripts/setup_system.sh

venv:
	@bash scripts/setup_venv.sh

demo: setup
	$(PYTHON) -m pipeline.cli demo

test: setup
	$(PYTHON) -m pytest -q -ra

test-fast: setup
	$(PYTHON) -m pytest -q -m "not slow"

bench: setup
	$(PYTHON) benchmarks/transport.py --quick

clean:
	rm -rf .venv .pytest_cache .hypothesis
