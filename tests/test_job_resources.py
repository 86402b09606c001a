"""CPUs and memory of training jobs follow the augmentation workers."""

from pancreas_mtl.job_resources import training_cpus, training_mem_mb


def test_every_worker_gets_a_cpu_beside_the_training_process():
    assert training_cpus(12, threads=12) == 14  # config/gpu.yaml: 12 workers, never 13 on 4 cores
    assert training_cpus(30, threads=12) == 32  # an A100-class GPU's 28-32 workers
    assert training_cpus(1, threads=2) == 3  # the CPU-scale default
    assert training_cpus(0, threads=8) == 8  # augmentation in the main process: CPU training threads


def test_memory_grows_with_workers():
    assert training_mem_mb(0) == 12000
    assert training_mem_mb(12) == 42000
    assert training_mem_mb(13) - training_mem_mb(12) == 2500

