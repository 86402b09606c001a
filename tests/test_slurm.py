"""Snakemake on Slurm, on the one-node cluster that .ci/slurm/start.sh starts: through
profiles/slurm, and through a site profile of the kind a user writes (executor, account,
partition, job limit), which the workflow's own resources compose with.

Tests marked ``slurm`` skip when no Slurm client is installed or no node answers. On another
cluster, set SLURM_ACCOUNT and SLURM_PARTITION (a partition with GPUs) before running them.
"""

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

from pancreas_mtl.job_resources import training_cpus, training_mem_mb
from pancreas_mtl.scratch import STAGE_PREFIX

REPO = Path(__file__).resolve().parents[1]
SLURM_PROFILE = REPO / "profiles" / "slurm"
# What .ci/slurm/start.sh creates; the environment wins, as it does for the profile.
CI_ACCOUNT = os.environ.get("CI_SLURM_ACCOUNT", "pancreas_ci")
CI_PARTITION = os.environ.get("CI_SLURM_PARTITION", "debug")
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+) \(log: \S*/rule_([^/\s]+)/")


def slurm_down_reason() -> str | None:
    """Why Slurm cannot run jobs here, or None when a node is up."""
    if shutil.which("sinfo") is None:
        return (
            "no Slurm client (sinfo not found); start a cluster with .ci/slurm/start.sh"
        )
    try:
        sinfo = subprocess.run(
            ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        return "Slurm cluster down: sinfo timed out"
    if sinfo.returncode != 0:
        last_line = (sinfo.stderr.strip().splitlines() or ["no message"])[-1]
        return f"Slurm cluster down: sinfo failed: {last_line}"
    states = sinfo.stdout.split()
    if not any(s.startswith(("idle", "mix", "alloc", "comp")) for s in states):
        return f"Slurm cluster down: no usable node (states: {states})"
    return None


@pytest.fixture(scope="module")
def slurm_cluster():
    reason = slurm_down_reason()
    if reason:
        pytest.skip(reason)


def run_snakemake_slurm(
    workdir: Path,
    targets=(),
    extra_args=(),
    *,
    timeout: int = 600,
    env: dict | None = None,
    profile: Path = SLURM_PROFILE,
) -> subprocess.CompletedProcess:
    """Run Snakemake in ``workdir`` through ``profile`` and return the finished process.

    ``timeout -k`` bounds the run: when a job vanishes from sacct/squeue the plugin polls
    forever and ignores SIGTERM. The account and partition default to the CI cluster's;
    pass ``--snakefile`` in ``extra_args`` to run a workflow that lives elsewhere.
    """
    run_env = dict(os.environ if env is None else env)
    run_env.setdefault("SLURM_ACCOUNT", CI_ACCOUNT)
    run_env.setdefault("SLURM_PARTITION", CI_PARTITION)
    cmd = [
        "timeout", "-k", "10", str(timeout),
        sys.executable, "-m", "snakemake",
        "--profile", str(profile),
        # The plugin otherwise waits 40 s before its first status check.
        "--slurm-init-seconds-before-status-checks", "5",
        *targets,
        *extra_args,
    ]  # fmt: skip
    return subprocess.run(
        cmd,
        cwd=workdir,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=timeout + 60,
    )


def slurm_job_ids(output: str) -> dict[str, list[str]]:
    """Slurm job ids per rule, read from Snakemake's log of a run through the plugin."""
    ids: dict[str, list[str]] = {}
    for job_id, rule in SUBMITTED.findall(output):
        ids.setdefault(rule, []).append(job_id)
    return ids


def allocated_tres(job_id: str) -> dict[str, str]:
    """TRES that Slurm allocated to a job, e.g. {"cpu": "4", "gres/gpu": "1", ...}."""
    sacct = subprocess.run(
        ["sacct", "-X", "-n", "-j", job_id, "-o", "AllocTRES%80,JobName%40", "-P"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    tres = sacct.stdout.strip().splitlines()[0].split("|")[0]
    return dict(item.split("=", 1) for item in tres.split(",") if item)


def write_snakefile(workdir: Path, body: str) -> None:
    (workdir / "Snakefile").write_text(textwrap.dedent(body))


@pytest.mark.slurm
def test_profile_runs_cpu_and_gpu_jobs_on_slurm(tmp_path, slurm_cluster):
    write_snakefile(
        tmp_path,
        """
        localrules:
            summarize,


        rule all:
            input:
                "summary.txt",


        rule summarize:
            input:
                "trained.txt",
            output:
                "summary.txt",
            shell:
                "echo job=${{SLURM_JOB_ID:-none}} > {output}"


        rule prepare:
            output:
                "prepared.txt",
            resources:
                mem_mb=500,
                runtime=5,
            shell:
                "echo prepared > {output}"


        rule train_fold:
            input:
                "prepared.txt",
            output:
                "trained.txt",
            threads: 3
            resources:
                gpu=1,
                cpus_per_gpu=3,
                mem_mb=3000,
            shell:
                "echo job=$SLURM_JOB_ID cuda=${{CUDA_VISIBLE_DEVICES:-none}} > {output}"
        """,
    )
    run = run_snakemake_slurm(tmp_path, ["all"])
    assert run.returncode == 0, run.stdout + run.stderr

    jobs = slurm_job_ids(run.stdout + run.stderr)
    assert set(jobs) == {"prepare", "train_fold"}  # the localrule ran without a Slurm job
    assert (tmp_path / "summary.txt").read_text() == "job=none\n"
    (train_id,) = jobs["train_fold"]
    (prepare_id,) = jobs["prepare"]

    # The rule ran inside its Slurm job, with the GPU bound to it.
    assert (tmp_path / "prepared.txt").read_text() == "prepared\n"
    trained = dict(
        kv.split("=", 1) for kv in (tmp_path / "trained.txt").read_text().split()
    )
    assert trained["job"] == train_id
    assert trained["cuda"] != "none"

    # The rule's own resources reached sbatch through the profile; `prepare` got no GPU.
    train_tres = allocated_tres(train_id)
    assert train_tres["gres/gpu"] == "1"
    assert train_tres["cpu"] == "3"
    assert train_tres["mem"] == "3000M"
    prepare_tres = allocated_tres(prepare_id)
    assert "gres/gpu" not in prepare_tres
    assert prepare_tres["mem"] == "500M"


def test_slurm_profile_takes_account_and_partitions_from_environment(tmp_path):
    write_snakefile(
        tmp_path,
        """
        rule all:
            input:
                "prepare.txt",
                "train_fold.txt",


        rule prepare:
            output:
                "prepare.txt",
            run:
                with open(output[0], "w") as f:
                    print(resources.slurm_account, resources.slurm_partition, file=f)


        use rule prepare as train_fold with:
            output:
                "train_fold.txt",
        """,
    )

    def resolved(env_vars: dict) -> dict[str, list[str]]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env.update(env_vars)
        for out in ("prepare.txt", "train_fold.txt"):
            (tmp_path / out).unlink(missing_ok=True)
        # The local executor evaluates the profile's resources without a cluster.
        run = subprocess.run(
            [sys.executable, "-m", "snakemake", "--profile", str(SLURM_PROFILE),
             "--executor", "local", "--cores", "1"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
        return {
            rule: (tmp_path / f"{rule}.txt").read_text().split()
            for rule in ("prepare", "train_fold")
        }

    assert resolved({}) == {"prepare": [], "train_fold": []}
    assert resolved({"SLURM_ACCOUNT": "12345", "SLURM_PARTITION": "cpu-short"}) == {
        "prepare": ["12345", "cpu-short"],
        "train_fold": ["12345", "cpu-short"],
    }
    assert resolved(
        {
            "SLURM_ACCOUNT": "lab",
            "SLURM_PARTITION": "cpu",
            "SLURM_GPU_PARTITION": "gpu-a100",
        }
    ) == {"prepare": ["lab", "cpu"], "train_fold": ["lab", "gpu-a100"]}


LIGHT_RULES = {"write_splits", "evaluate_validation", "plot_training", "baseline_classifier"}


def write_site_profile(folder: Path) -> Path:
    """A user's own site profile: executor, account, partition, job limit, nothing else."""
    folder.mkdir(parents=True, exist_ok=True)
    site = {
        "executor": "slurm",
        "jobs": 4,
        "default-resources": {"slurm_account": CI_ACCOUNT, "slurm_partition": CI_PARTITION},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(site))
    return folder


@pytest.mark.slurm
@pytest.mark.workflow
def test_pipeline_runs_through_a_site_profile(tmp_path, slurm_cluster):
    results = tmp_path / "results"
    scratch = tmp_path / "node-tmp"
    scratch.mkdir()
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    # Snakemake merges --configfile into the defaults key by key, not section by section
    update_config(config, yaml.safe_load((REPO / "tests" / "data" / "tiny.yaml").read_text()))
    # what runs where is the point here, not what the model learns: 20 iterations instead of the
    # tiny run's 300 (the workflow tests train that one already; this one took 13 min of CI's 34)
    short = tmp_path / "short.yaml"
    short.write_text(yaml.safe_dump({"train": {"epochs": 2, "iterations_per_epoch": 10}}))
    run = run_snakemake_slurm(
        REPO,
        ["all"],
        ["--configfile", str(REPO / "tests" / "data" / "tiny.yaml"), str(short),
         "--config", f"results_dir={results}", "node_local_scratch=true"],
        timeout=2400,
        # Slurm passes the submitting environment on: the jobs' $TMPDIR is the node's scratch
        env={**os.environ, "TMPDIR": str(scratch)},
        profile=write_site_profile(tmp_path / "site"),
    )  # fmt: skip
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    jobs = slurm_job_ids(output)
    assert {"ingest_cohort", "plan_and_preprocess", "train_fold", "predict_split"} <= set(jobs)

    # Training got a GPU and the CPUs and memory the workflow derives from its augmentation workers.
    workers = config["train"]["data_augmentation_workers"]
    (train_id,) = jobs["train_fold"]
    train_tres = allocated_tres(train_id)
    assert train_tres["gres/gpu"] == "1"
    assert train_tres["cpu"] == str(training_cpus(workers, config["threads"]))
    assert train_tres["mem"] == f"{training_mem_mb(workers)}M"
    for predict_id in jobs["predict_split"]:
        assert allocated_tres(predict_id)["gres/gpu"] == "1"
    assert "gres/gpu" not in allocated_tres(jobs["ingest_cohort"][0])

    # Light rules ran in the Snakemake process, without a Slurm job.
    assert not LIGHT_RULES & set(jobs)
    for rule in LIGHT_RULES:
        assert f"localrule {rule}:" in output, rule

    # Training read a staged copy of the preprocessed data and left nothing behind.
    train_log = (results / "logs" / "train_fold" / "fold_0.log").read_text()
    assert f"staged {results}/nnUNet_preprocessed/" in train_log
    assert f" to {scratch}/{STAGE_PREFIX}" in train_log
    assert not list(scratch.glob(f"{STAGE_PREFIX}*"))

    summary = (results / "metrics" / "summary.json").read_text()
    assert '"macro_f1"' in summary
