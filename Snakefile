# The AMC benchmark workflow: data -> [pretrain] -> fine-tune the method grid -> evaluate
# -> tables, figures, HTML report. docs/workflow.md explains it.
#
#   snakemake released --cores 8 --resources gpu=1             # the authors' checkpoints, no training
#   snakemake all --cores 8 --resources gpu=4                  # the paper (config/config.yaml)
#   snakemake all --configfile config/demo.yaml --cores 2      # the synthetic demo (make demo)
#   snakemake --profile workflow/profiles/slurm all            # the paper on a Slurm cluster
# Each target ends with its HTML report: results/<run>/report.html (all), released.html (released).
#
# --resources takes several values, so it must come AFTER the target (or before another
# flag): `snakemake --resources gpu=4 all` reads `all` as a resource and fails.

from snakemake.utils import min_version

min_version("8.0")


# The paper configuration is the default; a --configfile given on the command line
# (config/demo.yaml, config/ci.yaml) replaces it instead of being merged into it.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/explainers.smk"


rule all:
    """Everything: tables, figures, every evaluation of the grid, and the HTML report results/<run>/report.html."""
    default_target: True
    input:
        all_outputs(),
        f"{RESULTS}/report.html",


rule released:
    """The authors' released checkpoints and ALBEF evaluated, Table 1 against the paper: no training.

    Downloads only what evaluation needs; writes results/<run>/tables/table1_released.* and the
    HTML report results/<run>/released.html."""
    input:
        lambda wc: released_outputs(),
        f"{RESULTS}/released.html",


# What each HTML report shows (rule html_report runs `snakemake --report` for these targets).
rule all_results:
    """Everything `all` makes but its HTML report."""
    input:
        all_outputs(),


rule released_results:
    """Everything `released` makes but its HTML report."""
    input:
        lambda wc: released_outputs(),
