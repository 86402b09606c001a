"""Shared fixtures: tiny synthetic cohorts in the assessment layout."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SHAPE = (6, 7, 5)
# Anisotropic spacing with an origin offset, as in real CT.
AFFINE = np.array([[0.8, 0, 0, -10.0], [0, 0.8, 0, 20.0], [0, 0, 2.5, 5.0], [0, 0, 0, 1]])
FLOAT_ONE = 1.0000152587890625


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    """Save like a scanner export: qform and sform both set to the affine."""
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.set_data_dtype(data.dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


def tiny_mask(lesion: bool = True, float_one: bool = True, dtype=np.float32) -> np.ndarray:
    """Pancreas block with a lesion inside; label 1 stored as 1.0000152587890625 when ``float_one``."""
    mask = np.zeros(SHAPE, dtype=np.float64)
    mask[1:5, 2:6, 1:4] = FLOAT_ONE if float_one else 1.0
    if lesion:
        mask[2:4, 3:5, 2] = 2.0
    return mask.astype(dtype)


def tiny_image(seed: int, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1000, SHAPE).astype(dtype)


def write_tiny_cohort(root: Path, train_per_subtype: int = 1, val_per_subtype: int = 1, n_test: int = 2,
                      ext: str = ".nii.gz", image_dtype=np.float32, mask_dtype=np.float32) -> Path:
    """Cohort with case ids quiz_000, quiz_001, ...; every other labelled mask stores label 1 as a float."""
    n = 0
    for split, per_subtype in (("train", train_per_subtype), ("validation", val_per_subtype)):
        for subtype in (0, 1, 2):
            for _ in range(per_subtype):
                folder = root / split / f"subtype{subtype}"
                case_id = f"quiz_{n:03d}"
                float_one = n % 2 == 0 and np.dtype(mask_dtype).kind == "f"
                save_nifti(folder / f"{case_id}_0000{ext}", tiny_image(n, image_dtype))
                save_nifti(folder / f"{case_id}{ext}", tiny_mask(float_one=float_one, dtype=mask_dtype))
                n += 1
    for _ in range(n_test):
        save_nifti(root / "test" / f"quiz_{n:03d}_0000{ext}", tiny_image(n, image_dtype))
        n += 1
    return root


@pytest.fixture
def make_cohort(tmp_path):
    """Factory: ``make_cohort(name="cohort", **options)`` writes a tiny valid cohort under tmp_path."""

    def factory(name: str = "cohort", **options) -> Path:
        return write_tiny_cohort(tmp_path / name, **options)

    return factory


class NiftiTools:
    """Helpers for tests that build or damage cohort files by hand."""

    shape = SHAPE
    affine = AFFINE
    float_one = FLOAT_ONE
    save = staticmethod(save_nifti)
    mask = staticmethod(tiny_mask)
    image = staticmethod(tiny_image)


@pytest.fixture
def nifti() -> NiftiTools:
    return NiftiTools()
