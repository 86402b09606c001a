# predict-only use of a trained model (config key model): included instead of the training stages


localrules:
    import_model,


rule import_model:
    input:
        model=config["model"],
    output:
        directory(IMPORTED_MODEL),
    log:
        f"{RESULTS}/logs/import_model/import_model.log",
    conda:
        ENV_NNUNET
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        checkpoint=config["predict"]["checkpoint"],
    script:
        "../scripts/import_model.py"


rule predict_images:
    input:
        model=rules.import_model.output[0],
        images=DATA_DIR,
        files=[image for _, image in IMAGES],
    output:
        directory(f"{RESULTS}/predictions/test"),
    log:
        f"{RESULTS}/logs/predict_images/predict_images.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict_images/predict_images.tsv"
    conda:
        ENV_NNUNET
    threads: config["threads"]
    resources:
        gpu=1,
        cpus_per_gpu=config["threads"],
        mem_mb=16000,
        runtime=240,
    params:
        checkpoint=config["predict"]["checkpoint"],
        device=config["train"]["device"],
        tta=config["predict"]["tta"],
        step_size=config["predict"]["step_size"],
        mirror_batch=config["predict"]["mirror_batch"],
    script:
        "../scripts/predict_images.py"


rule predict:
    input:
        rules.predict_images.output,
