# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned: this pair installs from the build machines' disk; on a GPU box use environment.yml.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# The workflow's rules call `amc`, `snakemake` and `torchrun`: put the venv first on PATH.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: venv demo test test-slurm lint clean-demo

$(BIN)/amc: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e '.[dev,slurm]'
	touch $(BIN)/amc

venv: $(BIN)/amc

# The whole workflow on the embedded synthetic benchmark (CPU). Rerunning redoes only what is missing.
# (--configfile takes several files: the target goes before it.) It ends with where the results are
# and the time and memory of each stage (the rules' benchmark files, results/demo/benchmarks/).
DEMO := $(BIN)/snakemake --snakefile Snakefile
demo: venv
	$(DEMO) all --configfile config/demo.yaml --cores 2 --rerun-incomplete
	@$(BIN)/python -m amc.report.where --config config/demo.yaml
	@$(BIN)/amc report stages --run results/demo

test: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The workflow on a throw-away one-node Slurm cluster (tests/test_slurm.py, docs/workflow.md):
# needs root and apt-get (installs Slurm and munge when missing); fails where `make test` skips.
test-slurm: venv
	AMC_REQUIRE_SLURM=1 $(BIN)/python -m pytest -q -p no:cacheprovider -rA -m slurm tests/test_slurm.py

# ruff on the code; snakemake --lint on the workflow with both configurations (the findings
# kept on purpose, and why, are listed in .ci/snakemake_lint.py).
lint: venv
	$(BIN)/ruff check amc baselines tests .ci
	$(BIN)/ruff format --check amc baselines tests .ci
	$(BIN)/python .ci/snakemake_lint.py config/config.yaml config/demo.yaml

clean-demo:
	rm -rf results/demo data/demo
