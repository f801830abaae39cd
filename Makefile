# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Set-up is idempotent: a stamp file records that the venv matches
# requirements.txt, pyproject.toml and the torch/DALI builds chosen for this
# machine's NVIDIA driver, so a second run costs nothing.

SHELL := /bin/bash
PY_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
APT_PKGS := libopencv-dev libturbojpeg0-dev pkg-config
DEMO_DIR ?= demo
# Which torch/DALI builds: auto reads the driver with nvidia-smi (setup/cuda_choice.py,
# README "GPU machines"); 12, 13 or cpu skip that, e.g. on a login node without the GPU.
# TORCH_INDEX: a mirror of PyTorch's cu126 index for the CUDA 12 builds.
CUDA ?= auto
TORCH_INDEX ?=
CHOICE := $(VENV)/.cuda-choice
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k convert -x"`.
PYTEST_ARGS ?=
# Test processes (pytest-xdist, work-stealing: a few tests take minutes and
# would otherwise leave one worker idle at the end). A test that runs past
# TEST_TIMEOUT seconds fails with every thread's stack (pytest-timeout): a hang
# is a failure, not a stuck CI.
TEST_WORKERS ?= 2
TEST_TIMEOUT ?= 900

.PHONY: setup apt FORCE demo test test-all bench mutation lint clean help

help:
	@echo "make demo      set up, then generate + convert the synthetic dataset, pretrain SimSiam and SimSiam+AugSelf, report"
	@echo "make test      set up, then run the fast test suite (CPU)"
	@echo "make test-all  also the slow tests (CIFAR-10 from ../shared/data)"
	@echo "make bench     conversion, loader, aux-head and end-to-end benchmarks into benchmarks/RESULTS.md"
	@echo "make mutation  mutation score of the core modules (mutmut; slow, one mutant at a time)"
	@echo "make lint      ruff"
	@echo "make clean     remove the venv and generated data"

setup: $(STAMP)

# FFCV compiles against OpenCV and libjpeg-turbo headers found with pkg-config.
apt:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing apt packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 1; \
	  else \
	    echo "FFCV needs system packages. Run:  sudo apt-get install -y$$missing   then re-run make."; exit 1; \
	  fi; \
	fi

# The choice is made on every run and rewritten only when it changes, so a changed
# driver or CUDA= reinstalls and an unchanged one costs nothing. A venv set up before
# the choice existed holds the default set: a default choice leaves it as it is.
$(CHOICE): FORCE
	@mkdir -p $(VENV)
	@$(PY_BOOT) setup/cuda_choice.py --cuda '$(CUDA)' --torch-index '$(TORCH_INDEX)' > $@.new \
	  || { rm -f $@.new; exit 1; }
	@if cmp -s $@.new $@; then rm -f $@.new; \
	else if [ ! -e $@ ] && [ -e $(STAMP) ] && grep -qx -- '-r' $@.new; then touch -r $(STAMP) $@.new; fi; \
	  mv $@.new $@; fi

$(STAMP): requirements.txt pyproject.toml $(CHOICE) | apt
	@test -x $(PY) || $(PY_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	@sed -n 's/^# //p' $(CHOICE)
	$(PY) -m pip install -q $$(grep -v '^#' $(CHOICE)) \
	  || { echo "set-up: pip could not install this choice: $$(sed -n 's/^# set-up: //p' $(CHOICE))" >&2; exit 1; }
	# ffcv's build imports numpy, so it builds against the venv's numpy, not an isolated one.
	$(PY) -m pip install -q --no-build-isolation ffcv==1.0.2
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

demo: setup
	$(PY) -m tools.demo --out $(DEMO_DIR)

test: setup
	$(VENV)/bin/ruff check -q .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal --timeout $(TEST_TIMEOUT) $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest -q -m "" $(PYTEST_ARGS)

bench: setup
	$(PY) -m benchmarks.convert
	$(PY) -m benchmarks.loader --n-images 1024 --batch 64 --repeats 5
	$(PY) -m benchmarks.heads --method simsiam --backbone small --size 32 --batch 256 \
		--proj 512 --steps 10 --warmup 3 --repeats 5
	$(PY) -m benchmarks.e2e --quick
	$(PY) -m benchmarks.feeder

# Mutation testing of the core modules, each against its own fast tests
# (benchmarks/mutation.py; scratch copies in build/mutation/). Not in `make test`:
# it takes minutes per module. `make mutation MUTATION_ARGS="losses optim"` runs some.
MUTATION_ARGS ?=
MUTATION_STAMP := $(VENV)/.mutation-stamp

$(MUTATION_STAMP): requirements-mutation.txt $(STAMP)
	$(PY) -m pip install -q -r requirements-mutation.txt
	@touch $(MUTATION_STAMP)

mutation: setup $(MUTATION_STAMP)
	$(PY) -m benchmarks.mutation $(MUTATION_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
