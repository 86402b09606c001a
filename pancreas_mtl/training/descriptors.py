"""The case descriptor: structure and context of the predicted lesion, read from the whole case.

The head pools first-order statistics (means and spreads) inside and around the lesion. Real
subtypes overlap there; what separates them is shape, margin, internal structure and context (a
dilated duct, an atrophic gland). `case_descriptor` measures those on one whole preprocessed case
from the network's own region probabilities, after the sliding window, so the same function serves
the case-level refit (training cases, as predicted) and deployment.

It is built to survive an imperfect lesion mask:
- intensity statistics are weighted by the soft lesion probability, not cut at 0.5;
- where nothing passes 0.5, the shape is read from the most probable lesion candidate (the
  component around the probability maximum, cut at half of it);
- the network's own uncertainty at the margin (probability mass between 0.1 and 0.9) is a
  feature: a blurred, infiltrative margin is where a network hesitates;
- the context (gland volume and thickness on each side of the lesion, the widest fluid-dark duct
  away from it and how much wider it is on one side of the lesion) depends on the whole-pancreas
  region, which is segmented far better than the lesion.

Intensities are in HU where the configuration uses nnU-Net's CT normalisation (inverted with the
plans' foreground statistics; values beyond its 0.5/99.5 percentiles stay clipped), otherwise in
the normalised units. Every value is finite, also without any lesion or pancreas.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage

FLUID_HU = 25.0
# a lesion voxel this much above the parenchyma is bright (hyper-enhancing rim, calcification)
BRIGHT_ABOVE_HU = 40.0
# margin of the crop around the gland, in mm: room for the rim, the shell and the gradients
CROP_MARGIN_MM = 6.0

FIRST_ORDER = ("lesion_mean_rel", "lesion_std", "lesion_log_volume", "parenchyma_level")
NAMES = (
    *FIRST_ORDER,
    "lesion_p10_rel",
    "lesion_p50_rel",
    "lesion_p90_rel",
    "fluid_fraction",
    "bright_fraction",
    "texture_log_std",
    "core_minus_periphery",
    "rim_minus_lesion",
    "edge_gradient",
    "edge_sharpness",
    "margin_uncertainty",
    "sphericity",
    "elongation",
    "bbox_fill",
    "components",
    "max_lesion_probability",
    "gland_log_volume",
    "gland_thickness_mm",
    "thickness_ratio_sides",
    "duct_diameter_mm",
    "duct_log_volume",
    "duct_diameter_sides_mm",
    "lesion_position",
    "gland_p05_rel",
    "gland_p95_rel",
    "gland_spread",
    "gland_fluid_fraction",
    "gland_dark_fraction",
    "gland_bright_fraction",
    "duct_to_gland",
)


def ct_to_hu(data: np.ndarray, properties: dict | None) -> np.ndarray:
    """Undo nnU-Net's CTNormalization with the channel's foreground statistics (None: as given)."""
    if properties is None:
        return data.astype(np.float32, copy=False)
    return (data * float(properties["std"]) + float(properties["mean"])).astype(np.float32)


def _weighted_mean(values: np.ndarray, weights: np.ndarray, default: float) -> float:
    total = float(weights.sum())
    return float((values * weights).sum() / total) if total > 1e-6 else default


def _weighted_quantiles(values: np.ndarray, weights: np.ndarray, qs: Sequence[float], default: float):
    keep = weights > 1e-3
    if not keep.any():
        return [default] * len(qs)
    v, w = values[keep], weights[keep]
    order = np.argsort(v, kind="stable")
    v, cumulative = v[order], np.cumsum(w[order])
    cumulative /= cumulative[-1]
    return [float(v[min(np.searchsorted(cumulative, q), len(v) - 1)]) for q in qs]


def _log_ml(voxels: float, voxel_ml: float) -> float:
    return math.log1p(voxels * voxel_ml * 1000.0)  # log(1 + mm^3)


def lesion_candidate(p_lesion: np.ndarray) -> np.ndarray:
    """Voxels above 0.5; where there are none, the component around the maximum above half of it."""
    hard = p_lesion > 0.5
    if hard.any():
        return hard
    peak = float(p_lesion.max()) if p_lesion.size else 0.0
    if peak < 0.05:
        return hard
    labels, _ = ndimage.label(p_lesion > 0.5 * peak)
    return labels == labels[np.unravel_index(int(np.argmax(p_lesion)), p_lesion.shape)]


def surface_area(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Area of the voxel faces between the mask and the rest, in mm^2."""
    padded = np.pad(mask, 1).astype(np.int8)
    area = 0.0
    for axis in range(3):
        face = math.prod(s for i, s in enumerate(spacing) if i != axis)
        area += np.count_nonzero(np.diff(padded, axis=axis)) * face
    return area


