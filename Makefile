# Two commands for a fresh machine (see README.md):
#   make serve   install everything, then start the MONAI Label server with the liver app on the sample data
#   make serve-pacs   the same with a local Orthanc (DICOMweb) holding the sample DICOM study, for OHIF
#   make test    install everything, then run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
STUDIES ?= sample-data/Dataset001_LiverPhantom/imagesTs
CACHE := .cache

.PHONY: install system-deps serve serve-pacs test sample-data weights deepedit-weights score-weights comparison lint clean zoo-bundle real-eval

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	@echo "installing liverseg and its Python dependencies into $(VENV) (setup.cfg; about 8.5 GB, mostly PyTorch;"
	@echo "  a few minutes); nothing is installed outside $(VENV) by this step"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet "pip>=23"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

serve: install
	$(PY) -m liverseg serve --host $(HOST) --port $(PORT) --studies $(STUDIES)

# OHIF mode: Orthanc (apt-get install orthanc orthanc-dicomweb) started with its own config and storage under
# .cache/serve-pacs/orthanc, the sample DICOM study uploaded, the server on its DICOMweb URL; prints the OHIF address.
# Ctrl-C stops both. Without Orthanc it says what to install (make serve works in NIfTI-folder mode).
PACS_PORT ?= 8042
serve-pacs: install
	$(PY) -m liverseg serve --pacs --host $(HOST) --port $(PORT) --pacs-port $(PACS_PORT)

# The real LiTS-117 case ships inside a PyPI wheel; fetch it once so its tests run.
$(CACHE)/wheels/.fetched: | install
	@echo "downloading the PyPI wheel liver-ct-segmentation-package==1.6.0 into $(CACHE)/wheels (real LiTS case 117, for its tests)"
	$(PY) -m pip download --quiet --no-deps liver-ct-segmentation-package==1.6.0 -d $(CACHE)/wheels
	touch $@

# The DICOMweb/OHIF tests need a DICOMweb store and a browser: Debian's orthanc, orthanc-dicomweb and chromium.
# Installed with apt when missing and this runs as root (CI); otherwise those tests skip and say what to install.
# dicom3tools' dciodvfy validates the DICOM SEG / SR the toolkit writes (tests/dicom/test_seg_sr.py).
SYSTEM_PACKAGES := orthanc orthanc-dicomweb chromium dicom3tools
# SKIP_SYSTEM=1 installs nothing system-wide (those tests then skip).
system-deps:
	@if [ -n "$(SKIP_SYSTEM)" ] && [ "$(SKIP_SYSTEM)" != 0 ]; then \
		echo "SKIP_SYSTEM=$(SKIP_SYSTEM): not installing $(SYSTEM_PACKAGES); the DICOMweb/OHIF tests will skip"; \
	elif command -v Orthanc >/dev/null && command -v chromium >/dev/null && command -v dciodvfy >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing system packages with apt-get, as root: $(SYSTEM_PACKAGES) (about 400 MB)"; \
		echo "  why: the DICOMweb/OHIF tests need a DICOMweb store (Orthanc) and a browser (chromium)"; \
		echo "  SKIP_SYSTEM=1 make test installs nothing system-wide; those tests then skip"; \
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
	$(PY) -m liverseg.zoo large-files
	@echo "new weights in bundles/liver_ct_seg/models/model.pt; score them with: make score-weights"

# The interactive (DeepEdit-type) model's weights: train_deepedit.json over train.json on the same data as `make weights`,
# started from the shipped automatic weights, simulated clicks (0-6 rounds per batch); best checkpoint by the
# validation Dice after 3 clicks. Written to $(DEEPEDIT_RUN); DEEPEDIT_PROMOTE=1 copies them to models/deepedit/.
DEEPEDIT_RUN := $(CACHE)/deepedit-run
DEEPEDIT_EPOCHS ?= 60
deepedit-weights: install $(CACHE)/wheels/.fetched
	rm -rf $(WEIGHTS_DATA) $(DEEPEDIT_RUN)
	$(PY) -m liverseg phantoms --out $(WEIGHTS_DATA) --num-train 24 --num-test 0 --seed 1000
	$(PY) -m liverseg convert lits117 $(WEIGHTS_DATA) --cache-dir $(CACHE)/wheels
	cd bundles/liver_ct_seg && ../../$(PY) -m monai.bundle run \
		--config_file "['configs/train.json','configs/train_deepedit.json']" $(WEIGHTS_ARGS) \
		--output_dir ../../$(DEEPEDIT_RUN)/log --ckpt_dir ../../$(DEEPEDIT_RUN)/models --max_epochs $(DEEPEDIT_EPOCHS) \
		--early_stop_patience 8
	@if [ -n "$(DEEPEDIT_PROMOTE)" ] && [ "$(DEEPEDIT_PROMOTE)" != 0 ]; then \
		mkdir -p bundles/liver_ct_seg/models/deepedit && \
		cp $(DEEPEDIT_RUN)/models/model.pt bundles/liver_ct_seg/models/deepedit/model.pt.tmp && \
		mv bundles/liver_ct_seg/models/deepedit/model.pt.tmp bundles/liver_ct_seg/models/deepedit/model.pt; \
	else echo "interactive weights in $(DEEPEDIT_RUN)/models/model.pt (DEEPEDIT_PROMOTE=1 to serve them by default)"; fi

