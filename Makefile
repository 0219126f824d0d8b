# Two commands for a fresh clone: `make book` (set-up, CPU-scale reproduction, report) and
# `make test` (set-up if needed, then the whole test suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUNS ?= results/cpu
export HF_HUB_OFFLINE := 1

.PHONY: setup test book weights lint

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check vldlib tests
	$(BIN)/ruff format --check vldlib tests

test: lint
	$(BIN)/python -m pytest -q

# The embedded benchmark: ERM vs very large dropout, 5 seeds, every held-out domain. Finished runs
# under $(RUNS) are reused (the committed ones make this take seconds); others are trained.
book: $(STAMP)
	$(BIN)/python -m vldlib benchmark --profile cpu --runs-dir $(RUNS)
	@echo "Runs and their results.jsonl are in $(RUNS)/ (the book build comes with the book issue)."

# Re-create the shipped pre-trained backbones (needs npm and apt, or an online machine).
weights: $(STAMP)
	$(BIN)/python -m vldlib pretrain --kind rich --output vldlib/weights/vldnet_rich.safetensors
	$(BIN)/python -m vldlib pretrain --kind plain --output vldlib/weights/vldnet_plain.safetensors
