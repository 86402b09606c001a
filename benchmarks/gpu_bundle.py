"""Pack what `benchmarks/gpu_recipe.py` needs beyond a GPU machine's image into one small archive.

A lent GPU machine has PyTorch, NumPy, SciPy, scikit-image, scikit-learn, pandas, matplotlib and
PyYAML but no package registry, and only 64 MiB of files travel with a call. nnU-Net and what it
needs beyond that image (SimpleITK alone is a 53 MB wheel) come to about 67 MiB as wheels, too much;
unpacked and recompressed with xz they are about 40 MB. This script downloads the wheels of the
versions installed here (so the GPU run uses what CI tests), for the GPU machine's Python, installs
them into a folder without their dependencies, and writes that folder as one `.tar.xz`.

Usage (here, where PyPI is reachable):
    python benchmarks/gpu_bundle.py                      # .whl/nnunet_site-py312.tar.xz
    python benchmarks/gpu_bundle.py --python-version 3.11 --out /tmp/site311.tar.xz

Then, on the GPU machine, from the repository root with `.whl/nnunet_site-py312.tar.xz` carried
(the device tool's `carry`; that file alone, not the whole folder):
    mkdir -p /tmp/site && tar -xJf .whl/nnunet_site-py312.tar.xz -C /tmp/site \
      && export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 \
      && python3 benchmarks/gpu_recipe.py --work /tmp/gpu_recipe --json $OUT/gpu_recipe.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# what nnU-Net and this package import that the GPU image lacks (its package list:
# the device tool's KINDS.md); everything else nnU-Net imports is in the image
BUNDLED = (
    "nnunetv2",
    "dynamic-network-architectures",
    "batchgenerators",
    "batchgeneratorsv2",
    "acvl-utils",
    "SimpleITK",
    "nibabel",
    "blosc2",
    "ndindex",
    "yacs",
    "graphviz",
    "connected-components-3d",
)
# published only as a source archive: built into a wheel here (pure Python)
SOURCE_ONLY = ("acvl-utils",)
# manylinux tags pip matches one by one; the wheels above use some of these
PLATFORMS = (
    "manylinux_2_34_x86_64", "manylinux_2_31_x86_64", "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
    "manylinux2014_x86_64", "manylinux1_x86_64",
)
CARRY_LIMIT = 64 * 2**20


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python-version", default="3.12",
                        help="the GPU machine's Python (default 3.12, as its image has)")
    parser.add_argument("--out", type=Path, default=None,
                        help="archive to write (default .whl/nnunet_site-pyXY.tar.xz)")
    args = parser.parse_args(argv)
    if args.out is None:
        tag = args.python_version.replace(".", "")
        args.out = REPO / ".whl" / f"nnunet_site-py{tag}.tar.xz"
    return args


def pinned(names=BUNDLED) -> list[str]:
    """`name==version` of each bundled package as installed in this environment."""
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            sys.exit(f"{name} is not installed here: install the project first (pip install -e .)")
    return pins


def pip(*arguments: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *arguments], check=True)


def target_arguments(python_version: str) -> list[str]:
    arguments = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp"]
    for platform in PLATFORMS:
        arguments += ["--platform", platform]
    return arguments


def tree_bytes() -> int:
    """Bytes of the files that travel with every call: git's tracked and untracked-not-ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True,
    ).stdout.split(b"\0")
    return sum((REPO / name.decode()).stat().st_size for name in listed
               if name and (REPO / name.decode()).is_file())


def main(argv=None) -> int:
    args = parse_args(argv)
    pins = pinned()
    binary = [pin for pin in pins if pin.split("==")[0] not in SOURCE_ONLY]
    source = [pin for pin in pins if pin.split("==")[0] in SOURCE_ONLY]
    with tempfile.TemporaryDirectory() as temporary:
        wheels, site = Path(temporary, "wheels"), Path(temporary, "site")
        pip("download", "--quiet", "--no-deps", *target_arguments(args.python_version),
            "--dest", str(wheels), *binary)
        if source:
            pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), *source)
        pip("install", "--quiet", "--no-deps", "--no-index", "--no-compile",
            *target_arguments(args.python_version), "--target", str(site),
            *map(str, sorted(wheels.glob("*.whl"))))
        # console scripts carry this machine's interpreter in their first line: useless there
        shutil.rmtree(site / "bin", ignore_errors=True)
        wheel_bytes = sum(path.stat().st_size for path in wheels.glob("*.whl"))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(args.out, "w:xz", preset=9) as archive:
            for path in sorted(site.iterdir()):
                archive.add(path, arcname=path.name)
    size = args.out.stat().st_size
    tree = tree_bytes()
    print(f"{len(pins)} packages for Python {args.python_version}: {' '.join(pins)}")
    print(f"wheels {wheel_bytes / 2**20:.1f} MiB -> {args.out} {size / 2**20:.1f} MiB; "
          f"with the working tree ({tree / 2**20:.1f} MiB) {100 * (size + tree) / CARRY_LIMIT:.0f} % "
          "of what one call carries")
    if size + tree > CARRY_LIMIT:
        print("too large to travel with one call", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
