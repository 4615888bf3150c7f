# Data: the raw datasets (synthesised, or downloaded from the manifest) and `amc prepare`,
# which turns each into grounding records (one JSON line per case).
#
#   synthetic: synth -> prepare_vg, prepare_eval (one per benchmark split)
#   real:      download_<artifact> (one local rule per manifest artifact) -> prepare_*
# A synthetic run may name a manifest too (the demo's stand-in for the released checkpoints).
#
# prepare_vg reads data.layout.vg.format: `released` (the default, as the released code trains:
# the authors' VG phrase files) or `raw` (the phrases rebuilt from Visual Genome's annotations).
# Every prepare also writes <records>.prepare.json, its skip counts by reason.


if SYNTHETIC:

    rule synth:
        """The synthetic benchmark in the real datasets' raw formats (amc synth)."""
        output:
            SYNTH_FLAG,
        log:
            f"{LOGS}/synth.log",
        benchmark:
            benchmark_path("synth")
        params:
            out=RAW,
            seed=config["data"]["synthetic"]["seed"],
            scale=config["data"]["synthetic"]["scale"],
            workers=config["data"]["synthetic"]["workers"],
        threads: config["data"]["synthetic"]["workers"]
        resources:
            mem_mb=2000,
            runtime=30,
        shell:
            "amc synth --out {params.out:q} --seed {params.seed:q} --scale {params.scale:q}"
            " --workers {params.workers:q} > {log:q} 2>&1"


# One local rule per artifact: downloads run on the machine Snakemake runs on (the
# cluster's compute nodes often have no internet). Only the artifacts some rule
# needs are fetched. A `local` source (a file this workflow makes, e.g. an export) is
# the rule's input; when it is remade the copy and its locked checksum are replaced.
for _name, _entry in MANIFEST.items():

    rule:
        name:
            f"download_{_name}"
        localrule: True
        input:
            [_entry.local] if _entry.local is not None else [],
        output:
            [directory(p) if is_folder(p) else p for p in artifact_outputs(_entry)],
        log:
            f"{LOGS}/download/{_name}.log",
        benchmark:
            benchmark_path(f"download_{_name}")
        params:
            name=_name,
            dest=RAW,
            manifest=config["data"]["manifest"],
            update_lock="--update-lock" if _entry.local is not None else "",
        threads: 1
        resources:
            mem_mb=1000,
            runtime=600,
        shell:
            "amc download {params.name:q} --dest {params.dest:q} --manifest {params.manifest:q}"
            " --no-progress {params.update_lock} > {log:q} 2>&1"


rule prepare_vg:
    """The fine-tuning records: VG phrases with boxes (the released phrase files, or rebuilt from raw VG)."""
    input:
        raw=dataset_inputs("vg"),
        exclude=all_eval_records() if EXCLUDE_EVAL else [],
        image_data=[raw_input(VG_IMAGE_DATA)] if VG_IMAGE_DATA else [],
    output:
        records=VG_TRAIN,
        report=str(prepare_report_path(VG_TRAIN)),
    log:
        f"{LOGS}/prepare/vg-train.log",
    benchmark:
        benchmark_path("prepare_vg")
    params:
        format=VG_LAYOUT["format"],
        root=layout_path("vg", "root"),
        images=layout_path("vg", "images"),
        exclude=vg_exclude_args,
    threads: 1
    resources:
        mem_mb=16000 if not SYNTHETIC else 1000,
        runtime=120,
    shell:
        "amc prepare vg --format {params.format:q} --root {params.root:q} --images {params.images:q}"
        " --out {output.records:q} {params.exclude} > {log:q} 2>&1"


rule prepare_eval:
    """One evaluation split (Flickr30k Entities or RefCOCO+) as records."""
    input:
        lambda wc: dataset_inputs(wc.benchmark),
    output:
        records=eval_records("{benchmark}", "{split}"),
        # what prepare skipped, by reason; amc evaluate copies it into its result
        report=str(prepare_report_path(eval_records("{benchmark}", "{split}"))),
    log:
        f"{LOGS}/prepare/{{benchmark}}-{{split}}.log",
    benchmark:
        benchmark_path("prepare_eval", "{benchmark}-{split}")
    params:
        root=lambda wc: layout_path(wc.benchmark, "root"),
        images=lambda wc: layout_path(wc.benchmark, "images"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "amc prepare {wildcards.benchmark:q} --root {params.root:q} --images {params.images:q}"
        " --split {wildcards.split:q} --out {output.records:q} > {log:q} 2>&1"
