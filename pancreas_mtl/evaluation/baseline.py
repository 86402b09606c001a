"""Baseline subtype classifiers on nine hand-made lesion features, to compare with the learned head.

A logistic regression and a random forest are fitted on features of the training cases' predicted
masks (the final model's predictions of its own training cases: the same way the workflow's
classifier is fitted) and scored on the validation cases, and on the test cases where their labels
are known, twice: with the predicted masks (what the classifier sees at test time) and with the
reference masks (an oracle segmentation, for reference). Every macro-F1 carries a 95% percentile
bootstrap interval over cases.

Empty-mask convention, so that every feature is finite: a case without lesion voxels gets the
parenchyma mean as its lesion mean, hence zero contrasts, and zero std, volume, fill and components.
A case without parenchyma voxels gets the lesion mean as its parenchyma mean (zero contrast); with
neither, every feature is 0. An edge or core contrast whose shell or eroded core is empty is 0.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..layout import mask_file_name, raw_image, raw_label, read_subtype_table, table_num_subtypes
from .metrics import bootstrap_ci, classification_metrics, finite_or_none, load_label_map, macro_f1

log = logging.getLogger(__name__)

PARENCHYMA, LESION = 1, 2
FEATURES = (
    "lesion_mean_hu",
    "lesion_std_hu",
    "lesion_volume_ml",
    "parenchyma_mean_hu",
    "lesion_contrast_hu",
    "edge_contrast_hu",
    "core_contrast_hu",
    "lesion_bbox_fill",
    "lesion_components",
)
MODELS = ("logistic_regression", "random_forest")


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean(dtype=np.float64)) if values.size else None


def lesion_features(image: np.ndarray, labels: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Nine features of the lesion (label 2) and parenchyma (label 1) of one CT image in HU.

    - lesion_mean_hu, lesion_std_hu: attenuation and its spread (population std) over lesion voxels;
    - lesion_volume_ml: lesion voxel count times the voxel volume from `spacing` (mm);
    - parenchyma_mean_hu and lesion_contrast_hu = lesion mean - parenchyma mean;
    - edge_contrast_hu: mean of the 1-voxel shell just outside the lesion (6-connected dilation, any label)
      minus the lesion mean;
    - core_contrast_hu: mean of the lesion eroded by one voxel minus the mean of the voxels that erosion
      removes; large for sharp margins around a homogeneous lesion, small for blurred ones;
    - lesion_bbox_fill: lesion voxels / voxels of the lesion's bounding box (1 for a box, ~0.52 for a ball);
    - lesion_components: number of 6-connected lesion components.

    Empty masks follow the module's convention, so every value is finite.
    """
    image, labels = np.asarray(image), np.asarray(labels)
    if image.shape != labels.shape:
        raise ValueError(f"image shape {image.shape} differs from label shape {labels.shape}")
    if len(spacing) < labels.ndim:
        raise ValueError(f"spacing {tuple(spacing)} has fewer than {labels.ndim} entries")
    lesion = labels == LESION
    lesion_mean = _mean(image[lesion])
    parenchyma_mean = _mean(image[labels == PARENCHYMA])
    if lesion_mean is None and parenchyma_mean is None:
        return dict.fromkeys(FEATURES, 0.0)
    if parenchyma_mean is None:
        parenchyma_mean = lesion_mean
    if lesion_mean is None:
        return {
            **dict.fromkeys(FEATURES, 0.0),
            "lesion_mean_hu": parenchyma_mean,
            "parenchyma_mean_hu": parenchyma_mean,
        }

    # Work on the lesion's bounding box plus a 2-voxel margin: the shell and erosion stay inside it, and
    # clipping at the image border behaves like the border itself (nothing outside the image counts).
    box = ndimage.find_objects(lesion.astype(np.int8))[0]
    box_voxels = int(np.prod([s.stop - s.start for s in box]))
    crop = tuple(slice(max(s.start - 2, 0), min(s.stop + 2, n)) for s, n in zip(box, labels.shape))
    lesion_crop, image_crop = lesion[crop], image[crop]
    shell = ndimage.binary_dilation(lesion_crop) & ~lesion_crop
    core = ndimage.binary_erosion(lesion_crop)
    boundary = lesion_crop & ~core
    shell_mean, core_mean = _mean(image_crop[shell]), _mean(image_crop[core])
    n_voxels = int(lesion.sum())
    return {
        "lesion_mean_hu": lesion_mean,
        "lesion_std_hu": float(image[lesion].std(dtype=np.float64)),
        "lesion_volume_ml": n_voxels * float(np.prod(spacing[: labels.ndim])) / 1000.0,
        "parenchyma_mean_hu": parenchyma_mean,
        "lesion_contrast_hu": lesion_mean - parenchyma_mean,
        "edge_contrast_hu": 0.0 if shell_mean is None else shell_mean - lesion_mean,
        "core_contrast_hu": 0.0 if core_mean is None else core_mean - _mean(image_crop[boundary]),
        "lesion_bbox_fill": n_voxels / box_voxels,
        "lesion_components": float(ndimage.label(lesion_crop)[1]),
    }


