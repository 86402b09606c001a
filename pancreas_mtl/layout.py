"""The shared file formats: cohort splits and subtype classes, the nnU-Net raw dataset, the subtype
table, the prediction table and the case-overlay gallery. Bottom layer: imports nothing from this package and nothing heavy.

Cohort layout (the assessment's)::

    DATA_DIR/{train,validation}/subtype{0..K-1}/<case>_0000.nii.gz   image
    DATA_DIR/{train,validation}/subtype{0..K-1}/<case>.nii.gz        mask (0 background, 1 pancreas, 2 lesion)
    DATA_DIR/test/<case>_0000.nii.gz                                  image only
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

LABELLED_SPLITS = ("train", "validation")
SPLITS = (*LABELLED_SPLITS, "test")
LABELS = (0, 1, 2)
IMAGE_SUFFIX = "_0000"
FILE_ENDING = ".nii.gz"
NIFTI_EXTENSIONS = (".nii.gz", ".nii")
DEFAULT_NUM_SUBTYPES = 3
SUBTYPE_FOLDER = re.compile(r"^subtype(0|[1-9][0-9]*)$")
# dataset.json key holding the number of subtype classes of the cohort
NUM_SUBTYPES_KEY = "num_subtypes"

SUBTYPE_TABLE_COLUMNS = ["case_id", "split", "subtype"]
PREDICTION_TABLE = "subtype_results.csv"
PREDICTION_INDEX_COLUMNS = ["Names", "Subtype"]


@dataclass(frozen=True)
class Case:
    """One case: an image and, for train/validation, its mask and subtype."""

    case_id: str
    split: str
    subtype: int | None
    image: Path
    mask: Path | None

    @property
    def data_dir(self) -> Path:
        """The cohort root, derived from the layout (split folder, plus subtype folder when labelled)."""
        return self.image.parent.parent if self.subtype is None else self.image.parent.parent.parent


# subtype classes


def subtype_folder(subtype: int) -> str:
    return f"subtype{int(subtype)}"


def parse_subtype_folder(name: str) -> int | None:
    """The class of a `subtype<k>` folder name, or None for any other name."""
    match = SUBTYPE_FOLDER.match(name)
    return int(match.group(1)) if match else None


def subtype_classes_problem(found: Iterable[int]) -> str | None:
    """Why the subtype classes found in a cohort cannot be used (fewer than two, or a gap), or None."""
    found = sorted(set(int(s) for s in found))
    if len(found) < 2:
        names = ", ".join(subtype_folder(s) for s in found) or "none"
        return f"a subtype classifier needs at least two classes (subtype0, subtype1, ...); found {names}"
    missing = [s for s in range(found[-1] + 1) if s not in found]
    if missing:
        return (f"subtype classes must be numbered 0..K-1 without gaps; found "
                f"{', '.join(map(subtype_folder, found))} but no {', '.join(map(subtype_folder, missing))}")
    return None


def probability_columns(num_subtypes: int) -> list[str]:
    return [f"prob_subtype{c}" for c in range(int(num_subtypes))]


# nnU-Net raw dataset


def nifti_stem(name: str) -> str | None:
    """File name without its NIfTI extension, or None when the name is not a NIfTI file."""
    lower = name.lower()
    for ext in NIFTI_EXTENSIONS:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return None


def image_file_name(case_id: str, file_ending: str = FILE_ENDING) -> str:
    return f"{case_id}{IMAGE_SUFFIX}{file_ending}"


def mask_file_name(case_id: str, file_ending: str = FILE_ENDING) -> str:
    return f"{case_id}{file_ending}"


def raw_image(raw_dataset_dir: str | os.PathLike, case_id: str, split: str) -> Path:
    """Image of a case in the raw dataset: imagesTs for test, imagesTr for the labelled splits."""
    folder = "imagesTs" if split == "test" else "imagesTr"
    return Path(raw_dataset_dir) / folder / image_file_name(case_id)


def raw_label(raw_dataset_dir: str | os.PathLike, case_id: str) -> Path:
    return Path(raw_dataset_dir) / "labelsTr" / mask_file_name(case_id)


def read_num_subtypes(dataset_json: str | os.PathLike | dict) -> int:
    """Subtype classes recorded in a dataset.json (path, folder holding one, or the loaded dict)."""
    if not isinstance(dataset_json, dict):
        path = Path(dataset_json)
        if path.is_dir():
            path = path / "dataset.json"
        dataset_json = json.loads(path.read_text())
    return int(dataset_json.get(NUM_SUBTYPES_KEY, DEFAULT_NUM_SUBTYPES))


# a trained model: nnU-Net's results folder of one trainer/plans/configuration


def check_model_folder(model_folder: str | os.PathLike, folds: Sequence[int], checkpoint: str) -> None:
    """FileNotFoundError naming the folder when it is not a results folder or lacks a fold's checkpoint."""
    model_folder = Path(model_folder)
    if not model_folder.is_dir():
        raise FileNotFoundError(f"model folder {model_folder} does not exist")
    for name in ("plans.json", "dataset.json"):
        if not (model_folder / name).is_file():
            raise FileNotFoundError(f"model folder {model_folder} lacks {name}: not an nnU-Net results folder")
    for fold in folds:
        if not (model_folder / f"fold_{fold}" / checkpoint).is_file():
            raise FileNotFoundError(f"model folder {model_folder} lacks fold_{fold}/{checkpoint}")


