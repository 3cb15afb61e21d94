# The README's two commands: `make demo` and `make test`. Each sets itself up
# from a fresh clone: a virtual environment in .venv that reuses packages the
# machine already has (--system-site-packages) and installs what is missing,
# with torch pinned by constraints.txt so no CUDA build is pulled.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test bench setup clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv --system-site-packages $(VENV)
	$(PIP) install -c constraints.txt "$(TORCH_SPEC)"
	$(PIP) install -c constraints.txt -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/adaptc compile specs/multitask.adapt --model llama
	$(BIN)/python examples/train_one_task.py

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
