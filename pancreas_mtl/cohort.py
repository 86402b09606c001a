"""Discover a cohort in the assessment layout, check it, fix mask labels and write an nnU-Net raw dataset.

Layout (see `layout`)::

    DATA_DIR/{train,validation}/subtype{0..K-1}/<case>_0000.nii.gz   image
    DATA_DIR/{train,validation}/subtype{0..K-1}/<case>.nii.gz        mask (0 background, 1 pancreas, 2 lesion)
    DATA_DIR/test/<case>_0000.nii.gz                                  image only

Checks run in three stages so that a bad cohort fails fast: file layout (``scan_cohort``, directory listings
only), headers (``check_headers``, no voxel data) and voxels (``ingest_case``). Every stage collects all
problems before ``CohortError`` is raised, so one run shows everything that needs fixing.
The input directory is only ever read.
"""

from __future__ import annotations

import csv
import gzip
import logging
import os
import shutil
import tempfile
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from .layout import (
    IMAGE_SUFFIX,
    LABELLED_SPLITS,
    LABELS,
    SPLITS,
    Case,
    nifti_stem,
    parse_subtype_folder,
    raw_image,
    raw_label,
    subtype_classes_problem,
    write_subtype_table,
)
from .nnunet_dataset import write_dataset_json

logger = logging.getLogger(__name__)

# Deep enough for any plausible misplaced folder, shallow enough to stay fast on a wrong data_dir.
MAX_UNEXPECTED_DEPTH = 4
# Affines of image and mask may differ by float32 rounding of the header, not by a real shift.
AFFINE_ATOL_MM = 1e-3
AFFINE_RTOL = 1e-4
MAX_LISTED_VALUES = 5


@dataclass(frozen=True)
class Problem:
    """Something wrong (or, in a warnings list, odd) about one file of the cohort."""

    case_id: str
    path: str
    message: str

    def __str__(self) -> str:
        # One problem per line, even when a library's exception text spans several.
        message = " ".join(self.message.split())
        return f"{self.case_id} ({self.path}): {message}" if self.case_id else f"{self.path}: {message}"


class CohortError(ValueError):
    """A cohort that cannot be ingested; the message lists every problem found, one per line."""

    def __init__(self, data_dir: str | os.PathLike, problems: list[Problem]):
        self.data_dir = str(data_dir)
        self.problems = list(problems)
        n = len(self.problems)
        lines = [f"Cohort at {self.data_dir} has {n} problem{'s' if n != 1 else ''}:"]
        lines += [f"  {p}" for p in self.problems]
        super().__init__("\n".join(lines))

    def __reduce__(self):
        return type(self), (self.data_dir, self.problems)


@dataclass(frozen=True)
class CohortScan:
    """Result of listing a cohort: complete cases, layout problems and warnings."""

    cases: list[Case]
    problems: list[Problem]
    warnings: list[Problem]

    @property
    def num_subtypes(self) -> int:
        """K: the subtype classes are 0..K-1 (checked by the scan)."""
        return 1 + max((c.subtype for c in self.cases if c.subtype is not None), default=-1)


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


@dataclass(frozen=True)
class CaseRecord:
    """Outcome of ``ingest_case``: what was read and written, or the problems that stopped it."""

    case: Case
    image_dtype: str = ""
    shape: tuple[int, ...] = ()
    spacing: tuple[float, ...] = ()
    label_fix: LabelFix | None = None
    warnings: tuple[Problem, ...] = ()
    problems: tuple[Problem, ...] = ()


@dataclass(frozen=True)
class IngestResult:
    """A written nnU-Net raw dataset: its cases, per-case records and all warnings."""

    raw_dataset_dir: Path
    cases: list[Case]
    records: list[CaseRecord]
    num_subtypes: int
    warnings: list[Problem] = field(default_factory=list)

    @property
    def label_fixes(self) -> dict[str, LabelFix]:
        return {r.case.case_id: r.label_fix for r in self.records if r.label_fix is not None}

    @property
    def num_training(self) -> int:
        return sum(c.split in LABELLED_SPLITS for c in self.cases)


