rule plan_and_preprocess:
    input:
        raw=RAW,
        splits=rules.write_splits.output.splits,
        subtypes=rules.ingest_cohort.output.subtypes,
    output:
        plans=f"{PRE}/{PLANS}.json",
        # the preprocessed case folder is not a directory() output: Snakemake's timestamp file
        # inside it would stop nnU-Net from inferring its dataset format
        fingerprint=f"{PRE}/dataset_fingerprint.json",
        splits=f"{PRE}/splits_final.json",
        subtypes=f"{PRE}/subtypes.csv",
    log:
        f"{RESULTS}/logs/plan_and_preprocess/plan_and_preprocess.log",
    benchmark:
        f"{RESULTS}/benchmarks/plan_and_preprocess/plan_and_preprocess.tsv"
    conda:
        ENV_NNUNET
    threads: config["threads"]
    resources:
        mem_mb=32000,
        runtime=480,
    params:
        dataset_id=config["dataset"]["id"],
        planner=config["plan"]["planner"],
        configuration=CONFIGURATION,
        custom_configuration=config["plan"]["custom_configuration"],
        nnunet_paths=NNUNET_PATHS,
    script:
        "../scripts/plan_and_preprocess.py"


rule preprocess:
    input:
        rules.plan_and_preprocess.output,
