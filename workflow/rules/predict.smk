rule predict_split:
    input:
        checkpoints=fold_checkpoints(),
        raw=rules.ingest_cohort.output.raw,
        subtypes=rules.ingest_cohort.output.subtypes,
    output:
        directory(f"{RESULTS}/predictions/{{split}}"),
    log:
        f"{RESULTS}/logs/predict_split/{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict_split/{{split}}.tsv"
    wildcard_constraints:
        split="train|validation|test",
    conda:
        ENV_NNUNET
    threads: config["threads"]
    resources:
        gpu=1,
        cpus_per_gpu=config["threads"],
        mem_mb=16000,
        runtime=240,
    params:
        model=model_folder,
        folds=FOLDS,
        checkpoint=config["predict"]["checkpoint"],
        device=config["train"]["device"],
        tta=config["predict"]["tta"],
        step_size=config["predict"]["step_size"],
        mirror_batch=config["predict"]["mirror_batch"],
    script:
        "../scripts/predict_split.py"


rule predict:
    input:
        expand(rules.predict_split.output, split=["validation", "test"]),
