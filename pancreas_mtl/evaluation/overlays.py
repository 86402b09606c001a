"""Case overlays for visual QC: axial, coronal and sagittal slices through the lesion centre, with
reference and predicted contours, and a gallery of them ordered from worst to best lesion Dice.

Volumes are reoriented to RAS (nibabel's closest canonical) so the three views are the anatomical
ones whatever the file's axis order; panels are drawn in millimetres, so anisotropic voxels keep
their true aspect. Images are shown radiologically (patient's right on the viewer's left).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..layout import (
    OVERLAY_GALLERY,
    OVERLAY_GALLERY_COLUMNS,
    PREDICTION_TABLE,
    mask_file_name,
    overlay_name,
    read_prediction_table,
    write_text_atomic,
)
from .metrics import case_dice

# abdomen soft-tissue window
WINDOW_WIDTH = 400
WINDOW_LEVEL = 40
REFERENCE_COLOUR = "lime"
PREDICTION_COLOUR = "magenta"
# lesion contours solid, whole-pancreas contours dashed
LESION_STYLE = "solid"
PANCREAS_STYLE = "dashed"
# field of view around the pancreas, in mm on each side
MARGIN_MM = 30.0
DPI = 100
VIEWS = ("axial", "coronal", "sagittal")


@dataclass(frozen=True)
class OverlayCase:
    """One case to draw: its image, the reference mask and true subtype when known."""

    case_id: str
    image: Path
    reference: Path | None = None
    subtype: int | None = None


def load_canonical(path: str | os.PathLike, labels: bool = False) -> tuple[np.ndarray, tuple[float, ...]]:
    """Voxels in RAS axis order and the voxel spacing (mm); label maps rounded to integers."""
    import nibabel as nib

    image = nib.as_closest_canonical(nib.load(os.fspath(path)))
    data = np.asarray(image.dataobj)
    data = np.rint(data).astype(np.int16) if labels else data.astype(np.float32)
    return data, tuple(float(z) for z in image.header.get_zooms()[:3])


def lesion_centre(*masks: np.ndarray | None) -> tuple[int, int, int]:
    """Voxel at the centre of the first non-empty mask: its centre of mass, or, when that falls
    outside the mask (two lesions, a crescent), the mask voxel nearest to it. Without any voxel,
    the volume's centre."""
    shape = next(m.shape for m in masks if m is not None)
    for mask in masks:
        if mask is None or not mask.any():
            continue
        voxels = np.argwhere(mask)
        centre = np.rint(voxels.mean(axis=0)).astype(int)
        if not mask[tuple(centre)]:
            centre = voxels[np.argmin(((voxels - voxels.mean(axis=0)) ** 2).sum(axis=1))]
        return tuple(int(c) for c in centre)
    return tuple(s // 2 for s in shape)


def crop_bounds(masks: Sequence[np.ndarray | None], spacing: Sequence[float],
                margin_mm: float = MARGIN_MM) -> list[tuple[int, int]]:
    """Per axis [start, stop) of the masks' joint bounding box plus `margin_mm`; the whole volume
    when every mask is empty."""
    present = [m for m in masks if m is not None and m.any()]
    shape = next(m.shape for m in masks if m is not None)
    if not present:
        return [(0, s) for s in shape]
    union = np.logical_or.reduce(present)
    bounds = []
    for axis, (size, step) in enumerate(zip(shape, spacing)):
        other = tuple(a for a in range(3) if a != axis)
        indices = np.flatnonzero(union.any(axis=other))
        margin = int(math.ceil(margin_mm / step))
        bounds.append((max(0, indices[0] - margin), min(size, indices[-1] + 1 + margin)))
    return bounds


def _view(volume: np.ndarray, view: str, centre: Sequence[int], bounds) -> np.ndarray:
    """The view's slice through `centre`, cropped, rows bottom-up as drawn with origin="lower"."""
    (x0, x1), (y0, y1), (z0, z1) = bounds
    i, j, k = centre
    if view == "axial":
        return volume[x0:x1, y0:y1, k].T
    if view == "coronal":
        return volume[x0:x1, j, z0:z1].T
    return volume[i, y0:y1, z0:z1].T


def _extent(view: str, bounds, spacing) -> tuple[float, float, float, float]:
    """Outer pixel edges in mm of the view's (horizontal, vertical) axes."""
    horizontal, vertical = {"axial": (0, 1), "coronal": (0, 2), "sagittal": (1, 2)}[view]
    (h0, h1), (v0, v1) = bounds[horizontal], bounds[vertical]
    sh, sv = spacing[horizontal], spacing[vertical]
    return ((h0 - 0.5) * sh, (h1 - 0.5) * sh, (v0 - 0.5) * sv, (v1 - 0.5) * sv)


def plot_case_overlay(
    image: np.ndarray,
    spacing: Sequence[float],
    prediction: np.ndarray,
    reference: np.ndarray | None,
    title: str,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Axial, coronal and sagittal slices (RAS volumes) through the lesion centre, with the
    reference (when given) and predicted lesion (solid) and pancreas (dashed) contours.

    The centre is the reference lesion's, else the predicted lesion's, else the pancreas's. Each
    panel's title names its slice index.
    """
    centre = lesion_centre(*(m == 2 if m is not None else None for m in (reference, prediction)),
                           *(m > 0 if m is not None else None for m in (reference, prediction)))
    bounds = crop_bounds([m > 0 if m is not None else None for m in (reference, prediction)], spacing)
    contours = [(prediction, PREDICTION_COLOUR)]
    if reference is not None:
        contours.insert(0, (reference, REFERENCE_COLOUR))
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, view, index_name, index in zip(axes, VIEWS, "zyx", centre[::-1]):
        extent = _extent(view, bounds, spacing)
        ax.imshow(_view(image, view, centre, bounds), cmap="gray", origin="lower", extent=extent,
                  vmin=WINDOW_LEVEL - WINDOW_WIDTH / 2, vmax=WINDOW_LEVEL + WINDOW_WIDTH / 2,
                  interpolation="nearest")
        for labels, colour in contours:
            for region, style in ((labels > 0, PANCREAS_STYLE), (labels == 2, LESION_STYLE)):
                section = _view(region, view, centre, bounds)
                if section.any() and not section.all():
                    ax.contour(section.astype(np.float32), levels=[0.5], colors=colour, linestyles=style,
                               linewidths=1.2, origin="lower", extent=extent)
        ax.set_aspect("equal")
        # radiological convention: the patient's right (and, sagittally, front) on the left
        ax.invert_xaxis()
        ax.set_title(f"{view} {index_name}={index}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Line2D([], [], color=colour, label=label)
               for label, colour in (("reference", REFERENCE_COLOUR), ("prediction", PREDICTION_COLOUR))
               if label == "prediction" or reference is not None]
    handles += [Line2D([], [], color="gray", linestyle=LESION_STYLE, label="lesion"),
                Line2D([], [], color="gray", linestyle=PANCREAS_STYLE, label="pancreas")]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, format="png")
    return fig


def overlay_title(case_id: str, lesion_dsc: float | None, subtype: int | None, predicted: int,
                  probability: float | None) -> str:
    """Case, lesion Dice and true vs predicted subtype; a misclassified case says so."""
    parts = [case_id]
    if lesion_dsc is not None:
        parts.append(f"lesion DSC {lesion_dsc:.3f}")
    if subtype is not None:
        verdict = "MISCLASSIFIED" if subtype != predicted else "right"
        parts.append(f"subtype true {subtype}, predicted {predicted} ({verdict})")
    else:
        parts.append(f"predicted subtype {predicted}"
                     + (f" (p={probability:.2f})" if probability is not None else ""))
    return " | ".join(parts)


def gallery_order(rows: Sequence[dict]) -> list[dict]:
    """Worst lesion Dice first (ties and cases without a reference by case id, after the scored)."""
    return sorted(rows, key=lambda r: (r["lesion_dsc"] is None, r["lesion_dsc"] or 0.0, r["case_id"]))


def plot_overlays(
    cases: Iterable[OverlayCase],
    prediction_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
) -> list[dict]:
    """One overlay PNG per case in output_dir, named `<rank>_<case>.png` in gallery order (worst
    lesion Dice first), and `gallery.csv` with each case's rank, scores and subtypes."""
    import pandas as pd

    prediction_dir, output_dir = Path(prediction_dir), Path(output_dir)
    cases = list(cases)
    if not cases:
        raise ValueError(f"no cases to draw for {prediction_dir}")
    table = read_prediction_table(prediction_dir / PREDICTION_TABLE)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in cases:
        mask_path = prediction_dir / mask_file_name(case.case_id)
        if not mask_path.is_file():
            raise ValueError(f"case {case.case_id}: predicted mask not found: {mask_path}")
        if mask_path.name not in table.index:
            raise ValueError(f"case {case.case_id}: no row Names={mask_path.name} in "
                             f"{prediction_dir / PREDICTION_TABLE}")
        entry = table.loc[mask_path.name]
        predicted = int(entry["Subtype"])
        probability_column = f"prob_subtype{predicted}"
        row = {"case_id": case.case_id, "predicted_subtype": predicted, "subtype": case.subtype,
               "probability": float(entry[probability_column]) if probability_column in table else None,
               "lesion_dsc": None, "whole_pancreas_dsc": None}
        image, spacing = load_canonical(case.image)
        prediction, _ = load_canonical(mask_path, labels=True)
        reference = None
        if case.reference is not None:
            reference, _ = load_canonical(case.reference, labels=True)
            try:
                row.update(case_dice(prediction, reference))
            except ValueError as err:
                raise ValueError(f"case {case.case_id}: {mask_path} vs {case.reference}: {err}") from err
        row["misclassified"] = case.subtype is not None and case.subtype != predicted
        title = overlay_title(case.case_id, row["lesion_dsc"], case.subtype, predicted, row["probability"])
        # drawn under a hidden name; renamed once the gallery order is known
        row["drawn"] = output_dir / f".{case.case_id}.png"
        plot_case_overlay(image, spacing, prediction, reference, title, row["drawn"])
        rows.append(row)
    ordered = gallery_order(rows)
    for rank, row in enumerate(ordered, start=1):
        row["rank"] = rank
        row["name"] = overlay_name(rank, row["case_id"], len(ordered))
        os.replace(row.pop("drawn"), output_dir / f"{row['name']}.png")
    gallery = pd.DataFrame(ordered, columns=OVERLAY_GALLERY_COLUMNS).astype({"subtype": "Int64"})
    write_text_atomic(output_dir / OVERLAY_GALLERY, gallery.to_csv(index=False))
    return ordered
