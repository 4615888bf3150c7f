# The explainer ablation (config `explainers`, docs/workflow.md): does a method ground, or does
# only the GradCAM it was trained on move? Each chosen method x seed is scored once more on the
# chosen splits with every explainer and with GradCAM at every chosen fusion layer: one job per
# checkpoint (`amc evaluate --explainer ...`: the model loaded once, each image encoded once, one
# backward pass per batch for all the GradCAM maps), results in results/<run>/eval_explainers/
# (amc.grid.explainer_eval_path), apart from eval/ so that Table 1 and the ablation are untouched.

if EXPLAINERS_ON:

    rule evaluate_explainers:
        """One checkpoint, every explainer, every split of the ablation, in one process."""
        input:
            checkpoints=lambda wc: [
                raw_input(amc_grid.checkpoint_path(config, wc.method, int(wc.seed), benchmark))
                for benchmark, _ in EXPLAINER_SPLITS
            ],
            records=[eval_records(b, s) for b, s in EXPLAINER_SPLITS],
            vocab=raw_input(config["vocab"]),
            model_config=config["model_config"],
        output:
            [
                amc_grid.explainer_eval_path(config, "{method}", "{seed}", b, s, explainer.slug)
                for b, s in EXPLAINER_SPLITS
                for explainer in EXPLAINER_LIST
            ],
        log:
            f"{LOGS}/evaluate_explainers/{{method}}/seed{{seed}}.log",
        benchmark:
            benchmark_path("evaluate_explainers", "{method}/seed{seed}")
        wildcard_constraints:
            method="|".join(map(re.escape, EXPLAINER_METHODS)),
        params:
            launcher=gpu_launcher(config["evaluate"]["gpus"]),
            vocab=config["vocab"],
            benchmarks=" ".join(q(b) for b, _ in EXPLAINER_SPLITS),
            splits=" ".join(q(s) for _, s in EXPLAINER_SPLITS),
            image_res=" ".join(q(BENCHMARKS[b]["image_res"]) for b, _ in EXPLAINER_SPLITS),
            resize=" ".join(q(BENCHMARKS[b].get("resize", "auto")) for b, _ in EXPLAINER_SPLITS),
            explainers=" ".join(f"--explainer {q(e)}" for e in EXPLAINER_LIST),
            # one --out per split; amc evaluate puts each explainer's slug in place of {explainer}
            outs=lambda wc: " ".join(
                q(amc_grid.explainer_eval_path(config, wc.method, wc.seed, b, s, "{explainer}"))
                for b, s in EXPLAINER_SPLITS
            ),
            num_workers=config["evaluate"]["num_workers"],
            extra=" ".join(q(arg) for arg in config["evaluate"]["extra_args"]),  # as the evaluate rule
        threads: config["evaluate"]["threads"]
        resources:
            gpu=config["evaluate"]["gpus"],
            mem_mb=config["evaluate"]["mem_mb"],
            runtime=config["evaluate"]["runtime"],
        shell:
            "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} {params.launcher} evaluate --checkpoint {input.checkpoints:q}"
            " --model-config {input.model_config:q} --vocab {params.vocab:q} --records {input.records:q}"
            " --benchmark {params.benchmarks} --split {params.splits} --image-res {params.image_res}"
            " --resize {params.resize} --method {wildcards.method:q} --seed {wildcards.seed:q}"
            " --num-workers {params.num_workers:q} {params.explainers} {params.extra} --out {params.outs} > {log:q} 2>&1"

    rule explainers:
        """Method x explainer: pointing and energy with intervals, paired with the reference; accuracy against fusion layer."""
        input:
            config=REPORT_CONFIG,
            evals=explainer_evals(),
        output:
            **table_outputs("explainers", "Explainers"),
            png=report(
                f"{RESULTS}/figures/explainer_layers.png",
                category="Figures",
                labels={"figure": "explainer layers"},
            ),
            pdf=f"{RESULTS}/figures/explainer_layers.pdf",
        log:
            f"{LOGS}/report/explainers.log",
        benchmark:
            benchmark_path("explainers")
        params:
            run=RESULTS,
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        shell:
            "amc report explainers --run {params.run:q} --config {input.config:q} > {log:q} 2>&1"
