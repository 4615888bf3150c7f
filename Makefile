# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned: this pair installs from the build machines' disk; on a GPU box use environment.yml.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# The workflow's rules call `amc`, `snakemake` and `torchrun`: put the venv first on PATH.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: venv demo test test-fast test-slurm mutation lint clean-demo

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

# Every test but the Slurm cluster test (make test-slurm; CI runs both, docs/testing.md), two at a
# time (pytest-xdist, one per core); a test module stays on one worker, so a module-scoped fixture
# (the workflow test's end-to-end run) is made once.
test: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slurm" -n 2 --dist loadfile

# The workflow on a throw-away one-node Slurm cluster (tests/test_slurm.py, docs/workflow.md):
# needs root and apt-get (installs Slurm and munge when missing); fails where it cannot make the
# cluster, or skips saying why with REQUIRE_SLURM=0 (as CI runs it).
REQUIRE_SLURM ?= 1
test-slurm: venv
	AMC_REQUIRE_SLURM=$(REQUIRE_SLURM) $(BIN)/python -m pytest -q -p no:cacheprovider -rA -m slurm tests/test_slurm.py

# The check while editing: the in-process unit and wiring tests (not the ones marked slow or
# subprocess), two at a time (pytest-xdist, one per core).
test-fast: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow and not subprocess" -n 2

# Mutation testing of the core with mutmut (docs/testing.md): not part of CI, part of reviewing a
# change to the core. One `mutmut run` over the modules of [tool.mutmut] only_mutate in
# pyproject.toml (one clean test run and one forced failure for all of them, not one per module);
# MODULES=amc/losses.py (or several, space-separated) runs only those. The mutated copy is
# mutants/ (git-ignored): the log is mutants/run.log, the run's minutes mutants/times.txt. Children
# started by a test see the mutated package (PYTHONPATH); every test session reuses one ci dataset
# (AMC_TEST_CI_DATA).
MUTATED = $(shell sed -n '/^only_mutate/,/^]/p' pyproject.toml | grep -o '[a-z_/]*\.py')
MODULES ?= $(MUTATED)
mutation: venv
	$(BIN)/mutmut --version > /dev/null 2>&1 || $(BIN)/python -m pip install --quiet -e '.[mutation]'
	mkdir -p mutants
	rm -rf mutants/ci-data  # made again by the first test session of this run, from this checkout's synth
	# which tests cover which function, recorded afresh once per run (mutmut only adds new tests to
	# its record: a test changed to call another function, or a module renamed, would go unseen)
	rm -f mutants/mutmut-stats.json
	# mutmut re-copies a changed .py file but neither removes a file the checkout no longer has
	# nor copies the package's data files (schemas, resources)
	-cd mutants && for f in $$(find amc baselines -type f ! -path '*/__pycache__/*' 2>/dev/null | sed 's/\.\(meta\|spans\)$$//' | sort -u); do \
	  [ -e "../$$f" ] || rm -f "$$f" "$$f.meta" "$$f.spans"; \
	done
	for dir in amc baselines; do \
	  mkdir -p mutants/$$dir && (cd $$dir && find . -type f ! -name '*.py' ! -path '*/__pycache__/*' \
	    -exec cp --parents {} $(CURDIR)/mutants/$$dir/ \;) || exit 1; \
	done
	start=$$(date +%s); \
	PYTHONPATH=$(CURDIR)/mutants OMP_NUM_THREADS=1 AMC_TEST_CI_DATA=$(CURDIR)/mutants/ci-data \
	  $(BIN)/mutmut run --max-children 2 $(foreach module,$(MODULES),"$(subst /,.,$(module:.py=)).*") \
	  >> mutants/run.log 2>&1 || { tail -n 40 mutants/run.log; exit 1; }; \
	echo "$$(date -u +%FT%TZ) $(MODULES): $$(( $$(date +%s) - start )) s" | tee -a mutants/times.txt
	$(BIN)/python -m tests.mutation_report

# ruff on the code; snakemake --lint on the workflow with both configurations (the findings
# kept on purpose, and why, are listed in .ci/snakemake_lint.py).
lint: venv
	$(BIN)/ruff check amc baselines tests .ci
	$(BIN)/ruff format --check amc baselines tests .ci
	$(BIN)/python .ci/snakemake_lint.py config/config.yaml config/demo.yaml

clean-demo:
	rm -rf results/demo data/demo
