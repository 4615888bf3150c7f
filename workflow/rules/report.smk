# Reports: Table 1 against the paper, the ablation table, figures (PNG + PDF), all
# regenerated from results/<run>/ by `amc report`. Outputs marked report(...) appear in the
# HTML report, which `all` writes as results/<run>/report.html and `released` as
# results/<run>/released.html (rule html_report).
#
# run_config writes results/<run>/workflow-config.json: the validated configuration
# with defaults, resolved paths and the expanded grid. The report commands and the
# notebook read it, so they know labels, seeds and sweeps without Snakemake. It is
# rewritten when the configuration changes (Snakemake reruns on changed params).

REPORT_CONFIG = f"{RESULTS}/{amc_grid.RUN_CONFIG_FILE}"


rule run_config:
    """The resolved configuration and grid of this run, for the reports and the notebook."""
    output:
        REPORT_CONFIG,
    log:
        f"{LOGS}/report/run_config.log",
    benchmark:
        benchmark_path("run_config")
    params:
        config=lambda wc: json.dumps(amc_grid.resolved_config(config), sort_keys=True),
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    shell:
        "amc report config --json {params.config:q} --out {output:q} > {log:q} 2>&1"


rule table1:
    """Table 1: the paper's numbers, the reproduced mean over seeds with its 95% interval, the difference."""
    input:
        config=REPORT_CONFIG,
        paper=config["table1"]["paper"],
        evals=all_evals(TABLE1_METHODS, TABLE1_SPLITS),
    output:
        **table_outputs("table1", "Table 1"),
    log:
        f"{LOGS}/report/table1.log",
    benchmark:
        benchmark_path("table1")
    params:
        run=RESULTS,
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "amc report table1 --run {params.run:q} --config {input.config:q} > {log:q} 2>&1"


rule table1_released:
    """Table 1 of the untrained rows only (ALBEF, the released checkpoints): `snakemake released`."""
    input:
        config=REPORT_CONFIG,
        paper=config["table1"]["paper"],
        evals=all_evals(RELEASED_ROWS, TABLE1_SPLITS),
    output:
        **table_outputs(RELEASED_TABLE, "Table 1, released checkpoints"),
    log:
        f"{LOGS}/report/{RELEASED_TABLE}.log",
    benchmark:
        benchmark_path(RELEASED_TABLE)
    params:
        run=RESULTS,
        methods=" ".join(q(m) for m in RELEASED_ROWS),
        name=RELEASED_TABLE,
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "amc report table1 --run {params.run:q} --config {input.config:q} --methods {params.methods}"
        " --name {params.name:q} > {log:q} 2>&1"


rule ablation:
    """Every grid variant: accuracy with interval, paired comparison with the reference, error decomposition."""
    input:
        config=REPORT_CONFIG,
        evals=all_evals(),
    output:
        **table_outputs("ablation", "Ablation"),
    log:
        f"{LOGS}/report/ablation.log",
    benchmark:
        benchmark_path("ablation")
    params:
        run=RESULTS,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "amc report ablation --run {params.run:q} --config {input.config:q} > {log:q} 2>&1"


rule figures:
    """Ablation over the Δ sweeps, training curves, error decomposition (PNG + PDF)."""
    input:
        config=REPORT_CONFIG,
        evals=all_evals(),
        metrics=all_train_metrics(),
    output:
        [
            report(path, category="Figures", labels={"figure": name.replace("_", " ")})
            if path.endswith(".png")
            else path
            for name in FIGURES
            for path in figure_paths(name)
        ],
    log:
        f"{LOGS}/report/figures.log",
    benchmark:
        benchmark_path("figures")
    params:
        run=RESULTS,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "amc report figures --run {params.run:q} --config {input.config:q} > {log:q} 2>&1"


# The HTML report is Snakemake's own (`snakemake --report`): it needs the finished jobs' records
# under .snakemake/, so this rule runs it as a second Snakemake process on the same Snakefile and
# configuration (written to a file: the --configfile of the command line and any --config), for
# the target that holds the reported outputs (all_results, released_results in the Snakefile).
# --nolock: the running workflow holds the lock, and the report only reads.
HTML_REPORTS = {"report": "all_results", "released": "released_results"}


rule html_report:
    """The HTML report of `all` (report.html) or of `released` (released.html): tables, figures, provenance."""
    input:
        lambda wc: all_outputs() if wc.report == "report" else released_outputs(),
    output:
        f"{RESULTS}/{{report}}.html",
    log:
        f"{LOGS}/report/{{report}}-html.log",
    benchmark:
        benchmark_path("html_report", "{report}")
    wildcard_constraints:
        report="|".join(HTML_REPORTS),
    localrule: True
    params:
        snakemake=f"{q(sys.executable)} -m snakemake",
        snakefile=workflow.main_snakefile,
        config=lambda wc: json.dumps(config, sort_keys=True),
        configfile=lambda wc: f"{LOGS}/report/{wc.report}-html.config.json",
        target=lambda wc: HTML_REPORTS[wc.report],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "amc report config --json {params.config:q} --out {params.configfile:q} > {log:q} 2>&1"
        " && {params.snakemake} --snakefile {params.snakefile:q} --configfile {params.configfile:q}"
        " --nolock --cores 1 --report {output:q} {params.target} >> {log:q} 2>&1"


if QUALITATIVE["enabled"]:

    rule qualitative:
        """Image, phrase, ground-truth box, heatmap and point of each method side by side (heatmaps as amc evaluate computes them)."""
        input:
            config=REPORT_CONFIG,
            evals=all_evals(QUALITATIVE_METHODS, [QUALITATIVE_SPLIT]),
            records=eval_records(*QUALITATIVE_SPLIT),
            checkpoints=lambda wc: sorted(
                {
                    raw_input(
                        amc_grid.checkpoint_path(config, m, METHODS[m]["seeds"][0], QUALITATIVE_SPLIT[0])
                    )
                    for m in QUALITATIVE_METHODS
                }
            ),
        output:
            png=report(
                f"{RESULTS}/figures/qualitative.png",
                category="Figures",
                labels={"figure": "qualitative examples"},
            ),
            pdf=f"{RESULTS}/figures/qualitative.pdf",
        log:
            f"{LOGS}/report/qualitative.log",
        benchmark:
            benchmark_path("qualitative")
        params:
            launcher=gpu_launcher(QUALITATIVE["gpus"]),
            run=RESULTS,
        threads: 1
        resources:
            gpu=QUALITATIVE["gpus"],
            mem_mb=4000,
            runtime=30,
        shell:
            "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} {params.launcher} report qualitative"
            " --run {params.run:q} --config {input.config:q} > {log:q} 2>&1"
