"""Segmentation of the multi-task trainer against stock nnUNetTrainer with the same schedule.

Trains `nnUNetTrainerStockSchedule` (stock nnUNetTrainer, only the epoch/iteration counts and
learning rate of the workflow config) on the preprocessed data of a finished workflow run, predicts
the validation split with stock nnUNetPredictor (same mirroring), and prints whole-pancreas and
lesion DSC next to the multi-task model's `results/metrics/summary.json`.

Usage: python benchmarks/segmentation_vs_stock.py [RESULTS_DIR]   (default: results)
"""

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def main() -> None:
    from pancreas_mtl.evaluation.metrics import case_dice, load_label_map
    from pancreas_mtl.evaluation.validation import validation_references
    from pancreas_mtl.layout import raw_image
    from pancreas_mtl.nnunet_env import ensure_ext_trainer_path, set_nnunet_paths, trainer_settings
    from pancreas_mtl.training.settings import settings_from_config

    results = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "results").resolve()
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    set_nnunet_paths(results / "nnUNet_raw", results / "nnUNet_preprocessed", results / "nnUNet_results")
    ensure_ext_trainer_path()
    os.environ["nnUNet_extTrainer"] += os.pathsep + str(HERE / "stock_trainer")
    os.environ["nnUNet_n_proc_DA"] = str(config["train"]["data_augmentation_workers"])
    torch.set_num_threads(config["threads"])

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.run.run_training import get_trainer_from_args

    dataset, conf, plans = "501", config["plan"]["configuration"], "nnUNetPlans"
    with trainer_settings(settings_from_config(config["train"])):
        trainer = get_trainer_from_args(dataset, conf, 0, "nnUNetTrainerStockSchedule", plans,
                                        device=torch.device("cpu"))
    if not (Path(trainer.output_folder) / "checkpoint_final.pth").exists():
        trainer.run_training()
    raw = results / "nnUNet_raw" / "Dataset501_PancreasMTL"
    refs = validation_references(raw, results / "dataset" / "subtypes.csv")
    out = Path(tempfile.mkdtemp())
    predictor = nnUNetPredictor(use_mirroring=config["predict"]["tta"], device=torch.device("cpu"),
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(trainer.output_folder_base, [0])
    predictor.predict_from_files_sequential(
        [[str(raw_image(raw, c, "validation"))] for c, _, _ in refs], str(out)
    )
    scores = [case_dice(load_label_map(out / f"{c}.nii.gz"), load_label_map(ref)) for c, ref, _ in refs]
    stock = {k: float(np.mean([s[k] for s in scores])) for k in ("whole_pancreas_dsc", "lesion_dsc")}
    ours = json.loads((results / "metrics" / "summary.json").read_text())
    for key in ("whole_pancreas_dsc", "lesion_dsc"):
        print(f"{key}: stock nnUNetTrainer {stock[key]:.3f}, multi-task {ours[key]:.3f}, "
              f"difference {ours[key] - stock[key]:+.3f}")


if __name__ == "__main__":
    main()