def model_file_ending(model_folder: str | os.PathLike) -> str:
    dataset_json = Path(model_folder) / "dataset.json"
    if not dataset_json.is_file():
        return FILE_ENDING
    return json.loads(dataset_json.read_text()).get("file_ending", FILE_ENDING)


def find_images(
    input_folder: str | os.PathLike, file_ending: str = FILE_ENDING, recursive: bool = False
) -> list[tuple[str, Path]]:
    """(case_id, image) for every `<case>_0000<file_ending>` in a folder, sorted by case id.

    With `recursive`, in the whole folder tree (hidden files and folders skipped); there a case id
    found twice, or a second channel (`<case>_0001<file_ending>` beside `<case>_0000`), is a
    ValueError naming the files, since a model of this workflow reads one CT channel per case.
    """
    input_folder = Path(input_folder)
    if not input_folder.is_dir():
        raise FileNotFoundError(f"input folder {input_folder} does not exist")
    suffix = image_file_name("", file_ending)
    if not recursive:
        images = sorted(
            (p.name[: -len(suffix)], p) for p in input_folder.iterdir() if p.name.endswith(suffix) and p.is_file()
        )
    else:
        images = _find_images_in_tree(input_folder, file_ending)
    if not images:
        where = "folder tree" if recursive else "folder"
        raise FileNotFoundError(f"input {where} {input_folder} holds no *{suffix} images")
    return images


def _find_images_in_tree(root: Path, file_ending: str) -> list[tuple[str, Path]]:
    suffix = image_file_name("", file_ending)
    channel = re.compile(rf"^(.+)_(\d{{4}}){re.escape(file_ending)}$")
    found: dict[str, Path] = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        names = {n for n in names if not n.startswith(".") and (Path(folder) / n).is_file()}
        for name in sorted(names):
            match = channel.match(name)
            if match is None:
                continue
            case_id, index = match.groups()
            if index != IMAGE_SUFFIX[1:] and image_file_name(case_id, file_ending) in names:
                raise ValueError(
                    f"{Path(folder) / name}: a second input channel (_{index}) of case {case_id}; "
                    f"the model reads one CT channel per case (*{suffix} only)"
                )
            if index != IMAGE_SUFFIX[1:]:
                continue
            path = Path(folder) / name
            if case_id in found:
                raise ValueError(f"{path}: case {case_id} found twice (also {found[case_id]})")
            found[case_id] = path
    return sorted(found.items())


