# The two commands of the README, and the install both run first.
#   make demo   train the demo model from this Python's own docs, serve it, ask it a question
#   make test   the linter, then the test suite (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first and pinned: a range that a newer torch satisfies would pull the CUDA build.
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install ops demo test clean-runs

install: $(STAMP)

$(STAMP): pyproject.toml cluster/system-packages.sh
	@bash cluster/system-packages.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

demo: install
	$(BIN)/solo demo

# DeepSpeed's CPU Adam, CPU collectives and async I/O (NVMe offload) ops, compiled once per machine (minutes) into
# ~/.cache/solo/torch_extensions/<python>-<environment>, here rather than inside the first test that loads them.
ops: install
	$(BIN)/python -c "from solo.runtime import build_deepspeed_ops; build_deepspeed_ops()"

# The ops nearly every training test loads first; async I/O, which only the NVMe test loads, compiles
# meanwhile at the lowest CPU priority on the cores the tests leave idle (minutes off CI's wall
# clock); were that test to come first, it waits on DeepSpeed's build lock.
test: install
	$(BIN)/ruff check .
	$(BIN)/python -c "from solo.runtime import build_deepspeed_ops; build_deepspeed_ops(nvme=False)"
	@nice -n 19 $(BIN)/python -c "from solo.runtime import build_deepspeed_ops; build_deepspeed_ops(training=False)" \
		> $(VENV)/async-io-build.log 2>&1 & build=$$!; trap 'kill $$build 2>/dev/null' EXIT; \
	$(BIN)/python -m pytest -q; tests=$$?; \
	wait $$build || { echo "async I/O op build failed:"; cat $(VENV)/async-io-build.log; exit 1; }; exit $$tests
