"""Staging the preprocessed dataset to node-local scratch for a training job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pancreas_mtl.scratch import STAGE_PREFIX, scratch_root, staged_preprocessed


@pytest.fixture
def dataset(tmp_path) -> Path:
    folder = tmp_path / "nnUNet_preprocessed" / "Dataset501_PancreasMTL"
    (folder / "nnUNetPlans_3d_cpu").mkdir(parents=True)
    (folder / "nnUNetPlans.json").write_text("{}")
    (folder / "splits_final.json").write_text("[]")
    (folder / "nnUNetPlans_3d_cpu" / "case_000.b2nd").write_bytes(b"\0" * 1000)
    return folder


def test_scratch_root_from_setting(tmp_path):
    assert scratch_root(False, {}) is None
    assert scratch_root(True, {"TMPDIR": "/node/tmp"}) == Path("/node/tmp")
    assert scratch_root(True, {}) is not None
    # --config node_local_scratch=true gives the string "true"
    assert scratch_root("true", {"TMPDIR": "/node/tmp"}) == Path("/node/tmp")
    assert scratch_root("False", {"TMPDIR": "/node/tmp"}) is None
    os.environ["PANCREAS_TEST_SCRATCH"] = str(tmp_path)
    try:
        assert scratch_root("$PANCREAS_TEST_SCRATCH/stage", {}) == tmp_path / "stage"
    finally:
        del os.environ["PANCREAS_TEST_SCRATCH"]
    with pytest.raises(ValueError, match="node_local_scratch"):
        scratch_root("$PANCREAS_TEST_UNSET_VARIABLE/x", {})


def test_staged_copy_is_used_then_removed(dataset, tmp_path):
    scratch = tmp_path / "node"
    environ = {"nnUNet_preprocessed": str(dataset.parent)}
    with staged_preprocessed(dataset, str(scratch), environ) as stage:
        assert stage.parent == scratch and stage.name.startswith(STAGE_PREFIX)
        assert environ["nnUNet_preprocessed"] == str(stage)
        copy = stage / dataset.name
        assert (copy / "nnUNetPlans_3d_cpu" / "case_000.b2nd").read_bytes() == b"\0" * 1000
        assert (copy / "splits_final.json").read_text() == "[]"
    assert environ == {"nnUNet_preprocessed": str(dataset.parent)}
    assert list(scratch.iterdir()) == []
    assert (dataset / "nnUNetPlans.json").is_file()  # the source is untouched


def test_staged_copy_is_removed_when_training_fails(dataset, tmp_path):
    environ = {"TMPDIR": str(tmp_path / "tmp")}
    with pytest.raises(RuntimeError):
        with staged_preprocessed(dataset, True, environ):
            raise RuntimeError("training crashed")
    assert list((tmp_path / "tmp").iterdir()) == []
    assert "nnUNet_preprocessed" not in environ


def test_staging_off_changes_nothing(dataset):
    environ = {"nnUNet_preprocessed": "/results/nnUNet_preprocessed"}
    with staged_preprocessed(dataset, False, environ) as stage:
        assert stage is None
        assert environ == {"nnUNet_preprocessed": "/results/nnUNet_preprocessed"}


JOB = """
import os, sys, time
from pancreas_mtl.scratch import stage_preprocessed_for_job
stage = stage_preprocessed_for_job(sys.argv[1], True)
print(os.environ["nnUNet_preprocessed"], flush=True)
if sys.argv[2] == "wait":
    time.sleep(60)
else:
    sys.stdin.readline()  # end normally once the test has seen the copy
"""


@pytest.mark.parametrize("ending", ["exit", "sigterm"])
def test_job_leaves_nothing_behind(dataset, tmp_path, ending):
    tmp = tmp_path / "job-tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(JOB), str(dataset), "wait" if ending == "sigterm" else "exit"],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    staged = Path(proc.stdout.readline().strip())
    assert staged.parent == tmp and (staged / dataset.name / "nnUNetPlans.json").is_file()
    if ending == "sigterm":
        proc.send_signal(signal.SIGTERM)  # what Slurm sends at the walltime
    else:
        proc.stdin.write("\n")
        proc.stdin.flush()
    # on SIGTERM the process removes the copy, then ends by the signal as it would have
    assert proc.wait(timeout=60) == (-signal.SIGTERM if ending == "sigterm" else 0)
    deadline = time.time() + 5
    while list(tmp.iterdir()) and time.time() < deadline:
        time.sleep(0.1)
    assert list(tmp.iterdir()) == []
