# Two entry points (see README): `make pipeline` and `make test`. Both set everything up first.
#
# Offline? Point the download at a local copy of the archive:
#   make pipeline CIFAR_ARCHIVE=../shared/data/cifar-10/cifar-10-python.tar.gz \
#                 CIFAR_SHA256=74d36e93f7daa4ade4876a51e01bcd2ab1c202d05eb6cb36d9105e3144bc10c4

PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= cpu,dev
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false

CIFAR_ARCHIVE ?=
CIFAR_SHA256 ?=
PYTEST_ARGS ?=

.PHONY: setup pipeline quick plots-diff exp-show bench lint test clean

setup: $(VENV)/.setup-stamp

$(VENV)/.setup-stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip > $(VENV)/pip.log 2>&1 || (cat $(VENV)/pip.log; exit 1)
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]" >> $(VENV)/pip.log 2>&1 || (tail -50 $(VENV)/pip.log; exit 1)
	touch $@

pipeline: setup
	@TF_CPP_MIN_LOG_LEVEL=2 python -m tasks.core.devices
ifneq ($(CIFAR_ARCHIVE),)
	dvc exp run -S 'data.url=$(CIFAR_ARCHIVE)' -S 'data.sha256=$(CIFAR_SHA256)'
else
	dvc repro
endif

# The quick CPU setting (configs/quick-cpu.yaml) as a named DVC experiment; add CIFAR_ARCHIVE=... offline.
quick: setup
	dvc exp run -n quick-cpu $$(python -m tools.overrides configs/quick-cpu.yaml) \
		$(if $(CIFAR_ARCHIVE),-S 'data.url=$(CIFAR_ARCHIVE)' -S 'data.sha256=$(CIFAR_SHA256)')

# `dvc plots diff` rendered offline: make plots-diff REVS="HEAD~1 HEAD"
REVS ?=
plots-diff: setup
	python -m tools.plots_diff $(REVS)

# `dvc exp show` narrowed to the headline columns a reviewer compares (all of them: dvc exp show --csv).
EXP_COLUMNS ?= ^Experiment$$|^success$$|^(alexnet|vgg16)\.(test_accuracy|macro_f1|train_seconds|seed|epochs)$$
exp-show: setup
	dvc exp show --drop '.*' --keep '$(EXP_COLUMNS)'

bench: setup
	python bench/bench_data_stages.py
	python bench/bench_throughput.py
	python bench/bench_cpu_recipe_ablation.py
	python bench/bench_time_to_accuracy.py --recipes quick-cpu quick-cpu-half
	python bench/bench_pipeline.py

# ruff: lint (pycodestyle, pyflakes, bugbear, pyupgrade) and format, configured in pyproject.toml.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