def _relative(path: Path, data_dir: Path) -> str:
    try:
        return path.relative_to(data_dir).as_posix()
    except ValueError:
        return str(path)


def _case_relative(case: Case, path: Path) -> str:
    return _relative(path, case.data_dir)


def _case_id_of(stem: str) -> str:
    return stem[: -len(IMAGE_SUFFIX)] if stem.endswith(IMAGE_SUFFIX) else stem


class _Scanner:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.cases: list[Case] = []
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.ignored: list[str] = []
        # subtype class -> the subtype<k> folders (relative) that hold NIfTI files
        self.class_folders: dict[int, list[str]] = defaultdict(list)

    def rel(self, path: Path | str) -> str:
        return _relative(Path(path), self.data_dir)

    def problem(self, case_id: str, path: Path | str, message: str) -> None:
        self.problems.append(Problem(case_id, self.rel(path), message))

    def warn(self, case_id: str, path: Path | str, message: str) -> None:
        self.warnings.append(Problem(case_id, self.rel(path), message))

    def ignore(self, path: str) -> None:
        self.ignored.append(self.rel(path))

    def list_dir(self, folder: Path) -> tuple[list[os.DirEntry], list[os.DirEntry]]:
        """(NIfTI files, subfolders) of a folder; anything else is recorded as ignored."""
        niftis, folders = [], []
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.startswith("."):
                    # .DS_Store, ._<name>.nii.gz AppleDouble forks, .ipynb_checkpoints, ...
                    self.ignore(entry.path)
                elif entry.is_dir():
                    folders.append(entry)
                elif nifti_stem(entry.name) is not None and entry.is_file():
                    niftis.append(entry)
                else:
                    self.ignore(entry.path)
        return sorted(niftis, key=lambda e: e.name), sorted(folders, key=lambda e: e.name)

    def unexpected_tree(self, folder: Path, expected: str, depth: int = 0) -> None:
        """Report every NIfTI below a folder that is not part of the layout."""
        if depth > MAX_UNEXPECTED_DEPTH:
            return
        niftis, folders = self.list_dir(folder)
        for entry in niftis:
            self.unexpected_file(entry, expected)
        for entry in folders:
            if not entry.is_symlink():
                self.unexpected_tree(Path(entry.path), expected, depth + 1)

    def unexpected_file(self, entry: os.DirEntry, expected: str) -> None:
        case_id = _case_id_of(nifti_stem(entry.name))
        self.problem(case_id, entry.path, f"NIfTI file in an unexpected place; expected {expected}")

    def labelled_folder(self, folder: Path, split: str, subtype: int) -> None:
        images: dict[str, Path] = {}
        masks: dict[str, Path] = {}
        niftis, folders = self.list_dir(folder)
        if niftis:
            self.class_folders[subtype].append(self.rel(folder))
        stems = {nifti_stem(entry.name) for entry in niftis}
        for entry in niftis:
            stem = nifti_stem(entry.name)
            # A case id may itself end in _0000: then "<id>.nii.gz" is its mask, since "<id>_0000.nii.gz" exists.
            is_image = stem.endswith(IMAGE_SUFFIX) and stem + IMAGE_SUFFIX not in stems
            case_id = stem[: -len(IMAGE_SUFFIX)] if is_image else stem
            target = images if is_image else masks
            if case_id in target:
                self.problem(case_id, entry.path, f"two {'images' if is_image else 'masks'} for this case "
                             f"({target[case_id].name} and {entry.name})")
                continue
            target[case_id] = Path(entry.path)
        for entry in folders:
            self.unexpected_tree(Path(entry.path), expected=f"files directly in {split}/subtype{subtype}/")
        for case_id in sorted(images.keys() | masks.keys()):
            image, mask = images.get(case_id), masks.get(case_id)
            if mask is None:
                self.problem(case_id, image, f"image has no mask (expected {case_id}.nii.gz beside it)")
            elif image is None:
                self.problem(case_id, mask, f"mask has no image (expected {case_id}{IMAGE_SUFFIX}.nii.gz beside it)")
            else:
                self.cases.append(Case(case_id, split, subtype, image, mask))

    def labelled_split(self, split: str) -> None:
        split_dir = self.data_dir / split
        expected = f"{split}/subtype{{0..K-1}}/"
        if not split_dir.is_dir():
            self.problem("", split_dir, f"missing split folder (expected {expected})")
            return
        niftis, folders = self.list_dir(split_dir)
        for entry in niftis:
            self.unexpected_file(entry, expected)
        n_before = len(self.cases)
        for entry in folders:
            subtype = parse_subtype_folder(entry.name)
            if subtype is not None:
                self.labelled_folder(Path(entry.path), split, subtype)
            else:
                self.unexpected_tree(Path(entry.path), expected=expected)
        if len(self.cases) == n_before:
            self.problem("", split_dir, "no cases (image + mask pairs) found")

    def subtype_classes(self) -> None:
        """The classes 0..K-1 come from the subtype<k> folders: at least two, no gaps."""
        found = sorted(self.class_folders)
        if not found:
            return  # already reported: no labelled cases
        problem = subtype_classes_problem(found)
        if problem:
            # named by the folders after the first gap, or the only class's folders
            gap = next((k for k in range(found[-1] + 1) if k not in self.class_folders), None)
            named = [k for k in found if gap is None or k > gap]
            self.problem("", ", ".join(f for k in named for f in self.class_folders[k]), problem)
            return
        for split in LABELLED_SPLITS:
            in_split = {c.subtype for c in self.cases if c.split == split}
            missing = [s for s in found if s not in in_split]
            if in_split and missing:
                self.warn("", self.data_dir / split, f"no cases of subtype {', '.join(map(str, missing))}")

    def test_split(self) -> None:
        split_dir = self.data_dir / "test"
        if not split_dir.is_dir():
            self.warn("", split_dir, "no test folder; there will be no test predictions")
            return
        niftis, folders = self.list_dir(split_dir)
        images: dict[str, Path] = {}
        for entry in niftis:
            stem = nifti_stem(entry.name)
            if not stem.endswith(IMAGE_SUFFIX):
                self.problem(stem, entry.path, f"test images must be named <case>{IMAGE_SUFFIX}.nii.gz; "
                             "a mask in test/ is unexpected")
                continue
            case_id = _case_id_of(stem)
            if case_id in images:
                self.problem(case_id, entry.path, f"two images for this case ({images[case_id].name} and {entry.name})")
                continue
            images[case_id] = Path(entry.path)
        for entry in folders:
            self.unexpected_tree(Path(entry.path), expected="files directly in test/")
        if not images:
            self.warn("", split_dir, "no test images")
        self.cases.extend(Case(cid, "test", None, images[cid], None) for cid in sorted(images))

    def duplicates(self) -> None:
        by_id: dict[str, list[Case]] = defaultdict(list)
        for case in self.cases:
            by_id[case.case_id].append(case)
        for case_id, cases in by_id.items():
            if len(cases) < 2:
                continue
            places = [c.image.parent for c in cases]
            for case in cases:
                others = ", ".join(self.rel(p) + "/" for p in places if p != case.image.parent)
                self.problem(case_id, case.image, f"the same case id is also in {others}")

    def scan(self) -> CohortScan:
        if not self.data_dir.is_dir():
            self.problem("", self.data_dir, "data_dir does not exist or is not a folder")
            return CohortScan([], self.problems, self.warnings)
        niftis, folders = self.list_dir(self.data_dir)
        for entry in niftis:
            self.unexpected_file(entry, "train/, validation/ or test/ subfolders")
        for entry in folders:
            if entry.name not in SPLITS:
                self.unexpected_tree(Path(entry.path), expected="train/, validation/ or test/ subfolders")
        for split in LABELLED_SPLITS:
            self.labelled_split(split)
        self.subtype_classes()
        self.test_split()
        self.duplicates()
        if self.ignored:
            self.warnings.extend(Problem("", p, "not a NIfTI file; ignored") for p in self.ignored)
        order = {s: i for i, s in enumerate(SPLITS)}
        cases = sorted(self.cases, key=lambda c: (order[c.split], c.case_id, str(c.image)))
        return CohortScan(cases, self.problems, self.warnings)


