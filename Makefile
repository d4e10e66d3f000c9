# The two commands of the README. Each sets up a fresh machine first (idempotent, offline-safe).
PYTHON ?= python3
# accelerate launch gives a lone process one CPU thread unless told otherwise; the toy run uses every core.
THREADS ?= $(shell $(PYTHON) -c "import os; print(len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count())")
export HF_HUB_OFFLINE ?= 1
# Waiting OpenMP threads (libgomp, torch's on Linux) spin 1000 times, not ~300 000, before they sleep: with
# other processes on the cores, long spinning burns time slices waiting for a descheduled partner and steps
# take many times longer; sleeping at once (OMP_WAIT_POLICY=PASSIVE) does as well there but makes an idle
# machine's steps 1.6 times slower, this 1.2 times (examples/busy_machine.py; docs/performance.md).
export GOMP_SPINCOUNT ?= 1000

# The torch that `make setup` installs where none is installed; any pip requirement and options, e.g.
#   make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"   (the CPU build, ~200 MB)
# Given on the command line (or in the environment) it is installed even over an installed torch.
# The default pin resolves to the CPU build only where a CPU wheel is offered first (a local wheel
# folder, PyTorch's CPU index); from the public index alone it is the CUDA build on Linux, several GB.
TORCH ?= torch==2.13.0

.PHONY: setup toy test test-oldest

setup:
	@if [ "$(origin TORCH)" = "command line" ] || [ "$(origin TORCH)" = "environment" ] || ! $(PYTHON) -c "import torch" 2>/dev/null; then \
		echo "setup: installing $(TORCH) (pip install $(TORCH))"; \
		$(PYTHON) -m pip install $(TORCH) || exit 1; \
	fi
	@$(PYTHON) -c "import torch; print(f'setup: torch {torch.__version__}, ' + (f'built for CUDA {torch.version.cuda}' if torch.version.cuda else 'CPU-only build') + '; choose another with make setup TORCH=...')"
	@if $(PYTHON) -c "import importlib.metadata as m; m.distribution('vdl-diffusion')" 2>/dev/null; then \
		echo "setup: vdl-diffusion is installed; checking its dependencies (pip install -q -e '.[dev]')"; \
		$(PYTHON) -m pip install -q -e ".[dev]"; \
	else \
		echo "setup: installing vdl-diffusion and its dependencies: diffusers, transformers, accelerate, datasets, pytest, ... (pip install -e '.[dev]'; minutes the first time)"; \
		$(PYTHON) -m pip install -e ".[dev]"; \
	fi

# The main job: VDL on the built-in toy world (shipped CLIP and VAE), a VDLPipeline in outputs/vdl-toy.
# A rerun resumes an interrupted run from its last checkpoint (a finished one only re-exports);
# ARGS are train.py's flags, e.g. make toy ARGS="--max_train_steps 500" for a quick look.
# The method: VDL with the text-bank prior over the toy world's shipped corpus of unpaired captions, each
# image's 8 best matches, and half-way one E-step, in which the UNet picks among each image's candidates,
# balanced half-way back to the prior's use of each text (docs/text_bank.md: it beats the clip prior, the
# top 64 and no E-step at both worlds; unbalanced it draws position better but costs FD, fully balanced the
# reverse);
# TOY_ARGS= trains train.py's defaults.
TOY_ARGS ?= --prior text-bank --posterior_family bank_mixture --bank_top_k 8 --e_step_at 0.5 --e_step_balance 0.5
toy: setup
	accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		--num_cpu_threads_per_process $(THREADS) train.py --resume_from_checkpoint latest $(TOY_ARGS) $(ARGS)

test: setup
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

# The tests against the oldest diffusers, transformers, accelerate, datasets, ... that pyproject.toml
# allows (.ci/oldest.txt), in .venv-oldest: the lower end of the supported range. Needs the network.
test-oldest:
	$(PYTHON) -m venv .venv-oldest
	.venv-oldest/bin/pip install -q $(TORCH)
	.venv-oldest/bin/pip install -q -c .ci/oldest.txt -e ".[dev]"
	.venv-oldest/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)
