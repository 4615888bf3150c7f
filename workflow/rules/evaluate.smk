# Evaluation: pointing accuracy of every method x seed on every benchmark split
# (amc evaluate), one job per checkpoint (all splits in one process, so the model and
# the libraries load once), each on a free GPU. The result JSON holds the summary and every
# case (point, hit, miss kind, category), so the reports can pair methods case by case.
#
# A method of kind `none` (the ALBEF row) is its init checkpoint evaluated as is, a method
# of kind `released` its checkpoint per benchmark (the authors' best_flickr.pth and
# best_refcoco.pth): each is evaluated once, under the first seed (see amc.grid).


rule evaluate:
    """One checkpoint on every benchmark split, in one process (the model is loaded once)."""
    input:
        checkpoints=eval_checkpoints,
        records=all_eval_records(),
        vocab=raw_input(config["vocab"]),
        model_config=config["model_config"],
    output:
        [eval_path("{method}", "{seed}", b, s) for b, s in EVAL_SPLITS],
    log:
        f"{LOGS}/evaluate/{{method}}/seed{{seed}}.log",
    benchmark:
        benchmark_path("evaluate", "{method}/seed{seed}")
    params:
        launcher=gpu_launcher(config["evaluate"]["gpus"]),
        vocab=config["vocab"],
        benchmarks=" ".join(q(b) for b, _ in EVAL_SPLITS),
        splits=" ".join(q(s) for _, s in EVAL_SPLITS),
        image_res=" ".join(q(BENCHMARKS[b]["image_res"]) for b, _ in EVAL_SPLITS),
        resize=" ".join(q(BENCHMARKS[b].get("resize", "auto")) for b, _ in EVAL_SPLITS),
        num_workers=config["evaluate"]["num_workers"],
        extra=" ".join(q(arg) for arg in config["evaluate"]["extra_args"]),
    threads: config["evaluate"]["threads"]
    resources:
        gpu=config["evaluate"]["gpus"],
        mem_mb=config["evaluate"]["mem_mb"],
        runtime=config["evaluate"]["runtime"],
    shell:
        "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} {params.launcher} evaluate --checkpoint {input.checkpoints:q} --model-config {input.model_config:q}"
        " --vocab {params.vocab:q} --records {input.records:q} --benchmark {params.benchmarks}"
        " --split {params.splits} --image-res {params.image_res} --resize {params.resize} --method {wildcards.method:q}"
        " --seed {wildcards.seed:q} --num-workers {params.num_workers:q} {params.extra}"
        " --out {output:q} > {log:q} 2>&1"


rule export_checkpoint:
    """A fine-tuned checkpoint in another layout (config `exports`; amc export-checkpoint).

    The demo exports its AMC in the AMC authors' released layout; its manifest copies that in
    as a `released` method's checkpoint, so the demo runs the path of `snakemake released`."""
    input:
        checkpoint=lambda wc: amc_grid.export_source(config, wc.export),
    output:
        f"{RESULTS}/exports/{{export}}.pth",
    log:
        f"{LOGS}/export/{{export}}.log",
    benchmark:
        benchmark_path("export_checkpoint", "{export}")
    wildcard_constraints:
        export="|".join(map(re.escape, EXPORTS)) or "NO_EXPORT",
    params:
        layout=lambda wc: EXPORTS[wc.export]["layout"],
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    shell:
        "amc export-checkpoint {input.checkpoint:q} {output:q} --layout {params.layout:q} > {log:q} 2>&1"