def cohort_features(cases: Iterable[tuple[str, str | os.PathLike, str | os.PathLike]]) -> pd.DataFrame:
    """Feature table (one row per ``(case_id, image_path, mask_path)``, indexed by case_id) of NIfTI files.

    Spacing is the image header's zooms; masks are rounded to integer labels.
    """
    import nibabel as nib

    rows = {}
    for case_id, image_path, mask_path in cases:
        image = nib.load(os.fspath(image_path))
        try:
            rows[str(case_id)] = lesion_features(
                image.get_fdata(dtype=np.float32), load_label_map(mask_path), image.header.get_zooms()
            )
        except ValueError as err:
            raise ValueError(f"case {case_id}: {image_path} with {mask_path}: {err}") from err
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(FEATURES))
    table.index.name = "case_id"
    return table


def _fit_models(features: pd.DataFrame, labels: Sequence[int], seed: int) -> dict:
    labels = np.asarray(labels, dtype=int)
    if np.unique(labels).size < 2:
        raise ValueError(f"training cases hold only subtype(s) {sorted(set(labels.tolist()))}")
    models = {
        "logistic_regression": make_pipeline(
            StandardScaler(),
            LogisticRegression(max_iter=5000, class_weight="balanced", random_state=seed),
        ),
        "random_forest": RandomForestClassifier(
            n_estimators=300, class_weight="balanced", random_state=seed, n_jobs=1
        ),
    }
    for model in models.values():
        model.fit(np.asarray(features, dtype=np.float64), labels)
    return models


def _score_models(models: dict, features: pd.DataFrame, labels: Sequence[int], num_subtypes: int) -> dict:
    """Classification metrics (as for the learned head) and per-case predictions of every model."""
    features = pd.DataFrame(features)
    results = {}
    for name, model in models.items():
        predicted = model.predict(np.asarray(features, dtype=np.float64)).astype(int)
        metrics = classification_metrics(np.asarray(labels, dtype=int), predicted, range(num_subtypes))
        metrics["predictions"] = {str(c): int(p) for c, p in zip(features.index, predicted)}
        results[name] = metrics
    return results


def fit_and_evaluate(
    train_features: pd.DataFrame,
    train_labels: Sequence[int],
    test_features: pd.DataFrame,
    test_labels: Sequence[int],
    num_subtypes: int,
    seed: int = 0,
) -> dict:
    """Fit the logistic regression (standardised features) and the random forest, score on the test cases.

    Returns ``{model: {macro_f1, balanced_accuracy, accuracy, per_class, confusion_matrix, predictions}}``
    with the confusion matrix's rows the true subtype and `predictions` keyed by the test features' index.
    """
    return _score_models(_fit_models(train_features, train_labels, seed), test_features, test_labels, num_subtypes)


def _split_cases(table: pd.DataFrame, split: str) -> pd.DataFrame:
    cases = table[table["split"] == split].sort_values("case_id", kind="stable")
    if cases.empty:
        raise ValueError(f"no {split} cases in the subtype table")
    if cases["subtype"].isna().any():
        unlabelled = cases.loc[cases["subtype"].isna(), "case_id"].tolist()
        raise ValueError(f"{split} case(s) without subtype: {unlabelled}")
    return cases


def _with_interval(metrics: dict, y_true: np.ndarray, num_subtypes: int) -> dict:
    """Add `macro_f1_ci95`, a percentile bootstrap interval over cases, to one model's metrics."""
    predicted = np.array([metrics["predictions"][c] for c in metrics["predictions"]])

    def statistic(a, b):
        return macro_f1(a, b, range(num_subtypes))

    metrics["macro_f1_ci95"] = list(bootstrap_ci((np.asarray(y_true), predicted), statistic))
    return metrics