# the subtype table: case_id, split, subtype (empty for test cases)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a text file through a temporary sibling, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_subtype_table(cases: Sequence[Case], path: str | os.PathLike) -> Path:
    """CSV case_id,split,subtype (subtype empty for test cases), sorted by case_id."""
    import pandas as pd

    table = pd.DataFrame(
        [(c.case_id, c.split, c.subtype) for c in cases], columns=SUBTYPE_TABLE_COLUMNS
    ).astype({"subtype": "Int64"}).sort_values("case_id", kind="stable")
    return write_text_atomic(path, table.to_csv(index=False))


def read_subtype_table(path: str | os.PathLike):
    """The subtype table with string case ids (an id like "NA" stays a string) and nullable subtypes."""
    import pandas as pd

    return pd.read_csv(path, dtype={"case_id": str, "split": str, "subtype": "Int64"},
                       keep_default_na=False, na_values={"subtype": [""]})


def read_subtypes(path: str | os.PathLike) -> dict[str, int]:
    """case id -> subtype for every labelled case of the subtype table."""
    table = read_subtype_table(path).dropna(subset=["subtype"])
    return {str(k): int(v) for k, v in zip(table["case_id"], table["subtype"])}


def table_num_subtypes(path: str | os.PathLike) -> int:
    """K of a subtype table: its labelled cases hold classes 0..K-1 (ingestion checks there is no gap)."""
    return 1 + max(read_subtypes(path).values(), default=-1)


def split_cases(path: str | os.PathLike, split: str) -> list[tuple[str, int | None]]:
    """(case_id, subtype or None) of one split of the subtype table, sorted by case id."""
    import pandas as pd

    table = read_subtype_table(path)
    table = table[table["split"] == split].sort_values("case_id", kind="stable")
    return [(str(c), None if pd.isna(s) else int(s)) for c, s in zip(table["case_id"], table["subtype"])]


# reference labels of the test split, kept outside the cohort folder


TEST_LABEL_TABLES = (PREDICTION_TABLE, "subtypes.csv")


def read_test_labels(folder: str | os.PathLike) -> dict[str, tuple[Path, int | None]]:
    """case id -> (reference mask, subtype or None) from a folder of test labels.

    Masks are `<case>.nii.gz`, directly in the folder or in `subtype<k>/` folders (which give the
    subtype); a table `subtype_results.csv` or `subtypes.csv` (columns Names,Subtype as the
    prediction table, or case_id,subtype) beside them gives subtypes too. Raises ValueError naming
    the file for anything it cannot read.
    """
    import pandas as pd

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"test labels folder {folder} does not exist")
    labels: dict[str, tuple[Path, int | None]] = {}
    for path in sorted(folder.rglob("*")):
        stem = nifti_stem(path.name)
        if stem is None or path.name.startswith(".") or not path.is_file():
            continue
        subtype = parse_subtype_folder(path.parent.name) if path.parent != folder else None
        if path.parent != folder and subtype is None:
            raise ValueError(f"{path}: test masks go directly in {folder} or in its subtype<k>/ folders")
        if stem in labels:
            raise ValueError(f"{path}: a second mask of case {stem} (also {labels[stem][0]})")
        labels[stem] = (path, subtype)
    for name in TEST_LABEL_TABLES:
        table_path = folder / name
        if not table_path.is_file():
            continue
        table = pd.read_csv(table_path, dtype=str, keep_default_na=False)
        if {"Names", "Subtype"} <= set(table.columns):
            ids = [nifti_stem(n) or n for n in table["Names"]]
            values = table["Subtype"]
        elif {"case_id", "subtype"} <= set(table.columns):
            ids, values = list(table["case_id"]), table["subtype"]
        else:
            raise ValueError(f"{table_path}: expected columns Names,Subtype or case_id,subtype")
        for case_id, value in zip(ids, values):
            if case_id not in labels:
                raise ValueError(f"{table_path}: case {case_id} has no mask in {folder}")
            if value == "":
                continue
            if not value.isdigit():
                raise ValueError(f"{table_path}: subtype of case {case_id} is {value!r}, not an integer")
            labels[case_id] = (labels[case_id][0], int(value))
    return labels


