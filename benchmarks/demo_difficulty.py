"""How hard is the demo's subtype task on TRUE lesion masks? First-order ceiling vs richer radiomics.

Generates a labelled demo cohort (hard and quick by default, same seed and size), reads every case
back from its files and prints the stratified 5-fold cross-validated macro-F1 (repeated with three
shuffles; mean and spread over the 15 folds) of:

- first-order: a logistic regression on the true lesion's mean, spread, contrast to the pancreas and
  volume (`lesion_features` of pancreas_mtl.evaluation.baseline), the issue's ceiling;
- the baseline's nine features (the four above plus parenchyma HU, edge and core contrast,
  bounding-box fill, components), logistic regression and random forest;
- richer radiomics: the nine plus the workflow's case descriptor (pancreas_mtl.training.descriptors:
  intensity percentiles relative to the pancreas, fluid and bright fractions, texture, core against
  periphery, rim, edge gradient and sharpness, sphericity, elongation, the duct and the gland on
  either side of the lesion, the gland's histogram) on the true masks at the image's own
  resolution; logistic regression and random forest.

Usage: python benchmarks/demo_difficulty.py [--cases 120] [--seed 11] [--difficulty hard quick]
       [--n-subtypes 3] [--workers 2]
"""

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import RepeatedStratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pancreas_mtl.demo import make_demo_cohort  # noqa: E402
from pancreas_mtl.evaluation.baseline import FEATURES, lesion_features  # noqa: E402
from pancreas_mtl.training.descriptors import NAMES as DESCRIPTOR_NAMES  # noqa: E402
from pancreas_mtl.training.descriptors import case_descriptor  # noqa: E402

FIRST_ORDER = ("lesion_mean_hu", "lesion_std_hu", "lesion_contrast_hu", "lesion_volume_ml")
def cohort_table(out_dir, summary):
    rows, subtypes = [], []
    for record in summary["cases"]:
        if record["mask"] is None:
            continue
        image_file = nib.load(out_dir / record["image"])
        image = image_file.get_fdata(dtype=np.float32)
        labels = np.rint(np.asanyarray(nib.load(out_dir / record["mask"]).dataobj)).astype(np.uint8)
        zooms = image_file.header.get_zooms()
        descriptor = case_descriptor(image, (labels > 0).astype(np.float32), (labels == 2).astype(np.float32), zooms[:3])
        rows.append({**lesion_features(image, labels, zooms), **dict(zip(DESCRIPTOR_NAMES, descriptor))})
        subtypes.append(record["subtype"])
    names = list(rows[0])
    return np.array([[row[n] for n in names] for row in rows]), np.array(subtypes), names


def models(seed):
    return {
        "logistic regression": make_pipeline(
            StandardScaler(), LogisticRegression(max_iter=5000, class_weight="balanced")
        ),
        "random forest": RandomForestClassifier(
            n_estimators=300, class_weight="balanced", random_state=seed, n_jobs=1
        ),
    }


def cv_macro_f1(model, x, y, seed):
    folds = RepeatedStratifiedKFold(n_splits=5, n_repeats=3, random_state=seed)
    scores = cross_val_score(model, x, y, cv=folds, scoring="f1_macro")
    return scores.mean(), scores.std()


def measure(difficulty, n_cases, n_subtypes, seed, workers, root):
    out_dir = Path(root) / difficulty
    n_train = int(round(0.7 * n_cases))
    start = time.perf_counter()
    summary = make_demo_cohort(
        out_dir,
        n_train=n_train,
        n_validation=n_cases - n_train,
        n_test=0,
        seed=seed,
        workers=workers,
        n_subtypes=n_subtypes,
        difficulty=difficulty,
    )
    generated = time.perf_counter() - start
    x, y, names = cohort_table(out_dir, summary)
    columns = {name: i for i, name in enumerate(names)}
    sets = {
        "first-order (mean, spread, contrast, volume)": (FIRST_ORDER, ("logistic regression", "random forest")),
        "baseline's nine features": (FEATURES, ("logistic regression", "random forest")),
        f"richer radiomics ({len(names)} features)": (names, ("logistic regression", "random forest")),
    }
    small = []
    for record in summary["cases"]:
        labels = np.rint(np.asanyarray(nib.load(out_dir / record["mask"]).dataobj))
        volume = (labels == 2).sum() * math.prod(record["spacing"])
        small.append((6 * volume / math.pi) ** (1 / 3) < 5.0)
    print(
        f"\n{difficulty} demo, seed {seed}: {len(y)} labelled cases, subtypes "
        f"{np.bincount(y).tolist()}, lesions under 5 mm {np.mean(small):.0%}, generated in {generated:.0f} s"
    )
    print("| features | model | 5-fold CV macro-F1 (3 repeats), mean +- sd |")
    print("|---|---|---|")
    for label, (features, model_names) in sets.items():
        xs = x[:, [columns[f] for f in features]]
        for model_name in model_names:
            mean, sd = cv_macro_f1(models(seed)[model_name], xs, y, seed)
            print(f"| {label} | {model_name} | {mean:.3f} +- {sd:.3f} |")
    return x, y, names


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=120, help="labelled cases per cohort")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--n-subtypes", type=int, default=3)
    parser.add_argument("--difficulty", nargs="+", default=["hard", "quick"], choices=["hard", "quick"])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as root:
        for difficulty in args.difficulty:
            measure(difficulty, args.cases, args.n_subtypes, args.seed, args.workers, root)


if __name__ == "__main__":
    main()
