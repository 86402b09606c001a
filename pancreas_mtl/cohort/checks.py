"""Header checks (no voxel data) and label fixing of one cohort's files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..layout import LABELS, Case
from .scan import Problem, case_relative

# Affines of image and mask may differ by float32 rounding of the header, not by a real shift.
AFFINE_ATOL_MM = 1e-3
AFFINE_RTOL = 1e-4
MAX_LISTED_VALUES = 5


@dataclass(frozen=True)
class LabelFix:
    """What ``fix_labels`` did to one mask."""

    voxels_rounded: int
    max_abs_deviation: float
    source_dtype: str
    label_counts: dict[int, int]

    @property
    def pancreas_voxels(self) -> int:
        """Voxels labelled 1 (pancreas outside the lesion)."""
        return self.label_counts.get(1, 0)

    @property
    def lesion_voxels(self) -> int:
        return self.label_counts.get(2, 0)


def _read_header(path: Path, kind: str) -> tuple[str | None, tuple[int, ...], np.ndarray | None]:
    """(problem message or None, shape, affine) from a NIfTI header, without touching voxel data."""
    try:
        img = nib.load(path)
        shape = tuple(int(d) for d in img.shape)
        affine = np.asarray(img.affine, dtype=float)
        dtype = img.header.get_data_dtype()
    except Exception as exc:  # nibabel raises many types for damaged files
        return f"unreadable {kind}: {type(exc).__name__}: {exc}", (), None
    if len(shape) != 3:
        return f"{kind} is {len(shape)}-D with shape {shape}; expected a 3-D volume", shape, None
    if 0 in shape:
        return f"{kind} has a zero-size dimension, shape {shape}", shape, None
    if dtype.kind not in "biuf":
        return f"{kind} has unsupported data type {dtype}", shape, None
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        return f"{kind} has an invalid affine (not finite or singular)", shape, None
    return None, shape, affine


def _affine_text(affine: np.ndarray) -> str:
    return "[" + "; ".join(" ".join(f"{v:.4g}" for v in row) for row in affine[:3]) + "]"


def check_headers(cases: list[Case]) -> list[Problem]:
    """Header-only checks (no voxel data): readable, 3-D, non-empty, image and mask shapes and affines agree."""
    problems: list[Problem] = []
    for case in cases:
        image_error, image_shape, image_affine = _read_header(case.image, "image")
        if image_error:
            problems.append(Problem(case.case_id, case_relative(case, case.image), image_error))
        if case.mask is None:
            continue
        mask_error, mask_shape, mask_affine = _read_header(case.mask, "mask")
        if mask_error:
            problems.append(Problem(case.case_id, case_relative(case, case.mask), mask_error))
        if image_error or mask_error:
            continue
        rel = case_relative(case, case.mask)
        if mask_shape != image_shape:
            problems.append(Problem(case.case_id, rel, f"mask shape {mask_shape} differs from image shape "
                                    f"{image_shape}"))
        elif not np.allclose(mask_affine, image_affine, atol=AFFINE_ATOL_MM, rtol=AFFINE_RTOL):
            worst = float(np.max(np.abs(mask_affine - image_affine)))
            problems.append(Problem(case.case_id, rel, f"mask affine differs from image affine by up to {worst:.4g} mm "
                                    f"(image {_affine_text(image_affine)}; mask {_affine_text(mask_affine)})"))
    return problems


def _format_value(value: np.generic) -> str:
    if isinstance(value, np.floating):
        return np.format_float_positional(value, unique=True, trim="-")
    return str(value.item())


def fix_labels(mask: np.ndarray, tolerance: float = 1e-3) -> tuple[np.ndarray, LabelFix]:
    """Round mask values within ``tolerance`` of a label in {0, 1, 2}; raise ValueError naming any other value.

    Masks exported from float pipelines store label 1 as 1.0000152587890625; those voxels become exactly 1.
    Returns the uint8 label array and a record of what changed.
    """
    if not 0 <= tolerance < 0.5:
        raise ValueError(f"label tolerance must be in [0, 0.5), got {tolerance}")
    values = np.asarray(mask)
    if values.dtype.kind not in "biuf":
        raise ValueError(f"mask has unsupported data type {values.dtype}")
    voxels_rounded, max_dev = 0, 0.0
    if values.dtype.kind == "f":
        n_nonfinite = values.size - int(np.count_nonzero(np.isfinite(values)))
        if n_nonfinite:
            raise ValueError(f"mask has {n_nonfinite} non-finite voxel{'s' if n_nonfinite != 1 else ''} (NaN or inf)")
        rounded = np.rint(values)
        deviation = np.abs(values - rounded)
        valid = (deviation <= tolerance) & (rounded >= LABELS[0]) & (rounded <= LABELS[-1])
        if values.size:
            max_dev = float(deviation.max())
        voxels_rounded = int(np.count_nonzero(values != rounded))
        labels = rounded
    else:
        labels = values
        valid = (values >= LABELS[0]) & (values <= LABELS[-1])
    if not valid.all():
        bad_values, counts = np.unique(values[~valid], return_counts=True)
        order = np.argsort(-counts, kind="stable")[:MAX_LISTED_VALUES]
        listed = ", ".join(f"{_format_value(bad_values[i])} ({counts[i]} voxel{'s' if counts[i] != 1 else ''})"
                           for i in order)
        more = len(bad_values) - len(order)
        n_bad = int(counts.sum())
        if more > 0:
            listed += f" and {more} more distinct values"
        raise ValueError(f"{n_bad} mask voxel{'s are' if n_bad != 1 else ' is'} not within {tolerance:g} of a label "
                         f"in {{0, 1, 2}}; values: {listed}")
    fixed = labels.astype(np.uint8)
    counts = np.bincount(fixed.ravel(), minlength=len(LABELS))
    return fixed, LabelFix(voxels_rounded, max_dev, str(values.dtype), {lab: int(counts[lab]) for lab in LABELS})
