# Two commands for a fresh clone: `make book` (set-up, CPU-scale reproduction, report) and
# `make test` (set-up if needed, then the whole test suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUNS ?= results/cpu
export HF_HUB_OFFLINE := 1

.PHONY: setup test book book-test notebooks weights lint chromium

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP) chromium

# Debian's chromium, for the test that opens the built book; the test skips, saying why, where it
# cannot be installed (no root or no apt-get).
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	  || echo "chromium could not be installed: the browser test will skip"

lint: $(STAMP)
	$(BIN)/ruff check vldlib tests
	$(BIN)/ruff format --check vldlib tests

# The suite includes every notebook at the smoke profile (nbval) and the strict book build from
# the committed results (tests/test_book.py runs `make book TRAIN=0`).
test: lint chromium
	$(BIN)/python -m pytest -q

# The book: every notebook executed by papermill at the cpu profile into $(BOOK)/notebooks, then a
# strict Jupyter Book build there. TRAIN=1 trains the main grid's missing runs into $(RUNS) (a run
# whose config hash is finished is reused); TRAIN=0 only reads the committed results. The
# extension figures (3 to 6 and 8) run on a smaller grid, notebooks/profiles/cpu_extensions.yaml
# (held-out silhouette, seeds 0-2); EXTRA=1 (which implies TRAIN=1) also trains what is missing
# of it (everything is committed; about 40 runs, 2.5 hours on 2 cores, when recomputed); without
# it their pages say what is missing. FORCE=1 recomputes everything (runs and analysis tables)
# into a fresh runs folder under _build/. Runs that notebooks train for the analyses go to
# $(BOOK_ANALYSIS), which a rebuild keeps.
BOOK := _build/book
TRAIN ?= 1
EXTRA ?= 0
FORCE ?= 0
ifeq ($(FORCE),1)
  BOOK_RUNS := _build/runs/fresh-$(shell date +%Y%m%d-%H%M%S)
  BOOK_TABLES := None
  BOOK_ANALYSIS := $(BOOK_RUNS)-analysis
  override TRAIN := 1
  override EXTRA := 1
else
  BOOK_RUNS := $(RUNS)
  BOOK_TABLES := ../results/analysis
  BOOK_ANALYSIS := _build/runs/analysis
endif
# The extension notebooks train their grid and the main runs they compare with in one pass.
ifeq ($(EXTRA),1)
  override TRAIN := 1
endif
# Paths as the notebooks see them: they run in notebooks/.
from_notebooks = $(if $(filter /%,$(1)),$(1),../$(1))
# Reading only, two notebooks at a time (one torch thread each); training, one at a time (they
# share runs). The claims page reads what the others computed, so it runs last.
CLAIMS := notebooks/claims.ipynb
# The claims page reads Fig. 8's table, so it trains only what EXTRA allows.
EXTENSIONS := notebooks/fig4_set_size.ipynb notebooks/fig6_last_layer_lr.ipynb \
	notebooks/fig8_pretraining.ipynb $(CLAIMS)
RATES := notebooks/fig3_dropout_rates.ipynb
# The notebooks whose grid is the extension grid (the claims page reads it as extension_*).
SMALL_GRID := $(RATES) notebooks/fig4_set_size.ipynb notebooks/fig5_scratch.ipynb \
	notebooks/fig6_last_layer_lr.ipynb notebooks/fig8_pretraining.ipynb
FIGURES := $(filter-out $(CLAIMS),$(sort $(wildcard notebooks/*.ipynb)))
train_flag = $(if $(filter 1,$(if $(filter $(1),$(EXTENSIONS)),$(EXTRA),$(TRAIN))),True,False)
# Each notebook's own papermill arguments: whether it trains, its grid, Fig. 3's rates (EXTRA=1).
nb_args = -p train_missing $(call train_flag,$(1)) \
	$(if $(filter $(1),$(SMALL_GRID)),-f notebooks/profiles/cpu_extensions.yaml) \
	$(if $(and $(filter 1,$(EXTRA)),$(filter $(1),$(RATES))),-f notebooks/profiles/cpu_rates.yaml)
PAPERMILL = OMP_NUM_THREADS=1 $(BIN)/papermill --cwd notebooks -k python3 \
	--no-progress-bar --log-level WARNING -f notebooks/profiles/cpu.yaml \
	-p runs_dir $(call from_notebooks,$(BOOK_RUNS)) \
	-p tables_dir $(BOOK_TABLES) -p analysis_dir $(call from_notebooks,$(BOOK_ANALYSIS))

book: $(STAMP)
	rm -rf $(BOOK) && mkdir -p $(BOOK)/notebooks
	cp _config.yml _toc.yml $(BOOK)/ && cp -r book $(BOOK)/book
	@echo "papermill, cpu profile, runs in $(BOOK_RUNS), TRAIN=$(TRAIN) EXTRA=$(EXTRA)"
	printf '%s\n' $(foreach nb,$(FIGURES),"$(nb) $(strip $(call nb_args,$(nb)))") \
	  | xargs -P $(if $(filter 1,$(TRAIN) $(EXTRA)),1,2) -L 1 sh -c \
	  '$(PAPERMILL) "$$@" $$0 $(BOOK)/$$0'
	$(PAPERMILL) $(call nb_args,$(CLAIMS)) $(CLAIMS) $(BOOK)/$(CLAIMS)
	$(BIN)/jupyter-book build $(BOOK) -W -n --keep-going
	@echo "The book: file://$(abspath $(BOOK))/_build/html/index.html"

# The book's tests alone: every notebook at the smoke profile, then the strict build and browser.
book-test: $(STAMP) chromium
	$(BIN)/python -m pytest -q tests/test_notebooks.py tests/test_book.py

# Re-execute the notebooks at their smoke defaults and store the outputs nbval compares against.
notebooks: $(STAMP)
	$(BIN)/python tests/test_notebooks.py

# Re-create the shipped pre-trained backbones (needs npm and apt, or an online machine).
weights: $(STAMP)
	$(BIN)/python -m vldlib pretrain --kind rich --output vldlib/weights/vldnet_rich.safetensors
	$(BIN)/python -m vldlib pretrain --kind plain --output vldlib/weights/vldnet_plain.safetensors
