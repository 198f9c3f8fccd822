# Two entry points: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.installed
# Spinning OpenMP threads slow a shared 2-core machine by an order of magnitude (see dmmd/__init__.py).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test bench venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first, pinned: a bare `torch` would pull a multi-GB CUDA build.
	$(PIP) install --quiet $(TORCH_PIN)
	$(PIP) install --quiet -e ".[test]"
	@if $(PIP) list 2>/dev/null | grep -qiE '^(nvidia-|triton )'; then \
		echo "error: CUDA packages were pulled into $(VENV); pin $(TORCH_PIN) first" >&2; exit 1; fi
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m dmmd.demo

# one process: about 275 CPU-s; two workers (PYTEST_ARGS="-n 2 --dist loadfile") finish sooner on two cores
# but spend about 10% more CPU (two collections, and the cores contend)
PYTEST_ARGS ?=
test: $(STAMP)
	$(PY) -m pytest tests $(PYTEST_ARGS)

# the cost benchmarks against their targets (15-20 minutes on 2 cores): benchmarks/results/summary.md
bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs/demo
