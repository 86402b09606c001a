"""Which inputs should the subtype classifier read? Compared on one trained model, with intervals.

Takes a finished workflow run, predicts every training, validation and test case with its fold-0
model as deployment does (nnU-Net preprocessing, Gaussian tiles, test-time mirroring as
`predict.tta`), and keeps per case the head's output-layer inputs and the case descriptor, both
from the network's own predicted regions. Each feature set is fitted on the training cases only
(`fit_case_stage`: class-weighted logistic regression, penalty chosen by cross-validation on the
training cases) and scored on validation and, where the run knows the test labels, test:
macro-F1 with a 95% percentile bootstrap interval over cases.

- `image_statistics`: the head restricted to first-order statistics (its 11 pooled means and
  spreads of the image in and around the lesion);
- `first_order`: the descriptor's soft-weighted lesion mean, spread, volume and parenchyma level;
- `head`: the head's hidden layer and image statistics (the refit output layer's inputs);
- `descriptor`, `descriptor_and_image_statistics`: structure and context;
- `auto`: what the workflow deploys (`train.case_stage: auto`).

The radiomics baseline of the same run (`metrics/baseline.json`, fitted on predicted training
masks) is printed beside them.

Usage: python benchmarks/subtype_features.py [RESULTS_DIR] [--configfile FILE ...] [--json OUT]
"""

import argparse
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

SETS = ("image_statistics", "first_order", "head", "descriptor", "descriptor_and_image_statistics", "auto")


def load_config(files) -> dict:
    from snakemake.utils import update_config

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for name in files:
        update_config(config, yaml.safe_load(Path(name).read_text()))
    return config


def case_rows(results: Path, config: dict) -> tuple[dict, int]:
    from pancreas_mtl.inference.predictor import load_predictor
    from pancreas_mtl.layout import raw_image, read_subtype_table, read_test_labels
    from pancreas_mtl.nnunet_env import dataset_name, model_folder_name, plans_identifier, trainer_name

    dataset = dataset_name(config["dataset"]["id"], config["dataset"]["name"])
    plans = plans_identifier(config["plan"]["planner"])
    model = results / "nnUNet_results" / dataset / model_folder_name(
        trainer_name(config["train"]["head"]), plans, config["plan"]["configuration"]
    )
    predictor = load_predictor(model, [0], device="cpu", tta=config["predict"]["tta"],
                               mirror_batch=config["predict"]["mirror_batch"])  # fmt: skip
    net = predictor.network.eval()
    raw = results / "nnUNet_raw" / dataset
    table = read_subtype_table(results / "dataset" / "subtypes.csv")
    labels = {}
    for split in ("train", "validation"):
        part = table[table["split"] == split]
        labels[split] = dict(zip(part["case_id"].astype(str), part["subtype"].astype(int)))
    test_labels = Path(config["test_labels_dir"] or results / "demo" / "test_labels")
    if test_labels.is_dir():
        found = read_test_labels(test_labels)
        labels["test"] = {c: s for c, (_, s) in found.items() if s is not None}
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    rows = {}
    with torch.no_grad():
        for split, cases in labels.items():
            rows[split] = []
            for case, subtype in sorted(cases.items()):
                data, _, _ = preprocessor.run_case(
                    [str(raw_image(raw, case, split))], None, predictor.plans_manager,
                    predictor.configuration_manager, predictor.dataset_json,
                )  # fmt: skip
                data = torch.from_numpy(data)
                logits, evidence = predictor.case_logits_and_evidence(data)
                rows[split].append({
                    "case": case, "y": int(subtype),
                    "head": net.hidden_features(evidence)[0].float().numpy(),
                    "descriptor": predictor.case_descriptor(data, logits)[0].numpy(),
                })  # fmt: skip
            print(f"{split}: {len(rows[split])} cases pooled", flush=True)
    return rows, net.head.classifier[0].out_features


def main(argv=None) -> None:
    from sklearn.metrics import f1_score

    from pancreas_mtl.evaluation.metrics import bootstrap_ci
    from pancreas_mtl.nnunet_env import ensure_ext_trainer_path, set_nnunet_paths
    from pancreas_mtl.training.case_stage import fit_case_stage
    from pancreas_mtl.training.trainer import class_weights

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", default=str(REPO / "results"))
    parser.add_argument("--configfile", nargs="*", default=[])
    parser.add_argument("--json", default=None, help="write the table as JSON here")
    parser.add_argument("--cache", default=None,
                        help="pickle of the pooled cases: read if it exists, else written after pooling")
    args = parser.parse_args(argv)
    results = Path(args.results).resolve()
    config = load_config(args.configfile)
    set_nnunet_paths(results / "nnUNet_raw", results / "nnUNet_preprocessed", results / "nnUNet_results")
    ensure_ext_trainer_path()
    torch.set_num_threads(config["threads"])
    cache = Path(args.cache) if args.cache else None
    if cache is not None and cache.is_file():
        rows, n_hidden = pickle.loads(cache.read_bytes())
    else:
        rows, n_hidden = case_rows(results, config)
        if cache is not None:
            cache.write_bytes(pickle.dumps((rows, n_hidden)))

    def arrays(split):
        part = rows[split]
        return (np.stack([r["head"] for r in part]), np.stack([r["descriptor"] for r in part]),
                np.array([r["y"] for r in part]))  # fmt: skip

    head_tr, desc_tr, y_tr = arrays("train")
    k = int(y_tr.max()) + 1
    weights = class_weights(list(y_tr), config["train"]["class_weighting"], k)
    c_grid = config["train"]["case_stage_c"]
    scored = [s for s in ("validation", "test") if s in rows]
    out = {"n": {s: len(rows[s]) for s in rows}, "sets": {}}

    def macro(y, p):
        return f1_score(y, p, average="macro", labels=list(range(k)), zero_division=0)

    print("| inputs | chosen | " + " | ".join(f"{s} macro-F1 [95% CI]" for s in scored) + " |")
    print("|---|---|" + "---|" * len(scored))
    for name in SETS:
        fit = fit_case_stage(head_tr, desc_tr, y_tr, weights, n_hidden, choice=name, c_grid=c_grid)
        entry = {"feature_set": fit.feature_set, "c": fit.c, "cv_macro_f1": fit.cv}
        cells = []
        for split in scored:
            head, desc, y = arrays(split)
            x = np.concatenate([head, desc], 1)
            predicted = np.argmax(((x - fit.mean) / fit.scale) @ fit.weight.T + fit.bias, 1)
            value = macro(y, predicted)
            low, high = bootstrap_ci((y, predicted), lambda a, b: macro(a, b))
            entry[split] = {"macro_f1": value, "ci95": [low, high],
                            "predictions": dict(zip([r["case"] for r in rows[split]], predicted.tolist()))}
            cells.append(f"{value:.3f} [{low:.2f}, {high:.2f}]")
        out["sets"][name] = entry
        print(f"| {name} | {fit.feature_set}, C={fit.c:g} | " + " | ".join(cells) + " |", flush=True)
    baseline = results / "metrics" / "baseline.json"
    if baseline.is_file():
        found = json.loads(baseline.read_text())
        for model in ("logistic_regression", "random_forest"):
            cells = []
            for split in scored:
                part = found.get(model, {})
                m = (part if split == "validation" else part.get(split, {})).get("predicted_masks")
                cells.append("-" if m is None else f"{m['macro_f1']:.3f} [{m['macro_f1_ci95'][0]:.2f}, {m['macro_f1_ci95'][1]:.2f}]")
            print(f"| radiomics baseline, {model.replace('_', ' ')} (metrics/baseline.json) | | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
