rule baseline_classifier:
    input:
        raw=rules.ingest_cohort.output.raw,
        subtypes=rules.ingest_cohort.output.subtypes,
        train_predictions=f"{RESULTS}/predictions/train",
        predictions=f"{RESULTS}/predictions/validation",
        test_predictions=f"{RESULTS}/predictions/test",
    output:
        metrics=report(
            f"{RESULTS}/metrics/baseline.json",
            caption="../report/baseline.rst",
            category="Metrics",
        ),
    log:
        f"{RESULTS}/logs/baseline_classifier/baseline_classifier.log",
    conda:
        ENV_TOOLS
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        test_labels=TEST_LABELS or "",
    script:
        "../scripts/baseline_classifier.py"
