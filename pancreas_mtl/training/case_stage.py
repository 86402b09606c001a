"""Fitting the case stage: which inputs, how strong a penalty, chosen on the training split only.

The case stage (`heads.CaseClassifier`) classifies a whole case from the head's output-layer
inputs and the case descriptor, both computed on the case as the network predicts it. Its inputs
come in blocks:

- `descriptor`: structure and context of the predicted lesion (`descriptors.NAMES`);
- `image_statistics`: the head's first-order statistics of the image inside and around the
  lesion (the 11 values per input channel that also reach its output layer directly);
- `hidden`: the head's hidden layer, trained on the training cases' own labels.

`auto` chooses among the label-free blocks (`descriptor`, `descriptor` + `image_statistics`) and
the penalty by repeated stratified cross-validation on the training cases (with fewer than two
cases of some subtype there is nothing to cross-validate, and the first candidate is taken). The
hidden layer is left out of `auto` because its activations have seen those very labels, so no
cross-validation on the training cases can judge it fairly. Ties go to the smaller set and the
stronger penalty.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .descriptors import FIRST_ORDER
from .descriptors import NAMES as DESCRIPTOR_NAMES

FEATURE_SETS = {
    "descriptor": ("descriptor",),
    "descriptor_and_image_statistics": ("descriptor", "image_statistics"),
    "image_statistics": ("image_statistics",),
    "first_order": ("first_order",),
    "head": ("hidden", "image_statistics"),
    "head_and_descriptor": ("hidden", "image_statistics", "descriptor"),
}
AUTO_CANDIDATES = ("descriptor", "descriptor_and_image_statistics")
CHOICES = ("auto", *FEATURE_SETS, "off")


def block_columns(n_hidden: int, n_image_statistics: int) -> dict[str, np.ndarray]:
    """Column indices of each block in [head features (hidden, image statistics), descriptor]."""
    n_head = n_hidden + n_image_statistics
    first_order = [n_head + DESCRIPTOR_NAMES.index(n) for n in FIRST_ORDER]
    return {
        "hidden": np.arange(n_hidden),
        "image_statistics": np.arange(n_hidden, n_head),
        "descriptor": np.arange(n_head, n_head + len(DESCRIPTOR_NAMES)),
        "first_order": np.asarray(first_order),
    }


def set_columns(name: str, blocks: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([blocks[b] for b in FEATURE_SETS[name]])


def _model(c: float, class_weight: dict):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(
        StandardScaler(), LogisticRegression(C=c, class_weight=class_weight, max_iter=5000)
    )


def cv_macro_f1(x: np.ndarray, y: np.ndarray, c: float, class_weight: dict, seed: int = 0) -> float:
    """Mean macro-F1 of repeated stratified k-fold cross-validation (k <= 5, by the rarest class)."""
    from sklearn.model_selection import RepeatedStratifiedKFold, cross_val_score

    k = int(min(5, np.bincount(y).min()))
    if k < 2:
        return float("nan")
    folds = RepeatedStratifiedKFold(n_splits=k, n_repeats=3, random_state=seed)
    return float(cross_val_score(_model(c, class_weight), x, y, cv=folds, scoring="f1_macro").mean())


@dataclass
class CaseStageFit:
    feature_set: str
    c: float
    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    cv: dict = field(default_factory=dict)

    def report(self) -> dict:
        return {"feature_set": self.feature_set, "c": self.c, "cv_macro_f1": self.cv}


def fit_case_stage(
    head_features: np.ndarray,
    descriptors: np.ndarray,
    labels: np.ndarray,
    class_weights: np.ndarray,
    n_hidden: int,
    choice: str = "auto",
    c_grid=(0.1, 0.3, 1.0),
    seed: int = 0,
) -> CaseStageFit:
    """Choose (in `auto`) and fit the case stage on the training cases as predicted.

    head_features (N, n_hidden + n_image_statistics), descriptors (N, len(NAMES)), labels (N,).
    Returns the standardisation and the linear layer over all inputs, unused ones at zero weight.
    """
    if choice not in FEATURE_SETS and choice != "auto":
        raise ValueError(f"unknown case stage {choice!r}; one of {', '.join(CHOICES)}")
    x = np.concatenate([np.asarray(head_features, float), np.asarray(descriptors, float)], 1)
    y = np.asarray(labels, dtype=int)
    blocks = block_columns(n_hidden, head_features.shape[1] - n_hidden)
    class_weight = dict(enumerate(np.asarray(class_weights, float)))
    candidates = AUTO_CANDIDATES if choice == "auto" else (choice,)
    scores = {
        f"{name}, C={c:g}": (cv_macro_f1(x[:, set_columns(name, blocks)], y, c, class_weight, seed), name, c)
        for name in candidates
        for c in c_grid
    }
    # best mean; ties to the earlier (smaller set, stronger penalty); NaN (too few cases) last
    best = max(scores.values(), key=lambda s: -1.0 if np.isnan(s[0]) else s[0])
    _, feature_set, c = best
    columns = set_columns(feature_set, blocks)
    model = _model(c, class_weight).fit(x[:, columns], y)
    scaler, logistic = model[0], model[-1]
    mean, scale = np.zeros(x.shape[1]), np.ones(x.shape[1])
    mean[columns], scale[columns] = scaler.mean_, scaler.scale_
    coef, intercept = logistic.coef_, logistic.intercept_
    if coef.shape[0] == 1:  # scikit-learn's binary case: one row for class 1; softmax of +-z/2
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = np.zeros((coef.shape[0], x.shape[1]))
    weight[:, columns] = coef
    return CaseStageFit(
        feature_set, float(c), mean, scale, weight, intercept,
        {k: (None if np.isnan(v[0]) else round(v[0], 4)) for k, v in scores.items()},
    )  # fmt: skip
