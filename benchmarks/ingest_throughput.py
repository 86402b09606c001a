"""Ingestion speed: ``ingest_cohort`` against a plain nibabel load+save of the same files.

Usage: python benchmarks/ingest_throughput.py [N_CASES] [--workers W]
Prints both times and the ratio ours/plain (goal <= 1.3); ours also checks headers and voxels and fixes labels.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from pancreas_mtl.cohort import discover_cohort, ingest_cohort

SHAPE = (100, 80, 40)
AFFINE = np.diag([0.75, 0.75, 2.5, 1.0])
FLOAT_ONE = 1.0000152587890625


def write_cohort(root: Path, n_cases: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, s) for s in SHAPE), indexing="ij")
    radius = np.sqrt(zz**2 + yy**2 + xx**2)
    for i in range(n_cases):
        split = ("validation", "train", "train", "train", "test")[i % 5]
        folder = root / "test" if split == "test" else root / split / f"subtype{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        # CT-like: integer HU values stored as float32, smooth body plus noise
        image = np.round(np.where(radius < 0.9, 40.0, -1000.0) + rng.normal(0, 20, SHAPE)).astype(np.float32)
        mask = np.zeros(SHAPE, dtype=np.float32)
        mask[radius < 0.4] = FLOAT_ONE
        mask[radius < 0.15] = 2.0
        files = [(f"case_{i:04d}_0000.nii.gz", image)] + ([] if split == "test" else [(f"case_{i:04d}.nii.gz", mask)])
        for name, data in files:
            img = nib.Nifti1Image(data, AFFINE)
            img.set_qform(AFFINE, code=1)
            nib.save(img, folder / name)


def plain_load_save(data_dir: Path, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for case in discover_cohort(data_dir):
        for path in filter(None, (case.image, case.mask)):
            img = nib.load(path)
            data = np.asanyarray(img.dataobj)
            nib.save(nib.Nifti1Image(data, img.affine, img.header), out_dir / path.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("n_cases", nargs="?", type=int, default=40)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_cohort(tmp / "cohort", args.n_cases)
        start = time.perf_counter()
        plain_load_save(tmp / "cohort", tmp / "plain")
        plain = time.perf_counter() - start
        start = time.perf_counter()
        ingest_cohort(tmp / "cohort", tmp / "nnUNet_raw" / "Dataset999_Bench", workers=args.workers)
        ours = time.perf_counter() - start
    print(f"cases: {args.n_cases}, volume {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} float32 image + float32 mask")
    print(f"plain nibabel load+save: {plain:.2f} s")
    print(f"ingest_cohort (workers={args.workers}): {ours:.2f} s")
    print(f"ratio ours/plain: {ours / plain:.2f} (goal <= 1.3)")


if __name__ == "__main__":
    main()
