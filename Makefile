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

.PHONY: install system-deps serve test sample-data weights score-weights comparison lint clean

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

# The DICOMweb/OHIF tests need a DICOMweb store and a browser: Debian's orthanc, orthanc-dicomweb and chromium.
# Installed with apt when missing and this runs as root (CI); otherwise those tests skip and say what to install.
SYSTEM_PACKAGES := orthanc orthanc-dicomweb chromium
system-deps:
	@if command -v Orthanc >/dev/null && command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing $(SYSTEM_PACKAGES) (apt)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			$(SYSTEM_PACKAGES) >/dev/null; \
	else echo "note: $(SYSTEM_PACKAGES) not installed (needs root: apt-get install $(SYSTEM_PACKAGES)); the DICOMweb/OHIF tests will skip"; fi

test: install system-deps $(CACHE)/wheels/.fetched
	$(PY) -m pytest

sample-data: install
	$(PY) -m liverseg phantoms --out sample-data/Dataset001_LiverPhantom --num-train 8 --num-test 4 --seed 0 \
		--ircadb-out sample-data/3Dircadb-phantom --ircadb-cases 1

# The recipe of the shipped default weights (see bundles/liver_ct_seg/docs/README.md): 24 phantoms that are not
# the sample data (seed 1000) plus the real LiTS case 117, trained on the CPU in two phases (40 epochs at lr 1e-3,
# then 24 epochs at lr 3e-4 from the best phase-1 checkpoint); about 1 h on 2 idle cores.
WEIGHTS_DATA := $(CACHE)/weights-data/Dataset002_LiverTrain
WEIGHTS_RUN := $(CACHE)/weights-run
WEIGHTS_ARGS := --meta_file configs/metadata.json --logging_file configs/logging.conf \
	--dataset_dir ../../$(WEIGHTS_DATA) --val_interval 4 --num_folds 6 --batch_size 1 --num_samples 2 \
	--roi_size "[64,64,48]" --early_stop_patience 5 --lr_patience 3 --num_workers 0
weights: install $(CACHE)/wheels/.fetched
	rm -rf $(WEIGHTS_DATA) $(WEIGHTS_RUN)
	$(PY) -m liverseg phantoms --out $(WEIGHTS_DATA) --num-train 24 --num-test 0 --seed 1000
	$(PY) -m liverseg convert lits117 $(WEIGHTS_DATA) --cache-dir $(CACHE)/wheels
	cd bundles/liver_ct_seg && ../../$(PY) -m monai.bundle run --config_file configs/train.json $(WEIGHTS_ARGS) \
		--output_dir ../../$(WEIGHTS_RUN)/log1 --ckpt_dir ../../$(WEIGHTS_RUN)/models1 --max_epochs 40
	cd bundles/liver_ct_seg && ../../$(PY) -m monai.bundle run --config_file configs/train.json $(WEIGHTS_ARGS) \
		--output_dir ../../$(WEIGHTS_RUN)/log2 --ckpt_dir ../../$(WEIGHTS_RUN)/models2 --max_epochs 24 \
		--learning_rate 0.0003 --pretrained_checkpoint ../../$(WEIGHTS_RUN)/models1/model.pt
	cp $(WEIGHTS_RUN)/models2/model.pt bundles/liver_ct_seg/models/model.pt
	@echo "new weights in bundles/liver_ct_seg/models/model.pt; score them with: make score-weights"

# Score the shipped weights on the held-out sample phantoms (imagesTs/labelsTs), in each case's own geometry.
SCORE := $(CACHE)/score-weights
score-weights: install
	rm -rf $(SCORE)
	cd bundles/liver_ct_seg && ../../$(PY) -m monai.bundle run --config_file configs/inference.json \
		--meta_file configs/metadata.json --logging_file configs/logging.conf \
		--dataset_dir ../../sample-data/Dataset001_LiverPhantom --output_dir ../../$(SCORE)/pred
	$(PY) -m liverseg evaluate $(SCORE)/pred sample-data/Dataset001_LiverPhantom/labelsTs --out $(SCORE)

# The comparison run of issue 5 (configs/comparison.json: four networks + window / histogram-equalization ablations,
# same budget, 3 seeds) on the sample phantoms; resumes where it stopped; the report is copied to docs/comparison/.
# Another dataset: make comparison COMPARE_ARGS="--dataset path/to/DatasetXXX" (see `liverseg compare --help`).
COMPARE_OUT := $(CACHE)/comparison
comparison: install
	$(PY) -m liverseg compare --out $(COMPARE_OUT) $(COMPARE_ARGS)
	mkdir -p docs/comparison
	cp -r $(COMPARE_OUT)/comparison.md $(COMPARE_OUT)/comparison.csv $(COMPARE_OUT)/comparison_per_seed.csv \
		$(COMPARE_OUT)/curves.png $(COMPARE_OUT)/pictures $(COMPARE_OUT)/provenance.json docs/comparison/

lint: install
	$(PY) -m flake8 liverseg apps bundles tests
	$(PY) -m isort --check-only liverseg apps bundles tests

clean:
	rm -rf $(VENV) $(CACHE) .pytest_cache
