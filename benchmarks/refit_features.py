"""Which features should the case-level refit of the subtype head use?

Takes a trained multi-task model of a finished workflow run, pools every training and validation
case over the network's own predicted regions (as the trainer's refit and inference do), and fits
the same class-weighted, standardised logistic regression on four feature sets: the hidden layer
alone, all descriptor statistics (image and encoder stages 0-1), the image's 11 statistics alone,
and the hidden layer plus the image statistics (the output layer's inputs, the default). Prints
validation macro-F1 (fitted on the training split only) and, for a second opinion on more cases,
5-fold cross-validated macro-F1 over training + validation.

Usage: python benchmarks/refit_features.py [RESULTS_DIR] [C ...]   (default: results, C = 0.1 1)
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def case_features(results: Path, config: dict) -> dict:
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    from pancreas_mtl.inference.predictor import load_predictor
    from pancreas_mtl.layout import read_subtypes
    from pancreas_mtl.nnunet_env import dataset_name, model_folder_name, plans_identifier, trainer_name

    dataset = dataset_name(config["dataset"]["id"], config["dataset"]["name"])
    plans = plans_identifier(config["plan"]["planner"])
    model = results / "nnUNet_results" / dataset / model_folder_name(
        trainer_name(config["train"]["head"]), plans, config["plan"]["configuration"]
    )
    predictor = load_predictor(model, [0], device="cpu", tta=False)
    net = predictor.network.eval()
    preprocessed = results / "nnUNet_preprocessed" / dataset
    folder = str(preprocessed / predictor.configuration_manager.data_identifier)
    split = json.loads((preprocessed / "splits_final.json").read_text())[0]
    subtype = read_subtypes(str(results / "dataset" / "subtypes.csv"))
    rows = {"train": [], "val": []}
    with torch.no_grad():
        for part in rows:
            cases = infer_dataset_class(folder)(folder, split[part])
            for key in split[part]:
                _, evidence = predictor.case_logits_and_evidence(cases.load_case(key)[0])
                hard = {k: v for k, v in evidence.items() if not k.startswith("soft_")}
                rows[part].append({
                    "y": subtype[key],
                    "descriptor": net.head.describe(hard)[0].numpy(),
                    "output_inputs": net.hidden_features(evidence)[0].numpy(),
                })
    return {"rows": rows, "n_hidden": net.head.classifier[0].out_features}


def main() -> None:
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold

    from pancreas_mtl.training.trainer import class_weights, standardized_logistic_regression

    results = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "results").resolve()
    cs = [float(c) for c in sys.argv[2:]] or [0.1, 1.0]
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    from pancreas_mtl.nnunet_env import ensure_ext_trainer_path, set_nnunet_paths

    set_nnunet_paths(results / "nnUNet_raw", results / "nnUNet_preprocessed", results / "nnUNet_results")
    ensure_ext_trainer_path()
    torch.set_num_threads(config["threads"])
    found = case_features(results, config)
    n_hidden = found["n_hidden"]
    feature_sets = {
        "hidden layer": lambda r: r["output_inputs"][:n_hidden],
        "all statistics": lambda r: r["descriptor"],
        "image statistics": lambda r: r["output_inputs"][n_hidden:],
        "hidden + image (default)": lambda r: r["output_inputs"],
    }
    train, val = found["rows"]["train"], found["rows"]["val"]
    y_tr = np.array([r["y"] for r in train])
    y_va = np.array([r["y"] for r in val])
    y_all = np.concatenate([y_tr, y_va])

    def predict(x_fit, y_fit, x, c):
        coef, intercept = standardized_logistic_regression(
            x_fit, y_fit, class_weights(list(y_fit), "balanced", int(y_all.max()) + 1), c
        )
        return np.argmax(x @ coef.T + intercept, 1)

    print(f"{len(train)} training and {len(val)} validation cases")
    for name, pick in feature_sets.items():
        x_tr = np.stack([pick(r) for r in train])
        x_va = np.stack([pick(r) for r in val])
        x_all = np.vstack([x_tr, x_va])
        for c in cs:
            f1_val = f1_score(y_va, predict(x_tr, y_tr, x_va, c), average="macro")
            cv = np.zeros_like(y_all)
            for fit, held in StratifiedKFold(5, shuffle=True, random_state=0).split(x_all, y_all):
                cv[held] = predict(x_all[fit], y_all[fit], x_all[held], c)
            f1_cv = f1_score(y_all, cv, average="macro")
            print(f"{name:26s} {x_tr.shape[1]:4d} features  C={c:<4}  validation macro-F1 "
                  f"{f1_val:.3f}  5-fold CV macro-F1 {f1_cv:.3f}")


if __name__ == "__main__":
    main()
