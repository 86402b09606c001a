rule make_demo_cohort:
    output:
        cohort=directory(f"{RESULTS}/demo/cohort"),
        test_labels=directory(f"{RESULTS}/demo/test_labels"),
    log:
        f"{RESULTS}/logs/make_demo_cohort/make_demo_cohort.log",
    conda:
        ENV_TOOLS
    threads: config["threads"]
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        **config["demo"],
    script:
        "../scripts/make_demo_cohort.py"
