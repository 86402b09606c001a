rule train_fold:
    input:
        plans=rules.plan_and_preprocess.output.plans,
        fingerprint=rules.plan_and_preprocess.output.fingerprint,
        splits=rules.plan_and_preprocess.output.splits,
        subtypes=rules.plan_and_preprocess.output.subtypes,
    output:
        checkpoint=f"{MODEL}/fold_{{fold}}/checkpoint_final.pth",
        monitor=f"{MODEL}/fold_{{fold}}/classification_monitor.json",
        progress=report(
            f"{MODEL}/fold_{{fold}}/progress.png",
            caption="../report/progress.rst",
            category="Training",
            subcategory="fold {fold}",
        ),
    log:
        f"{RESULTS}/logs/train_fold/fold_{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_fold/fold_{{fold}}.tsv"
    retries: 2
    conda:
        ENV_NNUNET
    threads: TRAIN_CPUS
    resources:
        gpu=1,
        cpus_per_gpu=TRAIN_CPUS,
        mem_mb=TRAIN_MEM_MB,
        # minutes per job; a training cut off at this limit resumes from its latest checkpoint
        runtime=1440,
    params:
        dataset_id=config["dataset"]["id"],
        configuration=CONFIGURATION,
        plans_identifier=PLANS,
        train=config["train"],
        nnunet_paths=NNUNET_PATHS,
    script:
        "../scripts/train_fold.py"


rule train:
    input:
        fold_checkpoints(),
