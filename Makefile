# The two commands a newcomer needs:
#   make train   set up, then a short 2-rank training run and an evaluation
#   make test    set up, then the whole test suite (make test-fast: the quick tier, for every edit)
# Both run launch/install.sh first (Open MPI, .venv, TensorFlow, Horovod from a cached build).

# The environment install.sh makes and everything runs in (launch/ and slurm/ read the same name).
HVD_CIFAR_VENV ?= .venv
export HVD_CIFAR_VENV := $(abspath $(HVD_CIFAR_VENV))
VENV_PYTHON := $(HVD_CIFAR_VENV)/bin/python
NP         ?= 2
STEPS      ?= 200
DATA_DIR   ?= data
TRAIN_DIR  ?= runs/train
TRAIN_FLAGS ?=
# Where there is no internet (like the machines this project is built on), `make train` trains
# on this JPEG copy of CIFAR-10 instead of downloading the official archive; it says so.
JPEG_DATA  ?= ../shared/data/cifar10-jpeg.tar.gz
PYTEST_ARGS ?=
BENCH_STEPS ?= 100
BENCH_REPEATS ?= 3

# Open MPI refuses to run as root unless both are set (containers and CI run as root).
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
# On Ctrl-C or a signal, mpirun stops its ranks within this many seconds (Open MPI's default
# is 1): rank 0 writes its checkpoint the moment SIGTERM reaches it, which takes far less, and a
# larger value keeps the ranks training longer after Ctrl-C (docs/results/test_suite.md).
export OMPI_MCA_odls_base_sigkill_timeout ?= 10

.PHONY: install train train-steps test test-fast data reproduce bench

install: $(HVD_CIFAR_VENV)/.installed

$(HVD_CIFAR_VENV)/.installed: launch/install.sh pyproject.toml
	bash launch/install.sh
	@touch $@

data: install
	$(eval DATA_STARTED := $(shell date +%s))
	@echo "make: phase 1 of 4, set-up: ready in $(call took,$(MAKE_STARTED)); phase 2 of 4: data"
	@if [ -d "$(DATA_DIR)/cifar-10-batches-bin" ]; then \
	  echo "make: using $(DATA_DIR)/cifar-10-batches-bin"; \
	elif [ -f "$(DATA_DIR)/cifar-10-binary.tar.gz" ] || [ ! -f "$(JPEG_DATA)" ]; then \
	  $(VENV_PYTHON) -m hvd_cifar.data download --data_dir "$(DATA_DIR)"; \
	else \
	  echo "make: no CIFAR-10 in $(DATA_DIR); converting the JPEG copy $(JPEG_DATA)"; \
	  $(VENV_PYTHON) -m hvd_cifar.data convert "$(JPEG_DATA)" "$(DATA_DIR)"; \
	fi

# make train's phases, timed: each recipe is expanded when it starts, so $(eval X := $(shell
# date +%s)) there records when that phase began; train-steps is the training phase alone.
MAKE_STARTED := $(shell date +%s)
took = $$(s=$$(( $$(date +%s) - $(1) )); [ $$s -ge 60 ] && echo "$$((s / 60)) min $$((s % 60)) s" || echo "$$s s")
# A step of 2 ranks x 128 images on 2 CPU cores (this project's machines): the estimate's basis.
CPU_MS_PER_STEP_2_CORES := 350

train: train-steps
	$(eval EVALUATION_STARTED := $(shell date +%s))
	@echo "make: phase 4 of 4: evaluating the newest checkpoint"
	$(VENV_PYTHON) -m hvd_cifar.evaluate --data_dir "$(DATA_DIR)" --checkpoint_dir "$(TRAIN_DIR)" --run_once
	@echo "make: evaluation took $(call took,$(EVALUATION_STARTED)); all of make train $(call took,$(MAKE_STARTED))"
	@echo "make: the run is in $(TRAIN_DIR) (checkpoints, train.log, eval.json). Next:"
	@echo "  $(HVD_CIFAR_VENV)/bin/tensorboard --logdir '$(TRAIN_DIR)'        # the curves"
	@echo "  make train STEPS=2000                                # train on from the checkpoint"
	@echo "  $(VENV_PYTHON) -m hvd_cifar.predict --checkpoint_dir '$(TRAIN_DIR)' IMAGE.png"
	@echo "  $(VENV_PYTHON) -m hvd_cifar.check --data_dir '$(DATA_DIR)'  # before a long run"

test: install
	bash tests/cluster/system_packages.sh
	$(VENV_PYTHON) -m pytest -ra --durations=25 $(PYTEST_ARGS) tests

train-steps: data
	$(eval TRAINING_STARTED := $(shell date +%s))
	@echo "make: data ready in $(call took,$(DATA_STARTED))"
	@echo "make: phase 3 of 4: training $(STEPS) steps on $(NP) ranks; estimate: about $$(( $(STEPS) * $(CPU_MS_PER_STEP_2_CORES) * 2 / $$(nproc) / 1000 + 20 )) s on this host's $$(nproc) CPU cores (seconds on GPUs); each log line says the time left"
	launch/local.sh -np $(NP) --data_dir "$(DATA_DIR)" \
	  --train_dir "$(TRAIN_DIR)" --max_steps $(STEPS) --log_frequency 20 $(TRAIN_FLAGS)
	@echo "make: training took $(call took,$(TRAINING_STARTED))"

# No launcher, no training process, no root, no ../shared (tests/conftest.py marks the others).
test-fast: install
	$(VENV_PYTHON) -m pytest -ra -m "not launcher and not trains and not root and not shared" \
	  $(PYTEST_ARGS) tests

# The tutorial's learning curve on real images (see docs/results/): DATA is a class-folder tree
# or its tar.gz, e.g. make reproduce DATA=../shared/data/cifar10-jpeg.tar.gz RANKS=2 STEPS=10000
# STEPS given on the command line counts here too; its default (200) is make train's.
REPRO_STEPS = $(if $(filter command line,$(origin STEPS)),$(STEPS),10000)
# make reproduce FROM=runs/train/run.json [OUT=runs/rerun]: redo a recorded run (hvd_cifar.rerun)
# and say whether it ends with the recorded weights.
reproduce: install
ifdef FROM
	$(VENV_PYTHON) -m hvd_cifar.rerun "$(FROM)" --train_dir "$(or $(OUT),runs/rerun)"
else
	RANKS=$(or $(RANKS),2) STEPS=$(REPRO_STEPS) bash launch/reproduce.sh $(DATA)
endif

# Throughput against plain Keras, Gloo vs MPI and MultiWorkerMirroredStrategy on this machine:
# bench/results.json, bench/results.md and bench/throughput.png (run it on an idle machine).
bench: install
	$(VENV_PYTHON) tools/bench_suite.py --out bench --steps $(BENCH_STEPS) --repeats $(BENCH_REPEATS)