# Score the shipped weights on the held-out sample phantoms (imagesTs/labelsTs), in each case's own geometry.
SCORE := $(CACHE)/score-weights
score-weights: install
	rm -rf $(SCORE)
	cd bundles/liver_ct_seg && ../../$(PY) -m monai.bundle run --config_file configs/inference.json \
		--meta_file configs/metadata.json --logging_file configs/logging.conf \
		--dataset_dir ../../sample-data/Dataset001_LiverPhantom --output_dir ../../$(SCORE)/pred
	$(PY) -m liverseg evaluate $(SCORE)/pred sample-data/Dataset001_LiverPhantom/labelsTs --out $(SCORE)

# The real-CT table of issue 14 (model card, "Real CT"): converts the real 3D-IRCADb-01 patients of REAL_DATA
# (CC BY-NC-ND: read in place, converted into .cache only, never committed), runs the default bundle through its
# inference config, scores, draws overlays into $(CACHE)/real-eval and exits 1 when a target of the issue is missed;
# skips with a one-line reason when REAL_DATA is absent. REAL_EVAL_ARGS=--report-only reports without failing.
REAL_DATA ?= ../shared/data/3Dircadb1-real
real-eval: install
	$(PY) -m liverseg real-eval --source $(REAL_DATA) --out $(CACHE)/real-eval $(REAL_EVAL_ARGS)

# The comparison run of issue 5 (configs/comparison.json: four networks + window / histogram-equalization ablations,
# same budget, 3 seeds) on the sample phantoms; resumes where it stopped; the report is copied to docs/comparison/.
# Another dataset: make comparison COMPARE_ARGS="--dataset path/to/DatasetXXX" (see `liverseg compare --help`).
COMPARE_OUT := $(CACHE)/comparison
comparison: install
	$(PY) -m liverseg compare --out $(COMPARE_OUT) $(COMPARE_ARGS)
	mkdir -p docs/comparison
	cp -r $(COMPARE_OUT)/comparison.md $(COMPARE_OUT)/comparison.csv $(COMPARE_OUT)/comparison_per_seed.csv \
		$(COMPARE_OUT)/curves.png $(COMPARE_OUT)/pictures $(COMPARE_OUT)/provenance.json docs/comparison/

# The bundle as it would be submitted to the MONAI model zoo: .cache/zoo-bundle/{models/liver_ct_seg,ci/unit_tests,
# liver_ct_seg.zip}, weights referenced by URL + sha256 in large_files.yml (not included); then the zoo's checks that
# run offline (verify_bundle min/full on the CPU, schema, black/isort/flake8-bugbear, pre-commit hooks, unit tests).
zoo-bundle: install
	$(PY) -m liverseg.zoo build --out $(CACHE)/zoo-bundle
	$(PY) -m liverseg.zoo check --out $(CACHE)/zoo-bundle --unit-tests

# The zoo's own CI scripts on that bundle, in a local clone of the model zoo (git clone
# https://github.com/Project-MONAI/model-zoo DIR; its models/ is written into): each hook of its .pre-commit-config.yaml
# run directly (tools in $(CACHE)/zoo-tools-venv, pinned as the zoo pins them), its code-format checks,
# ci/verify_bundle.py -m min and -m full with CUDA hidden, and the GPU-path functions on the CPU with n=1.
ZOO_CHECKOUT ?=
ZOO_TOOLS := $(CACHE)/zoo-tools-venv
ZOO_TOOL_PACKAGES := pre-commit-hooks==5.0.0 black==24.10.0 isort==5.13.2 flake8==7.5.0 flake8-bugbear==26.10.27 \
	flake8-comprehensions==3.17.0 flake8-executable==2.1.3 pep8-naming==0.15.1
$(ZOO_TOOLS)/.installed:
	$(PYTHON) -m venv $(ZOO_TOOLS)
	$(ZOO_TOOLS)/bin/pip install --quiet $(ZOO_TOOL_PACKAGES)
	touch $@
.PHONY: zoo-ci
zoo-ci: install $(ZOO_TOOLS)/.installed
	@if [ -z "$(ZOO_CHECKOUT)" ]; then echo "zoo-ci: set ZOO_CHECKOUT=DIR, a clone of https://github.com/Project-MONAI/model-zoo"; exit 2; fi
	$(PY) -m liverseg.zoo build --out $(CACHE)/zoo-bundle
	$(PY) -m liverseg.zoo zoo-ci --zoo-checkout $(ZOO_CHECKOUT) --out $(CACHE)/zoo-bundle --tools-venv $(ZOO_TOOLS)

lint: install
	$(PY) -m flake8 liverseg apps bundles tests
	$(PY) -m isort --check-only liverseg apps bundles tests

clean:
	rm -rf $(VENV) $(CACHE) .pytest_cache