def scan_cohort(data_dir: str | os.PathLike) -> CohortScan:
    """List a cohort without reading any file: complete cases plus every layout problem and warning."""
    return _Scanner(Path(data_dir).absolute()).scan()


def _log_warnings(warnings: list[Problem]) -> None:
    ignored = [w for w in warnings if w.message == "not a NIfTI file; ignored"]
    for w in warnings:
        if w not in ignored:
            logger.warning("%s", w)
    if ignored:
        shown = ", ".join(w.path for w in ignored[:10])
        more = f" and {len(ignored) - 10} more" if len(ignored) > 10 else ""
        logger.warning("Ignored %d non-NIfTI file(s): %s%s", len(ignored), shown, more)


def discover_cohort(data_dir: str | os.PathLike) -> list[Case]:
    """Cases of a cohort in the assessment layout; raises CohortError listing every layout problem."""
    scan = scan_cohort(data_dir)
    _log_warnings(scan.warnings)
    if scan.problems:
        raise CohortError(Path(data_dir).absolute(), scan.problems)
    return scan.cases


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
            problems.append(Problem(case.case_id, _case_relative(case, case.image), image_error))
        if case.mask is None:
            continue
        mask_error, mask_shape, mask_affine = _read_header(case.mask, "mask")
        if mask_error:
            problems.append(Problem(case.case_id, _case_relative(case, case.mask), mask_error))
        if image_error or mask_error:
            continue
        rel = _case_relative(case, case.mask)
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


