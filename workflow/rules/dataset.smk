rule ingest_cohort:
    input:
        cohort=DATA_DIR,
        files=cohort_files(),
    output:
        raw=directory(RAW),
        subtypes=f"{RESULTS}/dataset/subtypes.csv",
        label_fix_report=f"{RESULTS}/dataset/label_fix_report.csv",
    log:
        f"{RESULTS}/logs/ingest_cohort/ingest_cohort.log",
    benchmark:
        f"{RESULTS}/benchmarks/ingest_cohort/ingest_cohort.tsv"
    conda:
        ENV_NNUNET
    threads: config["threads"]
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        dataset_name=config["dataset"]["name"],
        label_tolerance=config["ingest"]["label_tolerance"],
    script:
        "../scripts/ingest_cohort.py"


rule write_splits:
    input:
        subtypes=rules.ingest_cohort.output.subtypes,
    output:
        splits=f"{RESULTS}/dataset/splits_final.json",
    log:
        f"{RESULTS}/logs/write_splits/write_splits.log",
    conda:
        ENV_TOOLS
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        **config["splits"],
    script:
        "../scripts/write_splits.py"


rule dataset:
    input:
        rules.ingest_cohort.output,
        rules.write_splits.output,
