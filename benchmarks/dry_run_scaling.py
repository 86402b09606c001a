"""Time `snakemake -n` on a cohort of many cases (empty placeholder files; a dry run reads none).

Usage: python benchmarks/dry_run_scaling.py [N_CASES]   (default 3000; goal <= 10 s)
"""

import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def fake_cohort(root: Path, n_cases: int) -> None:
    splits = {"train": 0.7, "validation": 0.1}
    n_train = int(n_cases * splits["train"])
    n_val = int(n_cases * splits["validation"])
    for i in range(n_cases):
        case = f"case_{i:05d}"
        if i < n_train + n_val:
            split = "train" if i < n_train else "validation"
            folder = root / split / f"subtype{i % 3}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{case}_0000.nii.gz").touch()
            (folder / f"{case}.nii.gz").touch()
        else:
            folder = root / "test"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{case}_0000.nii.gz").touch()


def main() -> None:
    n_cases = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    with tempfile.TemporaryDirectory() as tmp:
        cohort = Path(tmp) / "cohort"
        fake_cohort(cohort, n_cases)
        cmd = [
            sys.executable, "-m", "snakemake", "-n", "--cores", "2", "--quiet",
            "--config", f"data_dir={cohort}", f"results_dir={tmp}/results",
        ]
        start = time.perf_counter()
        result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(result.stderr[-3000:])
    print(f"snakemake -n on {n_cases} cases: {seconds:.2f} s (goal <= 10 s, ratio {seconds / 10:.2f})")


if __name__ == "__main__":
    main()
