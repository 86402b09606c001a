"""GPU claiming and the CUDA check, on CPU with fake GPU counts."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from pancreas_mtl import gpu_slots
from pancreas_mtl.gpu_slots import (
    GpuUnavailableError,
    check_gpu_usable,
    claim_gpu,
    gpu_problem,
    nvidia_gpu_count,
    parse_time_device_problem,
    release_gpus,
)


@pytest.fixture(autouse=True)
def _release():
    yield
    release_gpus()


def test_gpu_count_from_driver_files(tmp_path):
    proc, dev = tmp_path / "proc", tmp_path / "dev"
    dev.mkdir()
    assert nvidia_gpu_count(proc, dev) == 0
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (dev / name).touch()
    assert nvidia_gpu_count(proc, dev) == 2
    for bus in ("0000:17:00.0", "0000:65:00.0", "0000:b3:00.0"):
        (proc / bus).mkdir(parents=True)
    assert nvidia_gpu_count(proc, dev) == 3


def test_jobs_get_distinct_gpus_then_wait(tmp_path, monkeypatch):
    envs = [{} for _ in range(3)]
    assert claim_gpu("auto", gpu_count=2, lock_dir=tmp_path, environ=envs[0]) == 0
    assert claim_gpu("cuda", gpu_count=2, lock_dir=tmp_path, environ=envs[1]) == 1
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs[:2]] == ["0", "1"]

    # both held: the third job waits until one is released
    def release_one(seconds):
        gpu_slots._held.pop(0).close()

    monkeypatch.setattr(gpu_slots.time, "sleep", release_one)
    assert claim_gpu("auto", gpu_count=2, lock_dir=tmp_path, environ=envs[2]) == 0
    assert envs[2]["CUDA_VISIBLE_DEVICES"] == "0"


def test_lock_is_held_across_processes(tmp_path):
    assert claim_gpu("auto", gpu_count=2, lock_dir=tmp_path, environ={}) == 0
    child = textwrap.dedent(
        f"""
        from pancreas_mtl.gpu_slots import claim_gpu
        env = {{}}
        print(claim_gpu("auto", gpu_count=2, lock_dir={str(tmp_path)!r}, environ=env), env["CUDA_VISIBLE_DEVICES"])
        """
    )
    run = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert run.stdout.split() == ["1", "1"], run.stderr
    # the child's claim ended with the child
    assert claim_gpu("auto", gpu_count=2, lock_dir=tmp_path, environ={}) == 1


@pytest.mark.parametrize(
    "device,environ",
    [
        ("cpu", {}),
        ("cuda:1", {}),
        ("auto", {"CUDA_VISIBLE_DEVICES": "3"}),
        ("auto", {"SLURM_JOB_ID": "42"}),
    ],
)
def test_nothing_claimed_when_something_else_chose(tmp_path, device, environ):
    before = dict(environ)
    assert claim_gpu(device, gpu_count=4, lock_dir=tmp_path, environ=environ) is None
    assert environ == before


def test_nothing_claimed_without_gpus(tmp_path):
    environ = {}
    assert claim_gpu("auto", gpu_count=0, lock_dir=tmp_path, environ=environ) is None
    assert environ == {}


def test_cpu_and_usable_cuda_pass():
    assert gpu_problem("cpu", False, "2.8.0", None, 2, {}) is None
    assert gpu_problem("auto", True, "2.8.0", "12.6", 1, {}) is None
    assert gpu_problem("cuda:0", True, "2.8.0", "12.6", 1, {}) is None


def test_auto_without_gpu_hardware_runs_on_cpu():
    # e.g. a workstation without GPU, or a test cluster whose gres names no real device
    assert gpu_problem("auto", False, "2.8.0", "12.6", 0, {"CUDA_VISIBLE_DEVICES": "0"}) is None


def test_cpu_only_torch_on_a_gpu_node_stops():
    message = gpu_problem("auto", False, "2.8.0+cpu", None, 2, {"CUDA_VISIBLE_DEVICES": "1"})
    assert "train.device" in message and "'auto'" in message
    assert "CPU-only build" in message and "pytorch-gpu" in message and "CONDA_OVERRIDE_CUDA" in message
    assert "CUDA_VISIBLE_DEVICES='1'" in message
    assert "train.device: cpu" in message


def test_driver_too_old_stops():
    message = gpu_problem("auto", False, "2.8.0", "12.9", 1, {})
    assert "built for CUDA 12.9" in message and "driver" in message


def test_explicit_cuda_without_gpu_stops():
    message = gpu_problem("cuda", False, "2.8.0", "12.9", 0, {})
    assert "no NVIDIA GPU" in message and "train.device: cpu" in message


def test_check_uses_this_torch():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    check_gpu_usable("cpu", gpu_count=1)
    check_gpu_usable("auto", gpu_count=0)
    with pytest.raises(GpuUnavailableError, match="train.device"):
        check_gpu_usable("auto", gpu_count=1)


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_explicit_cuda_without_a_gpu_stops_at_parse_time_naming_the_key(device):
    message = parse_time_device_problem(device, gpu_count=0, submit_host=False, environ={})
    assert "train.device" in message and repr(device) in message and "train.device: cpu" in message


@pytest.mark.parametrize(
    "device,gpu_count,submit_host,environ",
    [
        ("cpu", 0, False, {}),
        ("auto", 0, False, {}),  # the default config runs anywhere
        ("cuda", 1, False, {}),
        ("cuda", 0, True, {}),  # sbatch here: the GPU jobs check on their nodes
        ("cuda", 0, False, {"SLURM_JOB_ID": "7"}),  # a job's own parse: its GPU step checks
    ],
)
def test_parse_time_device_check_passes(device, gpu_count, submit_host, environ):
    assert parse_time_device_problem(device, gpu_count, submit_host, environ) is None
