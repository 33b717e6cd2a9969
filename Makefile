# The two commands a newcomer needs:  make demo  and  make test  (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= data
PORT ?= 8000
HOST ?= 127.0.0.1
VOCABULARY := src/imgsearch/assets/vocabulary/.built

.PHONY: demo serve setup test lint vocabulary clean

demo: setup ## set everything up, ingest the demo images, serve on http://localhost:8000
	$(BIN)/imgsearch ingest demo --data-dir $(DATA)
	$(BIN)/imgsearch serve --data-dir $(DATA) --host $(HOST) --port $(PORT)

serve: setup
	$(BIN)/imgsearch serve --data-dir $(DATA) --host $(HOST) --port $(PORT)

setup: $(VENV)/.installed $(VOCABULARY)

$(VENV)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { echo "Python's venv is missing: on Debian, apt install python3-venv"; exit 1; }
	test -x $(BIN)/pip || $(PYTHON) -m venv --clear $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[local,build,dev]"
	touch $@

# The packages only need to be there (|): reinstalling them does not change the vocabulary.
$(VOCABULARY): scripts/build_vocabulary.py src/imgsearch/assets/imagenet_classes.tsv | $(VENV)/.installed
	$(BIN)/python scripts/build_vocabulary.py --out src/imgsearch/assets/vocabulary
	touch $@

vocabulary: $(VOCABULARY)

test: setup lint ## install everything (Chromium included), lint, and run every test
	scripts/install-chromium.sh
	$(BIN)/python -m pytest -n 2 --dist loadgroup

.PHONY: bundles
bundles: setup ## Lambda layers and function bundles for python3.12 on x86_64, in build/lambda
	$(BIN)/python layers/build.py --out build/lambda

lint: $(VENV)/.installed ## ruff, mypy strict on src/imgsearch, the layers (pyproject.toml)
	$(BIN)/ruff check src tests functions scripts bench layers
	$(BIN)/ruff format --check src tests functions scripts bench layers
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) build src/imgsearch/assets/vocabulary