def _copy_image(source: Path, target: Path) -> None:
    """Copy the image as-is (no re-encoding); gzip an uncompressed .nii so nnU-Net sees one file ending."""
    if source.name.lower().endswith(".nii.gz"):
        shutil.copyfile(source, target)
    else:
        with open(source, "rb") as src, open(target, "wb") as raw, \
                gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)


def _label_image(labels: np.ndarray, image: nib.spatialimages.SpatialImage) -> nib.Nifti1Image:
    """uint8 label volume carrying the image's exact header geometry (qform and sform), so nnU-Net's check passes."""
    header = image.header.copy()
    out = nib.Nifti1Image(labels, image.affine, header=header)
    out.set_data_dtype(np.uint8)
    out.header.set_slope_inter(1, 0)
    out.header["cal_min"], out.header["cal_max"] = 0, 0
    out.header.set_intent("none")
    if isinstance(image, nib.Nifti1Image):
        for key in ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d",
                    "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z"):
            out.header[key] = image.header[key]
        out.header["pixdim"][:4] = image.header["pixdim"][:4]
    return out


def ingest_case(case: Case, output_dir: str | os.PathLike, label_tolerance: float = 1e-3) -> CaseRecord:
    """Voxel checks for one case, then copy its image into ``output_dir`` and write its fixed label map.

    ``output_dir`` is an nnU-Net raw dataset folder with imagesTr/, labelsTr/ and imagesTs/.
    Problems are returned in the record rather than raised so a parallel run can report all cases at once.
    """
    output_dir = Path(output_dir)
    problems: list[Problem] = []
    warnings: list[Problem] = []
    image_rel = _case_relative(case, case.image)
    image = None
    image_dtype, shape, spacing = "", (), ()
    try:
        image = nib.load(case.image)
        data = np.asanyarray(image.dataobj)
        image_dtype = str(image.get_data_dtype())
        shape = tuple(int(d) for d in data.shape)
        spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            n_bad = data.size - int(np.count_nonzero(np.isfinite(data)))
            problems.append(Problem(case.case_id, image_rel, f"image has {n_bad} non-finite voxel"
                                    f"{'s' if n_bad != 1 else ''} (NaN or inf)"))
        del data
    except Exception as exc:  # truncated or corrupt voxel data
        problems.append(Problem(case.case_id, image_rel, f"cannot read image voxels: {type(exc).__name__}: {exc}"))
        image = None

    label_fix = None
    labels = None
    if case.mask is not None:
        mask_rel = _case_relative(case, case.mask)
        try:
            mask_values = np.asanyarray(nib.load(case.mask).dataobj)
        except Exception as exc:
            problems.append(Problem(case.case_id, mask_rel, f"cannot read mask voxels: {type(exc).__name__}: {exc}"))
        else:
            try:
                labels, label_fix = fix_labels(mask_values, label_tolerance)
            except ValueError as exc:
                problems.append(Problem(case.case_id, mask_rel, str(exc)))
            del mask_values
        if label_fix is not None:
            if label_fix.pancreas_voxels + label_fix.lesion_voxels == 0:
                warnings.append(Problem(case.case_id, mask_rel, "mask is empty (no pancreas or lesion voxels)"))
            elif label_fix.lesion_voxels == 0:
                warnings.append(Problem(case.case_id, mask_rel, "no lesion voxels (label 2); accepted"))

    if not problems:
        if case.mask is None:
            _copy_image(case.image, raw_image(output_dir, case.case_id, case.split))
        else:
            _copy_image(case.image, raw_image(output_dir, case.case_id, case.split))
            nib.save(_label_image(labels, image), raw_label(output_dir, case.case_id))
    return CaseRecord(case, image_dtype, shape, spacing, label_fix, tuple(warnings), tuple(problems))


