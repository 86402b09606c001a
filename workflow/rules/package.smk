rule pack_model:
    input:
        checkpoints=fold_checkpoints(),
    output:
        f"{RESULTS}/package/{MODEL_NAME}.zip",
    log:
        f"{RESULTS}/logs/pack_model/pack_model.log",
    conda:
        ENV_NNUNET
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        model=model_folder,
        folds=FOLDS,
        checkpoints=sorted({"checkpoint_final.pth", config["predict"]["checkpoint"]}),
    script:
        "../scripts/pack_model.py"


rule pack:
    input:
        rules.pack_model.output,
