# Two entry points (see README): `make pipeline` and `make test`. Both set everything up first.
#
# Offline? Point the download at a local copy of the archive:
#   make pipeline CIFAR_ARCHIVE=../shared/data/cifar-10/cifar-10-python.tar.gz \
#                 CIFAR_SHA256=74d36e93f7daa4ade4876a51e01bcd2ab1c202d05eb6cb36d9105e3144bc10c4

PYTHON ?= python3
VENV ?= .venv
# Extras of pyproject.toml to install: cpu (TensorFlow CPU), jax-gpu (Keras on JAX with CUDA 12), jax, dev.
EXTRAS ?= cpu,dev
BIN := $(VENV)/bin
# uv installs the environment from uv.lock; it is itself installed from PyPI with pip, beside the venv's
# packages (not among them, so an exact `uv sync` leaves it alone).
UV_VERSION ?= 0.13.9
UV := $(VENV)/uv/bin/uv
comma := ,
UV_EXTRAS := $(foreach extra,$(subst $(comma), ,$(EXTRAS)),--extra $(extra))
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))
export UV_PYTHON_DOWNLOADS := never
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false

CIFAR_ARCHIVE ?=
CIFAR_SHA256 ?=
PYTEST_ARGS ?=
# pytest-xdist workers for `make test` (auto: one per CPU); each test file runs whole on one worker, so its
# module-scoped fixtures (a deployed checkout, a Prefect server) are built once, and files start in the order
# tests/conftest.py sorts them (slowest first), not xdist's (most tests first).
TEST_WORKERS ?= auto
PYTEST_XDIST = -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
# A folder of wheels (make wheelhouse) to install from instead of the package index.
WHEELHOUSE ?=

.PHONY: setup lock wheelhouse pipeline quick plots-diff exp-show bench lint test test-fast clean

setup: $(VENV)/.setup-stamp

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --target $(VENV)/uv uv==$(UV_VERSION) > $(VENV)/pip.log 2>&1 \
		|| (cat $(VENV)/pip.log; exit 1)

# Exactly the versions in uv.lock for EXTRAS (packages outside it are removed); --locked refuses a lock that
# no longer matches pyproject.toml (run `make lock` after editing its dependencies). --compile-bytecode writes
# every package's .pyc files now: uv leaves them out by default, and where PYTHONDONTWRITEBYTECODE is set (many
# container images set it) nothing writes them later, so each stage process would compile TensorFlow's Python
# again before it trains a step.
ifeq ($(WHEELHOUSE),)
$(VENV)/.setup-stamp: pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --quiet --compile-bytecode $(UV_EXTRAS)
	touch $@
else
# Offline, from a folder `make wheelhouse` filled: no index at all. Where the wheelhouse left packages to the
# target (system-packages.txt), the venv sees those of PYTHON: its system's site-packages and, when PYTHON is
# itself a venv (a GPU image's python3 often is), that venv's too, which --system-site-packages alone skips.
# A Python without ensurepip gets a venv without pip, which then runs the pip PYTHON has.
$(VENV)/.setup-stamp: pyproject.toml uv.lock $(WHEELHOUSE)/requirements.txt
ifneq ($(wildcard $(WHEELHOUSE)/system-packages.txt),)
	$(PYTHON) -m venv --system-site-packages $(VENV) || $(PYTHON) -m venv --system-site-packages --without-pip $(VENV)
	$(PYTHON) -c "$$PARENT_SITE" > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/parent.pth"
else
	$(PYTHON) -m venv $(VENV)
endif
	$(BIN)/python -m pip install --quiet --no-index --find-links $(WHEELHOUSE) \
		-r $(WHEELHOUSE)/requirements.txt setuptools
	$(BIN)/python -m pip install --quiet --no-index --no-deps --no-build-isolation -e .
	touch $@
endif

# The site-packages folders of a Python that is a venv (none for one that is not), one a line: a .pth file of them
# puts them on another venv's path after its own.
define PARENT_SITE
import sys, sysconfig
if sys.prefix != sys.base_prefix:
    print(*dict.fromkeys(sysconfig.get_path(k) for k in ("purelib", "platlib")), sep="\n")
endef
export PARENT_SITE

