rule evaluate_validation:
    input:
        unpack(test_evaluation_inputs),
        predictions=f"{RESULTS}/predictions/validation",
        raw=rules.ingest_cohort.output.raw,
        subtypes=rules.ingest_cohort.output.subtypes,
    output:
        summary=report(
            f"{RESULTS}/metrics/summary.json",
            caption="../report/summary.rst",
            category="Metrics",
        ),
        per_case=report(
            f"{RESULTS}/metrics/per_case.csv",
            caption="../report/per_case.rst",
            category="Metrics",
        ),
        confusion=report(
            f"{RESULTS}/metrics/confusion_matrix.png",
            caption="../report/confusion_matrix.rst",
            category="Metrics",
        ),
        dsc=report(
            f"{RESULTS}/metrics/dsc_distributions.png",
            caption="../report/dsc_distributions.rst",
            category="Metrics",
        ),
        reliability=report(
            f"{RESULTS}/metrics/reliability.png",
            caption="../report/reliability.rst",
            category="Metrics",
        ),
    log:
        f"{RESULTS}/logs/evaluate_validation/evaluate_validation.log",
    conda:
        ENV_TOOLS
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        output_dir=output_folder,
    script:
        "../scripts/evaluate_validation.py"


rule plot_training:
    input:
        monitors=expand(
            f"{MODEL}/fold_{{fold}}/classification_monitor.json", fold=FOLDS
        ),
    output:
        curves=report(
            f"{RESULTS}/metrics/training_curves.png",
            caption="../report/training_curves.rst",
            category="Training",
        ),
        counts=report(
            f"{RESULTS}/metrics/prediction_counts.png",
            caption="../report/prediction_counts.rst",
            category="Training",
        ),
    log:
        f"{RESULTS}/logs/plot_training/plot_training.log",
    conda:
        ENV_TOOLS
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        folds=FOLDS,
    script:
        "../scripts/plot_training.py"


rule plot_case_overlays:
    input:
        predictions=f"{RESULTS}/predictions/validation",
        raw=rules.ingest_cohort.output.raw,
        subtypes=rules.ingest_cohort.output.subtypes,
    output:
        report(
            directory(f"{RESULTS}/plots/overlays/validation"),
            patterns=["{name}.png"],
            caption="../report/case_overlays.rst",
            category="Case overlays",
            subcategory="validation",
            labels=overlay_report_labels,
        ),
    log:
        f"{RESULTS}/logs/plot_case_overlays/plot_case_overlays.log",
    conda:
        ENV_TOOLS
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        split="validation",
    script:
        "../scripts/plot_case_overlays.py"


rule plot_test_overlays:
    input:
        unpack(test_overlay_inputs),
        predictions=f"{RESULTS}/predictions/test",
        raw=rules.ingest_cohort.output.raw,
        subtypes=rules.ingest_cohort.output.subtypes,
    output:
        report(
            directory(f"{RESULTS}/plots/overlays/test"),
            patterns=["{name}.png"],
            caption="../report/test_overlays.rst",
            category="Case overlays",
            subcategory="test",
            labels=overlay_report_labels,
        ),
    log:
        f"{RESULTS}/logs/plot_test_overlays/plot_test_overlays.log",
    conda:
        ENV_TOOLS
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        split="test",
    script:
        "../scripts/plot_case_overlays.py"


rule evaluate:
    input:
        rules.evaluate_validation.output,
        rules.plot_case_overlays.output,
        rules.plot_test_overlays.output,
        rules.plot_training.output,
        rules.baseline_classifier.output,
        f"{RESULTS}/predictions/test",
