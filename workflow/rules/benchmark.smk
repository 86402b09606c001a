rule benchmark_inference:
    input:
        checkpoints=fold_checkpoints(),
        raw=rules.ingest_cohort.output.raw,
        subtypes=rules.ingest_cohort.output.subtypes,
    output:
        speed=f"{RESULTS}/benchmark/inference_speed.json",
        plot=report(
            f"{RESULTS}/benchmark/inference_speed.png",
            caption="../report/inference_speed.rst",
            category="Benchmark",
        ),
    log:
        f"{RESULTS}/logs/benchmark_inference/benchmark_inference.log",
    benchmark:
        f"{RESULTS}/benchmarks/benchmark_inference/benchmark_inference.tsv"
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
        dataset_id=config["dataset"]["id"],
        configuration=CONFIGURATION,
        plans_identifier=PLANS,
        trainer=TRAINER,
        checkpoint=config["predict"]["checkpoint"],
        device=config["train"]["device"],
        tta=config["predict"]["tta"],
        step_size=config["predict"]["step_size"],
        cases=config["benchmark"]["cases"],
        repeats=config["benchmark"]["repeats"],
        warmup=config["benchmark"]["warmup"],
        nnunet_paths=NNUNET_PATHS,
    script:
        "../scripts/benchmark_inference.py"


rule benchmark:
    input:
        rules.benchmark_inference.output,
