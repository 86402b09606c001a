"""Discover a cohort in the assessment layout, check it, fix mask labels and write an nnU-Net raw
dataset: `scan` lists the layout, `checks` reads headers and fixes labels, `ingest` checks voxels
and writes the raw dataset, the subtype table and the label-fix report."""

from .checks import LabelFix, check_headers, fix_labels
from .ingest import (
    CaseRecord,
    IngestResult,
    ingest_case,
    ingest_cohort,
    write_label_fix_report,
    write_raw_dataset,
)
from .scan import CohortError, CohortScan, Problem, discover_cohort, scan_cohort

__all__ = [
    "CaseRecord",
    "CohortError",
    "CohortScan",
    "IngestResult",
    "LabelFix",
    "Problem",
    "check_headers",
    "discover_cohort",
    "fix_labels",
    "ingest_case",
    "ingest_cohort",
    "scan_cohort",
    "write_label_fix_report",
    "write_raw_dataset",
]