def _ingest_chunk(cases: list[Case], output_dir: Path, label_tolerance: float) -> list[CaseRecord]:
    return [ingest_case(case, output_dir, label_tolerance) for case in cases]


def _chunks(items: list, n_chunks: int) -> list[list]:
    n_chunks = max(1, min(n_chunks, len(items)))
    return [items[i::n_chunks] for i in range(n_chunks)]


def _check_safe_output(data_dir: Path, raw_dataset_dir: Path) -> None:
    data_real, raw_real = data_dir.resolve(), raw_dataset_dir.resolve()
    if raw_real == data_real or raw_real.is_relative_to(data_real) or data_real.is_relative_to(raw_real):
        raise ValueError(f"raw_dataset_dir {raw_dataset_dir} must lie outside data_dir {data_dir} "
                         "(the input directory is never written to) and must not contain it")


def _replace_dir(new: Path, target: Path) -> None:
    """Move a finished folder into place, replacing an old one; only a rename separates old and new."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old)


def ingest_cohort(data_dir: str | os.PathLike, raw_dataset_dir: str | os.PathLike, workers: int = 1,
                  label_tolerance: float = 1e-3, dataset_name: str | None = None) -> IngestResult:
    """Check a cohort and write it as an nnU-Net raw dataset (imagesTr, labelsTr, imagesTs, and dataset.json
    when ``dataset_name`` is given).

    Layout and header problems are raised as one CohortError before any voxel is read; voxel problems of all
    cases are raised together after the voxel pass. The dataset is built in a temporary sibling folder and
    renamed into place, so a failed run leaves the previous dataset (or none) untouched.
    """
    data_dir = Path(data_dir).absolute()
    raw_dataset_dir = Path(raw_dataset_dir).absolute()
    _check_safe_output(data_dir, raw_dataset_dir)
    workers = max(1, int(workers))

    scan = scan_cohort(data_dir)
    warnings = list(scan.warnings)
    _log_warnings(scan.warnings)
    cases = scan.cases
    executor = ProcessPoolExecutor(max_workers=workers) if workers > 1 and len(cases) > 1 else None
    try:
        if executor is None:
            header_problems = check_headers(cases)
        else:
            header_problems = [p for part in executor.map(check_headers, _chunks(cases, workers * 4)) for p in part]
        problems = scan.problems + header_problems
        if problems:
            raise CohortError(data_dir, problems)

        raw_dataset_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{raw_dataset_dir.name}.partial-", dir=raw_dataset_dir.parent))
        try:
            for sub in ("imagesTr", "labelsTr", "imagesTs"):
                (staging / sub).mkdir()
            if executor is None:
                records = [ingest_case(case, staging, label_tolerance) for case in cases]
            else:
                parts = executor.map(_ingest_chunk, _chunks(cases, workers * 4),
                                     [staging] * (workers * 4), [label_tolerance] * (workers * 4))
                by_key = {(r.case.split, r.case.case_id): r for part in parts for r in part}
                records = [by_key[(c.split, c.case_id)] for c in cases]
            voxel_problems = [p for r in records for p in r.problems]
            if voxel_problems:
                raise CohortError(data_dir, voxel_problems)
            if dataset_name is not None:
                write_dataset_json(staging, sum(c.split in LABELLED_SPLITS for c in cases), dataset_name,
                                   scan.num_subtypes)
            _replace_dir(staging, raw_dataset_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)

    case_warnings = [w for r in records for w in r.warnings]
    _log_warnings(case_warnings)
    n_train = sum(c.split in LABELLED_SPLITS for c in cases)
    logger.info("Wrote %s: %d labelled cases, %d test cases, %d mask voxels rounded", raw_dataset_dir, n_train,
                len(cases) - n_train, sum(r.label_fix.voxels_rounded for r in records if r.label_fix))
    return IngestResult(raw_dataset_dir, cases, records, scan.num_subtypes, warnings + case_warnings)


def write_raw_dataset(data_dir: str | os.PathLike, raw_dataset_dir: str | os.PathLike,
                      subtype_table: str | os.PathLike, label_fix_report: str | os.PathLike, dataset_name: str,
                      label_tolerance: float = 1e-3, workers: int = 1) -> IngestResult:
    """The `dataset` step: ingest with dataset.json, then write the subtype table and the label-fix report."""
    result = ingest_cohort(data_dir, raw_dataset_dir, workers=workers, label_tolerance=label_tolerance,
                           dataset_name=dataset_name)
    write_subtype_table(result.cases, subtype_table)
    write_label_fix_report(result, label_fix_report)
    return result


REPORT_COLUMNS = ("case_id", "split", "subtype", "mask_file", "mask_dtype", "image_dtype", "shape", "spacing",
                  "voxels_rounded", "max_abs_deviation", "pancreas_voxels", "lesion_voxels", "warning")


def write_label_fix_report(result: IngestResult, path: str | os.PathLike) -> None:
    """CSV with one row per labelled case: dtypes, geometry, how many voxels were rounded, label counts, warnings."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(REPORT_COLUMNS)
        for record in sorted(result.records, key=lambda r: r.case.case_id):
            fix, case = record.label_fix, record.case
            if fix is None or case.mask is None:
                continue
            writer.writerow([
                case.case_id, case.split, case.subtype, _case_relative(case, case.mask), fix.source_dtype,
                record.image_dtype, "x".join(map(str, record.shape)),
                "x".join(f"{s:.6g}" for s in record.spacing), fix.voxels_rounded, f"{fix.max_abs_deviation:.6g}",
                fix.pancreas_voxels, fix.lesion_voxels, "; ".join(w.message for w in record.warnings),
            ])
    os.replace(tmp, path)
