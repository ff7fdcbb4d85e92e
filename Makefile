# Two commands for a fresh machine (see README.md):
#   make serve   install everything, then start the MONAI Label server with the liver app on the sample data
#   make test    install everything, then run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
STUDIES ?= sample-data/Dataset001_LiverPhantom/imagesTs
CACHE := .cache

.PHONY: install serve test sample-data lint clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet "pip>=23"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

serve: install
	$(PY) -m liverseg serve --host $(HOST) --port $(PORT) --studies $(STUDIES)

# The real LiTS-117 case ships inside a PyPI wheel; fetch it once so its tests run.
$(CACHE)/wheels/.fetched: | install
	$(PY) -m pip download --quiet --no-deps liver-ct-segmentation-package==1.6.0 -d $(CACHE)/wheels
	touch $@

test: install $(CACHE)/wheels/.fetched
	$(PY) -m pytest

sample-data: install
	$(PY) -m liverseg phantoms --out sample-data/Dataset001_LiverPhantom --num-train 8 --num-test 4 --seed 0 \
		--ircadb-out sample-data/3Dircadb-phantom --ircadb-cases 1

lint: install
	$(PY) -m flake8 liverseg apps bundles tests
	$(PY) -m isort --check-only liverseg apps bundles tests

clean:
	rm -rf $(VENV) $(CACHE) .pytest_cache
