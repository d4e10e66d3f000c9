# The two commands of the README. Each sets up a fresh machine first (idempotent, offline-safe).
PYTHON ?= python3
# accelerate launch gives a lone process one CPU thread unless told otherwise; the toy run uses every core.
THREADS ?= $(shell $(PYTHON) -c "import os; print(len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count())")
export HF_HUB_OFFLINE ?= 1

.PHONY: setup toy test

# torch first: a CPU build where none is installed (an unpinned torch would pull a multi-GB CUDA build).
setup:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "torch==2.13.0"
	@$(PYTHON) -m pip install -q -e ".[dev]"

# The main job: VDL on the built-in toy world (shipped CLIP and VAE), a VDLPipeline in outputs/vdl-toy.
toy: setup
	accelerate launch --num_cpu_threads_per_process $(THREADS) train.py $(ARGS)

test: setup
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)