# Every wheel of uv.lock for EXTRAS into WHEELHOUSE (default wheelhouse/), for another host:
#   make wheelhouse WHEELHOUSE=/tmp/wh EXTRAS=jax-gpu TARGET_PYTHON=3.12 TARGET_PLATFORM=manylinux_2_28_x86_64 \
#                   TARGET_FREEZE=gpu-host-freeze.txt     # packages the target already has are left out
TARGET_PYTHON ?=
TARGET_PLATFORM ?=
TARGET_FREEZE ?=
# A wheelhouse made earlier for the same target and extras: the wheels come from it, with no index (seconds).
WHEELS_FROM ?=
wheelhouse: | $(UV)
	$(BIN)/python -m tools.wheelhouse $(or $(WHEELHOUSE),wheelhouse) --uv $(UV) --extras $(EXTRAS) \
		$(if $(TARGET_PYTHON),--python-version $(TARGET_PYTHON)) $(if $(TARGET_PLATFORM),--platform $(TARGET_PLATFORM)) \
		$(if $(TARGET_FREEZE),--have $(TARGET_FREEZE)) $(if $(WHEELS_FROM),--wheels-from $(WHEELS_FROM))

# Re-resolve every dependency to its newest release within pyproject.toml's ranges and rewrite uv.lock.
lock: | $(UV)
	$(UV) lock --upgrade

# DVC without its warnings about outputs of stages that have never run (tools/quiet_dvc.py).
DVC := python -m tools.quiet_dvc
# `dvc exp run -S` writes its settings into params.yaml (reformatting it); the file is put back afterwards,
# so params.yaml keeps meaning the defaults. The experiment keeps its own copy: `dvc exp apply <name>`.
SAVED_PARAMS := $(VENV)/params.yaml.before-exp
define keeping_params
(cp params.yaml $(SAVED_PARAMS); $(1); status=$$?; cp $(SAVED_PARAMS) params.yaml; exit $$status)
endef
OFFLINE_DATA := $(if $(CIFAR_ARCHIVE),-S 'data.url=$(CIFAR_ARCHIVE)' -S 'data.sha256=$(CIFAR_SHA256)')

# The defaults of params.yaml (offline: as an experiment with the local archive as data.url), and the quick CPU
# setting (configs/quick-cpu.yaml) as the named experiment quick-cpu; both leave params.yaml meaning the defaults.
RUN_DEFAULTS = $(if $(CIFAR_ARCHIVE),$(call keeping_params,$(DVC) exp run $(OFFLINE_DATA)),$(DVC) repro)
# An earlier quick-cpu of the same commit keeps its record under a dated name (DVC refuses a second one).
RUN_QUICK = { $(DVC) exp rename quick-cpu quick-cpu-$$(date -u +%Y%m%d-%H%M%S) >/dev/null 2>&1 || true; } && \
	$(call keeping_params,$(DVC) exp run -n quick-cpu $$(python -m tools.overrides configs/quick-cpu.yaml) \
	$(OFFLINE_DATA)) && echo "make quick: experiment quick-cpu done, its results are in the workspace; params.yaml" \
	"is unchanged (the defaults). Apply its settings: dvc exp apply quick-cpu."

# The defaults where a GPU is usable; without one, where they take hours, the quick setting -- unless FULL=1.
# `dvc repro` itself always runs params.yaml as written.
FULL ?=
pipeline: setup
ifeq ($(FULL),)
	@if python -m tasks.core.devices --has-gpu; then $(RUN_DEFAULTS); else echo "make pipeline: no GPU here, so" \
		"the quick CPU setting runs (make quick); the defaults, sized for a GPU: make pipeline FULL=1"; $(RUN_QUICK); fi
else
	@$(RUN_DEFAULTS)
endif

# The quick CPU setting wherever you are; add CIFAR_ARCHIVE=... offline.
quick: setup
	@$(RUN_QUICK)

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
	python bench/bench_time_to_accuracy.py
	python bench/bench_pipeline.py

# ruff: lint (pycodestyle, pyflakes, bugbear, pyupgrade) and format, configured in pyproject.toml.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Every test (what CI runs). The tests marked e2e (the real `dvc repro`, make targets) or server (a Prefect
# server or worker) start first, so the slowest files do not end the run on one worker.
test: lint
	$(BIN)/python -m pytest $(PYTEST_XDIST) $(PYTEST_ARGS)

# The fast tier, for use while working: every test but the e2e and server ones.
test-fast: lint
	$(BIN)/python -m pytest $(PYTEST_XDIST) -m "not e2e and not server" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
