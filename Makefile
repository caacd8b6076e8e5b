# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv if missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export INSTANTFT_DATA ?= $(abspath ../shared/data)

.PHONY: demo test docs lint bench bench-peers reproduce clean device device-aarch64

$(STAMP): pyproject.toml constraints.txt setup.py $(wildcard csrc/*.c csrc/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/instantft demo

test: $(STAMP)
	@# mkdocs --quiet would also silence the warnings that --strict counts: print the log on failure only
	@log=$$(NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir build/site 2>&1) \
		|| { echo "$$log"; echo "mkdocs build --strict failed"; exit 1; }
	$(VENV)/bin/ruff check src tests studies
	$(PY) -m pytest

# the documentation site (MkDocs Material + mkdocstrings), built strictly into build/site
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir build/site

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests studies
	$(VENV)/bin/mypy src

# the package's own speed: every engine's fine-tune against LoRA-All, the fill
bench: $(STAMP)
	$(VENV)/bin/instantft bench --markdown results/bench.md

# the same engines beside other software (ONNX Runtime, PEFT, callgrind): studies, with the 'bench' extra
bench-peers: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	$(PY) studies/c_core.py --out results/c_core
	$(PY) studies/peft_lora.py --out results/peft

# a study of studies/ (default fig7: the paper's figures into results/reproduce), e.g.
# make reproduce STUDY=stream ARGS="--seeds 5"; studies/README.md lists them
STUDY ?= fig7
reproduce: $(STAMP)
	$(VENV)/bin/instantft reproduce $(STUDY) $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info

# --- the device program (csrc/device + the C core): libc and libm only, stripped ---------------
AARCH64_CC   ?= aarch64-linux-gnu-gcc
DEVICE_SRCS  := $(filter-out csrc/test%,$(wildcard csrc/*.c)) $(wildcard csrc/device/*.c)
DEVICE_DEPS  := $(DEVICE_SRCS) $(wildcard csrc/*.h csrc/device/*.h) Makefile
# -ffp-contract=fast: -std=c11 alone turns FMA contraction off; the Python extension (setup.py) has it too
DEVICE_FLAGS := -std=c11 -O3 -ffp-contract=fast -Wall -Wextra -Icsrc -ffunction-sections -fdata-sections -Wl,--gc-sections
# OPENMP=1 (with make -B): the cache fill and the adapters' update on all cores, needs libgomp
DEVICE_FLAGS += $(if $(OPENMP),-fopenmp)
# STATIC=1 (with make -B): no shared libraries at all, for a board whose glibc is older than 2.34
DEVICE_FLAGS += $(if $(STATIC),-static)

device: build/instantft-device
device-aarch64: build/instantft-device-aarch64

build/instantft-device: $(DEVICE_DEPS)
	@mkdir -p $(@D)
	$(CC) $(DEVICE_FLAGS) -s -o $@ $(DEVICE_SRCS) -lm

build/instantft-device-aarch64: $(DEVICE_DEPS)
	@command -v $(AARCH64_CC) >/dev/null || { echo "$(AARCH64_CC) not found: apt-get install gcc-aarch64-linux-gnu"; exit 1; }
	@mkdir -p $(@D)
	$(AARCH64_CC) $(DEVICE_FLAGS) -mcpu=cortex-a53 -s -o $@ $(DEVICE_SRCS) -lm

# the same program under AddressSanitizer + UBSan, for the bad-input tests and the fuzz run
build/instantft-device-asan: $(DEVICE_DEPS)
	@mkdir -p $(@D)
	$(CC) $(DEVICE_FLAGS:-O3=-O1) -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all \
		-o $@ $(DEVICE_SRCS) -lm
