"""Voxel checks, label fixing and the nnU-Net raw dataset: the `dataset` step.

Checks run in three stages so that a bad cohort fails fast: file layout (``scan_cohort``, directory
listings only), headers (``check_headers``, no voxel data) and voxels (``ingest_case``). Every stage
collects all problems before ``CohortError`` is raised, so one run shows everything that needs
fixing. The input directory is only ever read.
"""

from __future__ import annotations

import csv
import gzip
import logging
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ..layout import LABELLED_SPLITS, Case, raw_image, raw_label, write_subtype_table
from ..nnunet_dataset import write_dataset_json
from .checks import LabelFix, check_headers, fix_labels
from .scan import CohortError, Problem, case_relative, log_warnings, scan_cohort

logger = logging.getLogger(__name__)


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
    image_rel = case_relative(case, case.image)
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
        mask_rel = case_relative(case, case.mask)
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
    log_warnings(scan.warnings)
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
    log_warnings(case_warnings)
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
                case.case_id, case.split, case.subtype, case_relative(case, case.mask), fix.source_dtype,
                record.image_dtype, "x".join(map(str, record.shape)),
                "x".join(f"{s:.6g}" for s in record.spacing), fix.voxels_rounded, f"{fix.max_abs_deviation:.6g}",
                fix.pancreas_voxels, fix.lesion_voxels, "; ".join(w.message for w in record.warnings),
            ])
    os.replace(tmp, path)
