from snakemake.utils import min_version

min_version("9.20")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/dataset.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/baseline.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/benchmark.smk"


rule all:
    default_target: True
    input:
        rules.evaluate.input,
