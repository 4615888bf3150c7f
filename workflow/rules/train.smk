# Training: the demo's pretraining (the tiny model's stand-in for ALBEF.pth) and the
# fine-tuning of every method x seed of the grid (amc train), each on a free GPU.
#
# `amc train --out DIR --resume` writes DIR/checkpoint_last.pt while it runs and
# DIR/checkpoint_final.pt last; only checkpoint_final.pt is declared as output, so
# Snakemake never deletes checkpoint_last.pt and a rerun after an interruption
# continues from it. The metrics are copied out of DIR at the end (DIR/metrics.jsonl
# keeps the history across resumes; Snakemake would delete a declared output that
# the trainer appends to).
#
# OMP_NUM_THREADS/MKL_NUM_THREADS = the rule's threads: torch otherwise starts one thread per
# core in EVERY job, and two CPU jobs side by side then run several times slower than one.


if config["pretrain"]["enabled"]:

    rule pretrain:
        """The tiny model from random weights on the synthetic captions (amc pretrain)."""
        input:
            captions=raw_input(config["data"]["captions"]),
            vocab=raw_input(config["vocab"]),
            base_config=config["pretrain"]["config"],
            model_config=config["model_config"],
        output:
            f"{config['pretrain']['out_dir']}/checkpoint_final.pt",
        log:
            f"{LOGS}/pretrain.log",
        benchmark:
            benchmark_path("pretrain")
        params:
            launcher=gpu_launcher(config["pretrain"]["gpus"], torchrun=True),
            out=config["pretrain"]["out_dir"],
            overrides=lambda wc: " ".join(
                q(f"{key}={amc_grid.override_value(value)}")
                for key, value in [
                    ("model_config", config["model_config"]),
                    ("vocab", config["vocab"]),
                    ("data.kind", "captions"),
                    ("data.path", config["data"]["captions"]),
                    ("seed", config["pretrain"]["seed"]),
                    *config["pretrain"]["overrides"].items(),
                ]
            ),
        threads: config["pretrain"]["threads"]
        resources:
            gpu=config["pretrain"]["gpus"],
            mem_mb=config["pretrain"]["mem_mb"],
            runtime=config["pretrain"]["runtime"],
        shell:
            "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} {params.launcher} pretrain --config {input.base_config:q} --out {params.out:q} --resume"
            " {params.overrides} > {log:q} 2>&1"


rule train:
    """Fine-tune one method with one seed (amc train)."""
    input:
        unpack(train_inputs),
    output:
        checkpoint=amc_grid.final_checkpoint_path(config, "{method}", "{seed}"),
        metrics=amc_grid.train_metrics_path(config, "{method}", "{seed}"),
        selected=[
            amc_grid.best_checkpoint_path(config, "{method}", "{seed}", b) for b in SELECTION_BENCHMARKS
        ],
    log:
        f"{LOGS}/train/{{method}}/seed{{seed}}.log",
    benchmark:
        benchmark_path("train", "{method}/seed{seed}")
    wildcard_constraints:
        method="|".join(map(re.escape, FINETUNED)) or "NO_METHOD",
    params:
        launcher=gpu_launcher(config["finetune"]["gpus"], torchrun=True),
        out=lambda wc: checkpoint_dir(wc.method, wc.seed),
        run_metrics=lambda wc: f"{checkpoint_dir(wc.method, wc.seed)}/{amc_grid.TRAIN_METRICS}",
        resume="--resume" if config["finetune"]["resume"] else "",
        overrides=train_overrides,
    threads: config["finetune"]["threads"]
    resources:
        gpu=config["finetune"]["gpus"],
        mem_mb=config["finetune"]["mem_mb"],
        runtime=config["finetune"]["runtime"],
    shell:
        "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} {params.launcher} train --config {input.base_config:q} --out {params.out:q} {params.resume}"
        " {params.overrides} > {log:q} 2>&1"
        " && cp {params.run_metrics:q} {output.metrics:q}.tmp"
        " && mv {output.metrics:q}.tmp {output.metrics:q}"
