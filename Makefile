# The two commands a newcomer needs:  make demo  and  make test  (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= data
PORT ?= 8000
HOST ?= 127.0.0.1
VOCABULARY := src/imgsearch/assets/vocabulary/.built

.PHONY: demo serve setup test test-fast lint vocabulary clean

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

# The tiers (markers in pyproject.toml, chosen in tests/conftest.py): the fast tier is every test
# without the real model, Chromium, the Lambda bundles or a slow marker; `make test` runs it
# first and then the rest, so each test runs once.
NOT_FAST := model or browser or bundles or slow
# --dist loadfile: a file's tests share one process and its module fixtures (a server on the
# demo photos, the bundles). Not loadgroup: pytest-xdist 3.8 cannot group on pytest 9 (it tags a
# test through an attribute pytest 9 no longer reads: pytest-xdist issue 1386), so its groups
# were ignored.
PYTEST := $(BIN)/python -m pytest -n 2 --dist loadfile --durations=15

# The Lambda layers' pip installs (a minute the first time) are made before the tests, as
# checkov's: tests/cloud/test_bundles.py then builds the bundles in seconds.
test: setup lint ## install everything (Chromium, checkov, Lambda layers), lint, run every test (fast tier first)
	scripts/install-chromium.sh
	scripts/install-checkov.sh
	$(BIN)/python layers/build.py --python-layers
	$(PYTEST) -m "not ($(NOT_FAST))"
	$(PYTEST) -m "$(NOT_FAST)"

test-fast: setup ## the fast tier: no model, no browser, no bundles (about two minutes)
	$(PYTEST) -m "not ($(NOT_FAST))"

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
