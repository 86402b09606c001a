"""How hard is the demo's subtype task on TRUE lesion masks? First-order ceiling vs richer radiomics.

Generates a labelled demo cohort (hard and quick by default, same seed and size), reads every case
back from its files and prints the stratified 5-fold cross-validated macro-F1 (repeated with three
shuffles; mean and spread over the 15 folds) of:

- first-order: a logistic regression on the true lesion's mean, spread, contrast to the pancreas and
  volume (`lesion_features` of pancreas_mtl.evaluation.baseline), the issue's ceiling;
- the baseline's nine features (the four above plus parenchyma HU, edge and core contrast,
  bounding-box fill, components), logistic regression and random forest;
- richer radiomics: the nine plus intensity percentiles relative to the pancreas, fluid and
  calcified fractions, core-minus-periphery contrast, edge sharpness, sphericity, texture, and the
  widest duct in the gland away from the lesion; logistic regression and random forest.

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
from scipy import ndimage
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import RepeatedStratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pancreas_mtl.demo import make_demo_cohort  # noqa: E402
from pancreas_mtl.evaluation.baseline import FEATURES, lesion_features  # noqa: E402

FIRST_ORDER = ("lesion_mean_hu", "lesion_std_hu", "lesion_contrast_hu", "lesion_volume_ml")
FLUID_HU = 25.0
CALCIFIED_HU = 200.0


def _mean(values):
    return float(values.mean()) if values.size else 0.0


def radiomics_features(image, labels, zooms) -> dict:
    """Structure and context of the true lesion beyond its first-order statistics."""
    lesion, parenchyma = labels == 2, labels == 1
    zooms = tuple(float(z) for z in zooms[:3])
    values = image[lesion]
    parenchyma_hu = float(np.median(image[parenchyma]))
    features = {
        f"p{q:02d}_minus_parenchyma_hu": float(np.percentile(values, q)) - parenchyma_hu
        for q in (5, 25, 50, 75, 95, 99)
    }
    features["fluid_fraction"] = float((values < FLUID_HU).mean())
    features["calcified_fraction"] = float((values > CALCIFIED_HU).mean())

    depth = ndimage.distance_transform_edt(lesion, sampling=zooms)
    deep = lesion & (depth > 0.5 * depth.max())
    features["core_minus_periphery_hu"] = _mean(image[deep]) - _mean(image[lesion & ~deep])

    sigma = [0.7 / z for z in zooms]
    gradient = ndimage.gaussian_gradient_magnitude(image, sigma)
    shell = ndimage.binary_dilation(lesion) & ~lesion
    boundary = lesion & ~ndimage.binary_erosion(lesion)
    step = abs(_mean(image[lesion & ~boundary] if (lesion & ~boundary).any() else values) - _mean(image[shell]))
    edge_gradient = _mean(gradient[shell | boundary])
    features["edge_gradient_hu_per_mm"] = edge_gradient
    features["edge_sharpness"] = edge_gradient / (step + 10.0)
    features["inner_gradient_hu_per_mm"] = _mean(gradient[lesion & ~boundary])
    log_response = ndimage.gaussian_laplace(image, [1.0 / z for z in zooms])
    features["texture_log_std"] = float(log_response[lesion & ~boundary].std()) if (lesion & ~boundary).any() else 0.0

    volume = lesion.sum() * math.prod(zooms)
    area = sum(
        np.count_nonzero(np.diff(np.pad(lesion, 1).astype(np.int8), axis=axis))
        * math.prod(z for i, z in enumerate(zooms) if i != axis)
        for axis in range(3)
    )
    features["sphericity"] = math.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / area

    # The duct: the widest fluid-dark tube in the gland away from the lesion (dilated upstream of PDAC).
    smoothed = ndimage.gaussian_filter(image, [0.6 / z for z in zooms])
    away = ndimage.distance_transform_edt(~lesion, sampling=zooms) > 3.0
    deep = ndimage.distance_transform_edt(labels > 0, sampling=zooms) > 1.5  # off the fat border
    dark = parenchyma & away & deep & (smoothed < (parenchyma_hu + 10.0) / 2)
    features["duct_diameter_mm"] = 2.0 * float(ndimage.distance_transform_edt(dark, sampling=zooms).max())
    features["duct_volume_ml"] = dark.sum() * math.prod(zooms) / 1000.0
    features["parenchyma_volume_ml"] = parenchyma.sum() * math.prod(zooms) / 1000.0
    return features


def cohort_table(out_dir, summary):
    rows, subtypes = [], []
    for record in summary["cases"]:
        if record["mask"] is None:
            continue
        image_file = nib.load(out_dir / record["image"])
        image = image_file.get_fdata(dtype=np.float32)
        labels = np.rint(np.asanyarray(nib.load(out_dir / record["mask"]).dataobj)).astype(np.uint8)
        zooms = image_file.header.get_zooms()
        rows.append({**lesion_features(image, labels, zooms), **radiomics_features(image, labels, zooms)})
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
