# Two entry points (README):  `make run`  and  `make test`; `make check` is the fast tier of
# `make test` for the edit-test loop. All create .venv on first use and install everything
# the project needs into it.

VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin
CORES  ?= all
# cpu: install the CPU build of torch first (no multi-GB CUDA download);
# keep: take whatever torch pip resolves / is already in the environment (GPU machines).
TORCH  ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo keep || echo cpu)

.PHONY: setup run test check lint dryrun pytest report rulegraph lock clean-results

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/lock.txt requirements/torch-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if [ "$(TORCH)" = cpu ]; then $(BIN)/python -m pip install -q -r requirements/torch-cpu.txt; fi
	$(BIN)/python -m pip install -q -c requirements/lock.txt -e '.[workflow,slurm,test]'
	touch $@

## The main job: the whole DAG on the embedded default (config.yaml).
run: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --profile workflow/profiles/default --cores $(CORES)

## The whole test suite: lint, a dry run of every shipped config, then pytest.
test: setup lint dryrun pytest

## The fast tier for the edit-test loop: lint, then pytest without the end-to-end runs (slow),
## the tests that run Snakemake on stand-ins or dry-run several configs (heavy) and the GPU
## tests. `make test` runs all of them and the dry run of every shipped config.
check: setup lint
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow and not heavy and not gpu"

## Snakemake's own lint, and the rules' formatting (snakefmt, settings in pyproject.toml;
## `snakefmt Snakefile workflow/` reformats).
lint: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/

dryrun: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python tests/dryrun_configs.py

pytest: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -p no:cacheprovider

report: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --report report.zip

## The rule graph of the embedded default (config.yaml) as docs/rulegraph.svg, shown in
## docs/pipeline.md. Needs graphviz's `dot` (not part of `make test`).
rulegraph: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --rulegraph --quiet all > docs/rulegraph.dot.tmp
	dot -Tsvg docs/rulegraph.dot.tmp > docs/rulegraph.svg.tmp
	rm docs/rulegraph.dot.tmp && mv docs/rulegraph.svg.tmp docs/rulegraph.svg

lock: setup
	(head -2 requirements/lock.txt; $(BIN)/python -m pip freeze --exclude-editable | grep -v "^torch==") > requirements/lock.new && mv requirements/lock.new requirements/lock.txt

clean-results:
	rm -rf results/embedded