def _principal_axis(points_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre and unit principal axis of a point cloud (N, 3)."""
    centre = points_mm.mean(0)
    if len(points_mm) < 3:
        return centre, np.array([0.0, 0.0, 1.0])
    _, vectors = np.linalg.eigh(np.cov((points_mm - centre).T))
    return centre, vectors[:, -1]


def gland_crop(p_whole: np.ndarray, spacing: Sequence[float]) -> tuple[slice, ...]:
    """The bounding box of the likely gland plus CROP_MARGIN_MM; the whole volume without one."""
    found = ndimage.find_objects((p_whole > 0.1).astype(np.int8))
    if not found or found[0] is None:
        return tuple(slice(0, n) for n in p_whole.shape)
    margin = [int(math.ceil(CROP_MARGIN_MM / s)) for s in spacing]
    return tuple(
        slice(max(b.start - m, 0), min(b.stop + m, n))
        for b, m, n in zip(found[0], margin, p_whole.shape)
    )


def case_descriptor(
    hu: np.ndarray, p_whole: np.ndarray, p_lesion: np.ndarray, spacing: Sequence[float]
) -> np.ndarray:
    """The descriptor (len(NAMES),) of one case: image (z, y, x) in HU and the whole-pancreas and
    lesion probabilities on the same grid, voxel spacing in mm."""
    spacing = tuple(float(s) for s in spacing[-3:])
    crop = gland_crop(p_whole, spacing)
    hu = np.asarray(hu, dtype=np.float32)[crop]
    p_whole = np.clip(np.asarray(p_whole, dtype=np.float32)[crop], 0, 1)
    p_lesion = np.clip(np.asarray(p_lesion, dtype=np.float32)[crop], 0, 1)
    voxel_ml = math.prod(spacing) / 1000.0
    # neutral values where there is nothing to measure (no lesion, no gland, no duct)
    f = {**dict.fromkeys(NAMES, 0.0), "sphericity": 1.0, "thickness_ratio_sides": 1.0}

    p_parenchyma = np.clip(p_whole - p_lesion, 0, 1)
    gland = p_whole > 0.5
    fallback_level = float(np.median(hu)) if hu.size else 0.0
    level = _weighted_quantiles(hu, p_parenchyma, [0.5], fallback_level)[0]
    f["parenchyma_level"] = level
    smoothed = ndimage.gaussian_filter(hu, [0.6 / s for s in spacing])

    # context: the gland, its thickness and the duct, from the whole-pancreas region
    candidate = lesion_candidate(p_lesion)
    outside = ndimage.distance_transform_edt(~candidate, sampling=spacing)
    f["gland_log_volume"] = _log_ml(float(gland.sum()), voxel_ml)
    depth_in_gland = ndimage.distance_transform_edt(gland, sampling=spacing) if gland.any() else None
    duct_width = None
    if depth_in_gland is not None:
        f["gland_thickness_mm"] = 2.0 * float(np.percentile(depth_in_gland[gland], 90))
        away = outside > 3.0
        inner = depth_in_gland > 1.5
        dark = gland & ~candidate & away & inner & (smoothed < (level + FLUID_HU) / 2)
        if dark.any():
            duct_width = 2.0 * ndimage.distance_transform_edt(dark, sampling=spacing)
            f["duct_diameter_mm"] = float(duct_width.max())
            f["duct_log_volume"] = _log_ml(float(dark.sum()), voxel_ml)
            f["duct_to_gland"] = f["duct_diameter_mm"] / max(f["gland_thickness_mm"], 1.0)

    # the whole gland's own histogram, lesion included: what a missed or partial lesion mask
    # leaves out is still in the whole-pancreas region, which the network segments well
    if p_whole.sum() > 1e-3:
        p05, p50, p95 = _weighted_quantiles(smoothed, p_whole, [0.05, 0.5, 0.95], level)
        f["gland_p05_rel"], f["gland_p95_rel"] = p05 - level, p95 - level
        f["gland_spread"] = math.sqrt(max(_weighted_mean((smoothed - p50) ** 2, p_whole, 0.0), 0.0))
        f["gland_fluid_fraction"] = _weighted_mean((smoothed < FLUID_HU).astype(np.float32), p_whole, 0.0)
        dark = smoothed < level - 0.25 * max(level - FLUID_HU, 10.0)
        f["gland_dark_fraction"] = _weighted_mean(dark.astype(np.float32), p_whole, 0.0)
        bright = smoothed > level + BRIGHT_ABOVE_HU
        f["gland_bright_fraction"] = _weighted_mean(bright.astype(np.float32), p_whole, 0.0)

    f["max_lesion_probability"] = float(p_lesion.max()) if p_lesion.size else 0.0
    soft_total = float(p_lesion.sum())
    f["lesion_log_volume"] = _log_ml(soft_total, voxel_ml)
    if soft_total < 1e-3 or not candidate.any():
        return np.array([f[n] for n in NAMES], dtype=np.float64)

    # first-order, weighted by the soft lesion probability
    lesion_mean = _weighted_mean(hu, p_lesion, level)
    f["lesion_mean_rel"] = lesion_mean - level
    f["lesion_std"] = math.sqrt(max(_weighted_mean((hu - lesion_mean) ** 2, p_lesion, 0.0), 0.0))
    p10, p50, p90 = _weighted_quantiles(hu, p_lesion, [0.1, 0.5, 0.9], lesion_mean)
    f["lesion_p10_rel"], f["lesion_p50_rel"], f["lesion_p90_rel"] = p10 - level, p50 - level, p90 - level
    f["fluid_fraction"] = _weighted_mean((smoothed < FLUID_HU).astype(np.float32), p_lesion, 0.0)
    f["bright_fraction"] = _weighted_mean((hu > level + BRIGHT_ABOVE_HU).astype(np.float32), p_lesion, 0.0)
    f["margin_uncertainty"] = float(p_lesion[(p_lesion > 0.1) & (p_lesion < 0.9)].sum()) / max(soft_total, 1.0)

    # internal structure and margin of the lesion candidate
    depth = ndimage.distance_transform_edt(candidate, sampling=spacing)
    core_mask = depth > 0.5 * depth.max()
    periphery = candidate & ~core_mask
    if core_mask.any() and periphery.any():
        f["core_minus_periphery"] = float(hu[core_mask].mean() - hu[periphery].mean())
    interior = ndimage.binary_erosion(candidate)
    log_response = ndimage.gaussian_laplace(hu, [1.0 / s for s in spacing])
    if interior.any():
        f["texture_log_std"] = float(log_response[interior].std())
    shell = (outside > 0) & (outside <= 2.5)
    boundary = candidate & (depth <= max(spacing) + 1e-3)
    inside_mean = float(hu[interior].mean()) if interior.any() else lesion_mean
    if shell.any():
        shell_mean = float(hu[shell].mean())
        f["rim_minus_lesion"] = shell_mean - lesion_mean
        gradient = ndimage.gaussian_gradient_magnitude(hu, [0.7 / s for s in spacing])
        f["edge_gradient"] = float(gradient[shell | boundary].mean())
        f["edge_sharpness"] = f["edge_gradient"] / (abs(inside_mean - shell_mean) + 10.0)

    # shape
    voxels = float(candidate.sum())
    volume = voxels * voxel_ml * 1000.0
    f["sphericity"] = min(math.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / max(surface_area(candidate, spacing), 1e-6), 1.5)
    points = np.argwhere(candidate) * np.asarray(spacing)
    if len(points) >= 4:
        eigenvalues = np.linalg.eigvalsh(np.cov(points.T))
        f["elongation"] = float(math.sqrt(max(eigenvalues[0], 0.0) / max(eigenvalues[-1], 1e-6)))
    box = ndimage.find_objects(candidate.astype(np.int8))[0]
    f["bbox_fill"] = voxels / math.prod(b.stop - b.start for b in box)
    f["components"] = float(ndimage.label(p_lesion > 0.5)[1])

    # where the lesion sits along the gland; the gland's thickness and the duct's width on either
    # side of it (a duct dilated and a gland atrophic upstream of an obstructing lesion)
    if depth_in_gland is not None:
        gland_points = np.argwhere(gland) * np.asarray(spacing)
        centre, axis = _principal_axis(gland_points)
        along = (gland_points - centre) @ axis
        lesion_along = float(((points - centre) @ axis).mean())
        span = float(along.max() - along.min()) if along.size else 0.0
        if span > 0:
            f["lesion_position"] = abs((lesion_along - along.min()) / span - 0.5) * 2
        thickness = depth_in_gland[gland]
        not_lesion = ~candidate[gland]
        sides = [(along < lesion_along) & not_lesion, (along >= lesion_along) & not_lesion]
        means = [float(thickness[side].mean()) for side in sides if side.sum() >= 10]
        if len(means) == 2:
            f["thickness_ratio_sides"] = min(means) / max(max(means), 1e-6)
        if duct_width is not None:
            widths = duct_width[gland]
            side_max = [float(widths[side].max()) if side.any() else 0.0 for side in sides]
            f["duct_diameter_sides_mm"] = max(side_max) - min(side_max)
    return np.array([f[n] for n in NAMES], dtype=np.float64)