# the prediction table: Names,Subtype,prob_subtype0..K-1


def prediction_row(case_id: str, probabilities: Sequence[float], file_ending: str = FILE_ENDING) -> dict:
    """One row of the prediction table; the subtype is the most probable class."""
    probabilities = np.asarray(probabilities, dtype=float)
    return {
        "Names": mask_file_name(case_id, file_ending),
        "Subtype": int(np.argmax(probabilities)),
        **dict(zip(probability_columns(len(probabilities)), probabilities.tolist())),
    }


def write_prediction_table(rows: Sequence[dict], folder: str | os.PathLike, num_subtypes: int) -> Path:
    """`subtype_results.csv` in folder: Names,Subtype first, then one probability column per subtype."""
    import pandas as pd

    columns = [*PREDICTION_INDEX_COLUMNS, *probability_columns(num_subtypes)]
    table = pd.DataFrame(list(rows), columns=columns)
    return write_text_atomic(Path(folder) / PREDICTION_TABLE, table.to_csv(index=False))


def read_prediction_table(path: str | os.PathLike):
    """A prediction table indexed by `Names`, checked: required columns, no duplicates, integer subtypes."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"subtype predictions not found: {path}")
    table = pd.read_csv(path, dtype={"Names": str}, keep_default_na=False)
    missing = set(PREDICTION_INDEX_COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"{path} lacks column(s) {sorted(missing)}")
    duplicated = table["Names"][table["Names"].duplicated()].tolist()
    if duplicated:
        raise ValueError(f"{path} lists {duplicated} more than once")
    subtype = pd.to_numeric(table["Subtype"], errors="coerce")
    if subtype.isna().any() or (subtype % 1 != 0).any() or (subtype < 0).any():
        raise ValueError(f"{path}: column Subtype must hold integers >= 0")
    table["Subtype"] = subtype.astype(int)
    return table.set_index("Names")


# the case-overlay gallery: <rank>_<case>.png per case, worst lesion Dice first, and a table


OVERLAY_GALLERY = "gallery.csv"
OVERLAY_GALLERY_COLUMNS = ["rank", "name", "case_id", "lesion_dsc", "whole_pancreas_dsc", "subtype",
                           "predicted_subtype", "probability", "misclassified"]


def overlay_name(rank: int, case_id: str, num_cases: int) -> str:
    """File stem of a case's overlay: a zero-padded rank first, so file order is gallery order."""
    return f"{rank:0{max(3, len(str(num_cases)))}d}_{case_id}"


def overlay_labels(folder: str | os.PathLike, name: str) -> dict[str, str]:
    """Labels of one overlay (by file stem) for Snakemake's report, from the folder's gallery table.

    The report sorts entries by their first label as text, so the zero-padded rank comes first;
    every value is a string, as the report's sorting expects.
    """
    import csv

    with open(Path(folder) / OVERLAY_GALLERY, newline="") as handle:
        rows = {row["name"]: row for row in csv.DictReader(handle)}
    if name not in rows:
        raise ValueError(f"{Path(folder) / OVERLAY_GALLERY} has no overlay {name}")
    row = rows[name]
    labels = {"rank": name.split("_", 1)[0], "case": row["case_id"]}
    if row["lesion_dsc"]:
        labels["lesion DSC"] = f"{float(row['lesion_dsc']):.3f}"
    if row["subtype"]:
        verdict = "MISCLASSIFIED" if row["misclassified"] == "True" else "right"
        labels["subtype true/predicted"] = f"{row['subtype']}/{row['predicted_subtype']} {verdict}"
    else:
        probability = f" (p={float(row['probability']):.2f})" if row["probability"] else ""
        labels["predicted subtype"] = f"{row['predicted_subtype']}{probability}"
    return labels
