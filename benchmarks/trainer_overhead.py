"""Seconds per training iteration: the multi-task trainer against stock nnUNetTrainer.

Both trainers use the same plans, configuration and preprocessed data of an existing results
folder, and the multi-task trainer the settings of the workflow config; iterations are timed in
interleaved blocks after a warm-up. Prints the ratio (goal <= 1.10).

Usage: python benchmarks/trainer_overhead.py RESULTS_DIR [ITERATIONS] [CONFIG]
       (CONFIG defaults to config/config.yaml)
"""

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def build(trainer_name: str, dataset_id: int, configuration: str, plans: str):
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args(
        str(dataset_id), configuration, 0, trainer_name, plans, device=torch.device("cpu")
    )
    trainer.on_train_start()
    trainer.network.train()
    return trainer


def time_block(trainer, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        trainer.train_step(next(trainer.dataloader_train))
    return (time.perf_counter() - start) / n


def main() -> None:
    results = Path(sys.argv[1]).resolve()
    iterations = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    config_file = Path(sys.argv[3]) if len(sys.argv) > 3 else REPO / "config" / "config.yaml"
    from pancreas_mtl.nnunet_env import ensure_ext_trainer_path, plans_identifier, set_nnunet_paths
    from pancreas_mtl.nnunet_env import trainer_settings
    from pancreas_mtl.training.settings import settings_from_config

    config = yaml.safe_load(config_file.read_text())
    scratch = tempfile.mkdtemp()
    set_nnunet_paths(results / "nnUNet_raw", results / "nnUNet_preprocessed", scratch)
    ensure_ext_trainer_path()
    os.environ["nnUNet_extTrainer"] += os.pathsep + str(HERE / "stock_trainer")
    os.environ.setdefault("nnUNet_n_proc_DA", "1")
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    dataset_id, configuration = config["dataset"]["id"], config["plan"]["configuration"]
    plans = plans_identifier(config["plan"]["planner"])
    # time the full multi-task step, head loss included
    with trainer_settings({**settings_from_config(config["train"]), "cls_warmup_epochs": 0}):
        ours = build("nnUNetTrainerMultiTask", dataset_id, configuration, plans)
        stock = build("nnUNetTrainerStockSchedule", dataset_id, configuration, plans)
    for trainer in (ours, stock):
        time_block(trainer, 5)
    block = max(1, iterations // 4)
    times = {"stock": [], "multitask": []}
    for _ in range(4):
        times["stock"].append(time_block(stock, block))
        times["multitask"].append(time_block(ours, block))
    s, m = np.median(times["stock"]), np.median(times["multitask"])
    print(f"stock nnUNetTrainer:     {s:.3f} s/iteration")
    print(f"nnUNetTrainerMultiTask:  {m:.3f} s/iteration")
    print(f"ratio multitask/stock:   {m / s:.3f} (goal <= 1.10)")
    for trainer in (ours, stock):
        for loader in (trainer.dataloader_train, trainer.dataloader_val):
            if hasattr(loader, "_finish"):
                loader._finish()


if __name__ == "__main__":
    main()