def run_baseline(
    raw_dataset_dir: str | os.PathLike,
    subtype_table: str | os.PathLike,
    train_prediction_dir: str | os.PathLike,
    prediction_dir: str | os.PathLike,
    output_json: str | os.PathLike,
    seed: int = 0,
    test_prediction_dir: str | os.PathLike | None = None,
    test_labels_dir: str | os.PathLike | None = None,
) -> dict:
    """Fit on the training split's predicted masks; score validation (and test) on predicted and
    reference masks.

    Images are ``imagesTr/<case>_0000.nii.gz`` (``imagesTs`` for test) of the nnU-Net raw dataset,
    reference masks ``labelsTr/<case>.nii.gz`` (test: `test_labels_dir`), predicted masks
    ``<case>.nii.gz`` in `train_prediction_dir`, `prediction_dir` (validation) and
    `test_prediction_dir`. An interval that cannot be drawn (one case) is None. Writes
    `output_json` and returns ``{model: {"predicted_masks": metrics,
    "reference_masks": metrics, "test": {...the same...}}, "n_train", "n_validation", "n_test",
    "features", "fitted_on", "seed"}``, metrics as in `fit_and_evaluate` plus `macro_f1_ci95`.
    """
    from .validation import test_references

    raw = Path(raw_dataset_dir)
    table = read_subtype_table(subtype_table)
    train, validation = _split_cases(table, "train"), _split_cases(table, "validation")
    num_subtypes = table_num_subtypes(subtype_table)

    def predicted_masks(folder, cases):
        paths = {c: Path(folder) / mask_file_name(c) for c in cases}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise ValueError(f"predicted mask(s) not found: {missing}")
        return paths

    train_masks = predicted_masks(train_prediction_dir, train["case_id"])
    train_features = cohort_features((c, raw_image(raw, c, "train"), train_masks[c]) for c in train["case_id"])
    log.info("training features of %d cases (predicted masks):\n%s", len(train_features), train_features.to_string())
    models = _fit_models(train_features, train["subtype"].to_numpy(dtype=int), seed)

    splits = {"validation": (
        [(c, raw_image(raw, c, "train"), raw_label(raw, c), int(s))
         for c, s in zip(validation["case_id"], validation["subtype"])],
        prediction_dir,
    )}  # fmt: skip
    if test_prediction_dir is not None and test_labels_dir:
        labelled = [(c, raw_image(raw, c, "test"), m, s)
                    for c, m, s in test_references(test_labels_dir, subtype_table) if s is not None]  # fmt: skip
        if labelled:
            splits["test"] = (labelled, test_prediction_dir)

    results = {name: {} for name in MODELS}
    counts = {}
    for split, (cases, folder) in splits.items():
        counts[split] = len(cases)
        y = np.array([s for *_, s in cases], dtype=int)
        predicted = predicted_masks(folder, [c for c, *_ in cases])
        for masks, mask_of in (("predicted_masks", predicted.__getitem__), ("reference_masks", None)):
            features = cohort_features(
                (c, image, mask_of(c) if mask_of else reference) for c, image, reference, _ in cases
            )
            log.info("%s features with %s:\n%s", split, masks.replace("_", " "), features.to_string())
            for name, metrics in _score_models(models, features, y, num_subtypes).items():
                metrics = _with_interval(metrics, y, num_subtypes)
                target = results[name] if split == "validation" else results[name].setdefault(split, {})
                target[masks] = metrics
                log.info("%s, %s, %s: macro-F1 %.3f [%.3f, %.3f]", name, split, masks.replace("_", " "),
                         metrics["macro_f1"], *metrics["macro_f1_ci95"])  # fmt: skip

    summary = {
        **results,
        "n_train": len(train),
        "n_validation": counts["validation"],
        "n_test": counts.get("test", 0),
        "features": list(FEATURES),
        "fitted_on": "predicted masks of the training cases",
        "seed": seed,
    }
    output_json = Path(output_json)
    output_json.parent.mkdir(parents=True, exist_ok=True)
    # JSON has no NaN: an interval that one case cannot give (a single test case) is null
    summary = finite_or_none(summary)
    output_json.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return summary
