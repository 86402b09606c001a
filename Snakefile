from snakemake.utils import min_version

min_version("9.20")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


# config key model: predict the images of data_dir with a trained model, nothing else
if PREDICT_ONLY:

    include: "workflow/rules/model.smk"

    rule all:
        default_target: True
        input:
            rules.predict_images.output,

else:

    include: "workflow/rules/demo.smk"
    include: "workflow/rules/dataset.smk"
    include: "workflow/rules/preprocess.smk"
    include: "workflow/rules/train.smk"
    include: "workflow/rules/predict.smk"
    include: "workflow/rules/baseline.smk"
    include: "workflow/rules/evaluate.smk"
    include: "workflow/rules/benchmark.smk"
    include: "workflow/rules/package.smk"

    rule all:
        default_target: True
        input:
            rules.evaluate.input,
            rules.pack.input,
