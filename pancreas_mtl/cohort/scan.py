"""List a cohort in the assessment layout without reading any file: complete cases, every layout
problem and warning (see `layout` for the layout)."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ..layout import (
    IMAGE_SUFFIX,
    LABELLED_SPLITS,
    SPLITS,
    Case,
    nifti_stem,
    parse_subtype_folder,
    subtype_classes_problem,
)

logger = logging.getLogger(__name__)

# Deep enough for any plausible misplaced folder, shallow enough to stay fast on a wrong data_dir.
MAX_UNEXPECTED_DEPTH = 4


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


def _relative(path: Path, data_dir: Path) -> str:
    try:
        return path.relative_to(data_dir).as_posix()
    except ValueError:
        return str(path)


def case_relative(case: Case, path: Path) -> str:
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


def log_warnings(warnings: list[Problem]) -> None:
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
    log_warnings(scan.warnings)
    if scan.problems:
        raise CohortError(Path(data_dir).absolute(), scan.problems)
    return scan.cases
