"""Deterministic synthetic pancreas CT cohort in the assessment layout.

Each case is a cropped abdominal ROI (nibabel axes X, Y, Z; RAS: +x right, +y anterior, +z superior)
holding fat, organs, vessels, bowel, a curved lobulated pancreas and exactly one lesion whose
appearance, and nothing else, encodes the subtype:

- subtype 0, PDAC-like: hypo-attenuating, ill-defined margin, lobulated, mildly heterogeneous;
- subtype 1, cystic: water density, sharp edge, homogeneous, round, sometimes a thin bright wall;
- subtype 2, hyper-enhancing (neuroendocrine-like): brighter than pancreas, round, sometimes a bright rim.

Every case depends only on (seed, case index, subtype), and the anatomy only on (seed, case index),
so parallel generation is byte-identical to serial and image statistics outside the lesion carry
no subtype information. The files reproduce the real cohort's quirks: float masks storing label 1 as
1.0000152587890625, int16 and float32 images, anisotropic spacing, stray non-image files.
"""

from __future__ import annotations

import gzip
import logging
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

SUBTYPES = (0, 1, 2)
LABELLED_SPLITS = ("train", "validation")
SPLITS = (*LABELLED_SPLITS, "test")
DEFAULT_CLASS_FRACTIONS = (62 / 252, 106 / 252, 84 / 252)

FLOAT_LABEL_ONE = np.float32(1.0000152587890625)
FLOAT_MASK_PROBABILITY = 214 / 288
FLOAT_IMAGE_PROBABILITY = 0.5

SHAPE_RANGE_XYZ = ((84, 112), (64, 88), (32, 44))
FIELD_OF_VIEW_RANGE_MM = (359, 409)
CT_MATRIX_SIZE = 512
SLICE_SPACING_MM = 2.0
LESION_FRACTION_RANGE = (0.009, 0.024)
HU_RANGE = (-1024.0, 3071.0)
GZIP_LEVEL = 1

# Leading stream ids keep every random stream distinct: SeedSequence pads short entropy lists with zeros.
_ASSIGNMENT_STREAM = 101
_DTYPE_STREAM = 102
_STRAY_STREAM = 103
_GEOMETRY_STREAM = 1
_ANATOMY_STREAM = 2
_LESION_GEOMETRY_STREAM = 3
_LESION_APPEARANCE_STREAM = 4

_GOLDEN_FRACTION = (math.sqrt(5) - 1) / 2
_SILVER_FRACTION = math.sqrt(2) - 1


@dataclass(frozen=True)
class CaseSpec:
    """Where one case goes and what it holds; the subtype of a test case is drawn but never written."""

    index: int
    case_id: str
    split: str
    subtype: int


@dataclass(frozen=True)
class Pancreas:
    """Centerline and voxel mask of the gland; radius_mm is the local radius along the centerline."""

    centerline_mm: np.ndarray
    radius_mm: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class Lesion:
    """Label mask, blending weight (the mask blurred by the margin), target HU and local noise scale."""

    mask: np.ndarray
    weight: np.ndarray
    hu: np.ndarray
    noise_scale: np.ndarray


@dataclass(frozen=True)
class SyntheticCase:
    """A drawn case in nibabel (X, Y, Z) order: float HU image, uint8 labels, voxel zooms, affine."""

    hu: np.ndarray
    labels: np.ndarray
    zooms: tuple[float, float, float]
    affine: np.ndarray


def make_demo_cohort(
    out_dir,
    n_train=30,
    n_validation=15,
    n_test=10,
    seed=0,
    class_fractions=DEFAULT_CLASS_FRACTIONS,
    workers=1,
) -> dict:
    """Write a synthetic cohort in the assessment layout under out_dir and return its summary.

    The summary holds `seed`, `counts` ({split: {subtype: n}}, test included although its subtypes are
    not written) and `cases`: one record per case with `case_id`, `split`, `subtype`, `shape` and
    `spacing` (nibabel X, Y, Z order, mm), `image_dtype`, `mask_dtype` and the `image`/`mask` paths
    relative to out_dir (`mask` None for test). The same arguments give byte-identical files, whatever
    `workers` is.
    """
    out_dir = Path(out_dir)
    if n_train < len(SUBTYPES) or n_validation < len(SUBTYPES) or n_test < 0:
        raise ValueError(
            f"need n_train and n_validation >= {len(SUBTYPES)} (one case per subtype) and n_test >= 0, "
            f"got n_train={n_train}, n_validation={n_validation}, n_test={n_test}"
        )
    if seed < 0 or workers < 1:
        raise ValueError(
            f"need seed >= 0 and workers >= 1, got seed={seed}, workers={workers}"
        )
    # A stale case from an earlier, larger cohort would silently join this one.
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"demo cohort directory is not empty: {out_dir}")

    specs = plan_cases(n_train, n_validation, n_test, seed, class_fractions)
    for split in LABELLED_SPLITS:
        for subtype in SUBTYPES:
            (out_dir / split / f"subtype{subtype}").mkdir(parents=True, exist_ok=True)
    (out_dir / "test").mkdir(parents=True, exist_ok=True)

    write = partial(write_case, out_dir, seed)
    if workers == 1:
        records = [write(spec) for spec in specs]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            records = list(pool.map(write, specs))
    write_stray_files(out_dir, seed)

    counts = {split: {subtype: 0 for subtype in SUBTYPES} for split in SPLITS}
    for spec in specs:
        counts[spec.split][spec.subtype] += 1
    logger.info(
        "demo cohort (seed %d) in %s, cases per split and subtype: %s",
        seed,
        out_dir,
        counts,
    )
    return {"out_dir": str(out_dir), "seed": seed, "counts": counts, "cases": records}


def subtype_counts(n_cases, class_fractions, at_least_one) -> list[int]:
    """Split n_cases over the subtypes by largest remainder, optionally giving every subtype one case."""
    fractions = np.asarray(class_fractions, dtype=float)
    if fractions.shape != (len(SUBTYPES),) or np.any(fractions <= 0):
        raise ValueError(
            f"class_fractions needs {len(SUBTYPES)} positive numbers, got {class_fractions}"
        )
    quotas = n_cases * fractions / fractions.sum()
    counts = np.floor(quotas).astype(int)
    # Stable sort so that ties go to the lower subtype, independent of platform.
    by_remainder = np.argsort(-(quotas - counts), kind="stable")
    counts[by_remainder[: n_cases - counts.sum()]] += 1
    if at_least_one:
        for subtype in SUBTYPES:
            if counts[subtype] == 0:
                counts[np.argmax(counts)] -= 1
                counts[subtype] = 1
    return counts.tolist()


def plan_cases(n_train, n_validation, n_test, seed, class_fractions) -> list[CaseSpec]:
    """Give every case an index, id, split and subtype; subtypes are shuffled within each split."""
    rng = np.random.default_rng([_ASSIGNMENT_STREAM, seed])
    n_total = n_train + n_validation + n_test
    id_width = max(3, len(str(n_total - 1)))
    specs = []
    for split, n_cases in zip(SPLITS, (n_train, n_validation, n_test)):
        counts = subtype_counts(
            n_cases, class_fractions, at_least_one=split in LABELLED_SPLITS
        )
        subtypes = rng.permutation(np.repeat(SUBTYPES, counts))
        for subtype in subtypes:
            index = len(specs)
            specs.append(
                CaseSpec(index, f"demo_{index:0{id_width}d}", split, int(subtype))
            )
    return specs


def is_selected(seed, index, salt, probability, step) -> bool:
    """Deterministic per-case coin with a low-discrepancy sequence, so even a few cases mix both sides."""
    offset = np.random.default_rng([_DTYPE_STREAM, seed, salt]).random()
    return (offset + index * step) % 1.0 < probability


def case_rngs(seed, index, subtype) -> tuple[np.random.Generator, ...]:
    """Independent streams for geometry, anatomy, lesion placement and subtype-specific appearance."""
    return (
        np.random.default_rng([_GEOMETRY_STREAM, seed, index]),
        np.random.default_rng([_ANATOMY_STREAM, seed, index]),
        np.random.default_rng([_LESION_GEOMETRY_STREAM, seed, index]),
        np.random.default_rng([_LESION_APPEARANCE_STREAM, seed, index, subtype]),
    )


def draw_geometry(
    rng,
) -> tuple[tuple[int, int, int], tuple[float, float, float], np.ndarray]:
    """ROI shape, voxel zooms and affine; in-plane spacing is FOV/512 as on a real scanner (exact in float32)."""
    shape = tuple(int(rng.integers(low, high + 1)) for low, high in SHAPE_RANGE_XYZ)
    field_of_view_mm = int(
        rng.integers(FIELD_OF_VIEW_RANGE_MM[0], FIELD_OF_VIEW_RANGE_MM[1] + 1)
    )
    in_plane_mm = field_of_view_mm / CT_MATRIX_SIZE
    zooms = (in_plane_mm, in_plane_mm, SLICE_SPACING_MM)
    origin = np.round(rng.uniform((-120, -60, -400), (20, 80, -100)) * 16) / 16
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = origin
    return shape, zooms, affine


def mm_grid(shape, zooms) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable voxel-centre coordinates in mm, relative to the ROI corner."""
    return tuple(
        (np.arange(n, dtype=np.float32) * np.float32(zoom)).reshape(
            [-1 if axis == i else 1 for axis in range(3)]
        )
        for i, (n, zoom) in enumerate(zip(shape, zooms))
    )


def smooth_field(rng, shape, zooms, correlation_mm) -> np.ndarray:
    """Unit-variance smooth random field: Gaussian kernels on a coarse node grid, applied axis by axis."""
    kernel_sigma_mm = correlation_mm / 2
    axis_weights = []
    for n, zoom in zip(shape, zooms):
        node_step_mm = max(kernel_sigma_mm, zoom)
        # Nodes reach beyond the ROI so that the field statistics do not change near its border.
        nodes = (
            np.arange(int(math.ceil(n * zoom / node_step_mm)) + 7) - 3
        ) * node_step_mm
        positions = np.arange(n) * zoom
        weights = np.exp(
            -0.5 * ((positions[:, None] - nodes[None, :]) / kernel_sigma_mm) ** 2
        )
        axis_weights.append(
            (weights / np.sqrt((weights**2).sum(axis=1, keepdims=True))).astype(
                np.float32
            )
        )
    field = rng.standard_normal(
        [weights.shape[1] for weights in axis_weights], dtype=np.float32
    )
    # Plain einsum stays off BLAS, whose thread pool would oversubscribe the worker processes.
    field = np.einsum("abc,kc->abk", field, axis_weights[2])
    field = np.einsum("abk,jb->ajk", field, axis_weights[1])
    return np.einsum("ajk,ia->ijk", field, axis_weights[0])


def ellipsoid_radius(grid, center_mm, semi_axes_mm, angle=0.0) -> np.ndarray:
    """Normalised ellipsoid radius (1 on the surface), rotated in the axial plane by angle."""
    dx, dy, dz = (axis - np.float32(c) for axis, c in zip(grid, center_mm))
    cos, sin = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    u = (cos * dx + sin * dy) / np.float32(semi_axes_mm[0])
    v = (cos * dy - sin * dx) / np.float32(semi_axes_mm[1])
    w = dz / np.float32(semi_axes_mm[2])
    return np.sqrt(u * u + v * v + w * w)


def distance_to_curve(points_mm, shape, zooms) -> tuple[np.ndarray, np.ndarray]:
    """Distance in mm from every voxel to a densely sampled curve, and the index of the nearest sample."""
    voxels = np.round(points_mm / np.asarray(zooms)).astype(int)
    inside = np.all((voxels >= 0) & (voxels < np.asarray(shape)), axis=1)
    sample_index = np.zeros(shape, dtype=np.int32)
    not_on_curve = np.ones(shape, dtype=bool)
    sample_index[tuple(voxels[inside].T)] = np.flatnonzero(inside)
    not_on_curve[tuple(voxels[inside].T)] = False
    distance, nearest = ndimage.distance_transform_edt(
        not_on_curve, sampling=zooms, return_indices=True
    )
    return distance.astype(np.float32), sample_index[tuple(nearest)]


def draw_pancreas(rng, shape, zooms) -> Pancreas:
    """A curved, lobulated tube from the head (right, +x) to the tail (left, superior, posterior)."""
    extent = np.asarray(shape) * np.asarray(zooms)
    t = np.linspace(0.0, 1.0, 240)
    head_x = extent[0] * rng.uniform(0.80, 0.88)
    tail_x = extent[0] * rng.uniform(0.10, 0.18)
    arch_mm, tail_drop_mm = rng.uniform(3.0, 8.0), rng.uniform(0.0, 8.0)
    rise_mm, wiggle_mm = rng.uniform(8.0, 20.0), rng.uniform(1.0, 4.0)
    y = (
        extent[1] * rng.uniform(0.45, 0.55)
        + arch_mm * np.sin(np.pi * t)
        - tail_drop_mm * t
    )
    z = (
        extent[2] * 0.5
        + rise_mm * (t - 0.5)
        + wiggle_mm * np.sin(2 * np.pi * t + rng.uniform(0, 2 * np.pi))
    )
    centerline = np.stack([head_x + (tail_x - head_x) * t, y, z], axis=1)
    head_radius, tail_radius = rng.uniform(10.0, 12.5), rng.uniform(6.0, 8.0)
    radius = head_radius + (tail_radius - head_radius) * t**0.7

    distance, nearest = distance_to_curve(centerline, shape, zooms)
    lobulation = 1.0 + 0.12 * smooth_field(rng, shape, zooms, correlation_mm=5.0)
    mask = distance < radius[nearest].astype(np.float32) * lobulation
    return Pancreas(centerline, radius, mask)


def draw_tube(grid, hu, axis_point_mm, direction, radius_mm, value) -> None:
    """Paint a straight cylinder (a vessel or bowel segment) into hu in place."""
    direction = np.asarray(direction, dtype=np.float32) / np.linalg.norm(direction)
    offsets = [axis - np.float32(p) for axis, p in zip(grid, axis_point_mm)]
    along = sum(d * o for d, o in zip(direction, offsets))
    squared = sum(o * o for o in offsets) - along * along
    hu[squared < np.float32(radius_mm**2)] = value


def draw_anatomy(rng, shape, zooms, pancreas) -> np.ndarray:
    """Fat, muscle, spine, kidney, spleen, liver, bowel and vessels around the pancreas, in HU."""
    grid = mm_grid(shape, zooms)
    extent = np.asarray(shape) * np.asarray(zooms)
    hu = -100.0 + 12.0 * smooth_field(rng, shape, zooms, correlation_mm=10.0)
    # Soft-edged soft-tissue strands and nodes in the mesenteric fat.
    strands = np.clip(
        (smooth_field(rng, shape, zooms, correlation_mm=4.0) - 1.3) / 0.3, 0.0, 1.0
    )
    hu += strands * (30.0 - hu)

    spine_x = extent[0] * rng.uniform(0.40, 0.60)
    spine_y, spine_radius = -rng.uniform(10.0, 18.0), rng.uniform(16.0, 20.0)
    for side in (-1.0, 1.0):
        psoas = ellipsoid_radius(
            grid, (spine_x + side * 24.0, 2.0, extent[2] / 2), (9.0, 9.0, 1e4)
        )
        hu[psoas < 1.0] = rng.uniform(40.0, 55.0)
    spine = ellipsoid_radius(
        grid, (spine_x, spine_y, extent[2] / 2), (spine_radius, spine_radius, 1e4)
    )
    hu[spine < 1.0] = rng.uniform(180.0, 260.0)
    hu[(spine < 1.0) & (spine > 0.88)] = rng.uniform(550.0, 750.0)

    if rng.random() < 0.8:
        kidney_center = (
            rng.uniform(-5.0, 12.0),
            rng.uniform(-6.0, 6.0),
            extent[2] * rng.uniform(0.3, 0.7),
        )
        kidney = ellipsoid_radius(
            grid, kidney_center, (22.0, 16.0, 45.0), rng.uniform(-0.4, 0.4)
        )
        hu[kidney < 1.0] = rng.uniform(100.0, 130.0)
        hu[(kidney < 1.0) & (kidney > 0.72)] = rng.uniform(150.0, 190.0)
    if rng.random() < 0.6:
        spleen_center = (
            -rng.uniform(10.0, 22.0),
            extent[1] * rng.uniform(0.2, 0.6),
            extent[2] * rng.uniform(0.8, 1.2),
        )
        spleen = ellipsoid_radius(grid, spleen_center, (26.0, 30.0, 40.0))
        hu[spleen < 1.0] = rng.uniform(100.0, 125.0)
    if rng.random() < 0.85:
        liver_center = (
            extent[0] + rng.uniform(12.0, 28.0),
            extent[1] * rng.uniform(0.6, 1.1),
            extent[2] * rng.uniform(0.7, 1.1),
        )
        liver = ellipsoid_radius(grid, liver_center, (30.0, 40.0, 50.0)) < 1.0
        liver_texture = 4.0 * smooth_field(rng, shape, zooms, correlation_mm=6.0)
        hu[liver] = rng.uniform(55.0, 70.0) + liver_texture[liver]

    draw_bowel(rng, grid, hu, extent, pancreas)
    draw_vessels(rng, grid, hu, extent, spine_x, pancreas, shape, zooms)
    return hu


def draw_bowel(rng, grid, hu, extent, pancreas) -> None:
    """Anterior bowel loops and a duodenum beside the head: enhancing wall, fluid, and gas rising anteriorly."""
    head = pancreas.centerline_mm[0]
    duodenum_x = head[0] + pancreas.radius_mm[0] + rng.uniform(5.0, 9.0)
    loops = [
        (
            (duodenum_x, head[1], head[2]),
            (rng.uniform(7.0, 10.0), rng.uniform(7.0, 10.0), 60.0),
            0.0,
        )
    ]
    for _ in range(int(rng.integers(2, 5))):
        center = (
            extent[0] * rng.uniform(0.05, 0.95),
            extent[1] * rng.uniform(0.8, 1.1),
            extent[2] * rng.uniform(0.0, 1.0),
        )
        semi_axes = (
            rng.uniform(8.0, 16.0),
            rng.uniform(7.0, 12.0),
            rng.uniform(10.0, 25.0),
        )
        loops.append((center, semi_axes, rng.uniform(0.0, np.pi)))
    for center, semi_axes, angle in loops:
        radius = ellipsoid_radius(grid, center, semi_axes, angle)
        hu[radius < 1.0] = rng.uniform(40.0, 70.0)
        lumen = radius < 0.78
        hu[lumen] = rng.uniform(0.0, 25.0)
        if rng.random() < 0.6:
            gas_level_mm = center[1] + semi_axes[1] * rng.uniform(-0.3, 0.5)
            hu[lumen & (grid[1] > np.float32(gas_level_mm))] = rng.uniform(
                -950.0, -850.0
            )


def draw_vessels(rng, grid, hu, extent, spine_x, pancreas, shape, zooms) -> None:
    """Aorta in front of the spine, SMV behind the pancreatic neck and the splenic vein along the body and tail."""
    aorta_radius = rng.uniform(8.0, 11.0)
    aorta = (spine_x - rng.uniform(4.0, 10.0), rng.uniform(4.0, 10.0), extent[2] / 2)
    draw_tube(
        grid,
        hu,
        aorta,
        (rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1), 1.0),
        aorta_radius,
        rng.uniform(190.0, 250.0),
    )

    neck = int(0.35 * (len(pancreas.radius_mm) - 1))
    vein_hu = rng.uniform(170.0, 220.0)
    smv_radius = rng.uniform(4.0, 6.0)
    smv = pancreas.centerline_mm[neck] - (
        0.0,
        pancreas.radius_mm[neck] + smv_radius - 2.0,
        0.0,
    )
    draw_tube(grid, hu, smv, (rng.uniform(-0.15, 0.15), 0.0, 1.0), smv_radius, vein_hu)

    splenic_radius = rng.uniform(3.0, 4.5)
    splenic = pancreas.centerline_mm[neck:].copy()
    splenic[:, 1] -= pancreas.radius_mm[neck:] + splenic_radius - 1.5
    distance, _ = distance_to_curve(splenic, shape, zooms)
    hu[distance < splenic_radius] = vein_hu


def paint_pancreas(rng, hu, pancreas, shape, zooms) -> float:
    """Paint the enhancing gland with a fine texture; returns its mean attenuation for the lesion contrast."""
    pancreas_hu = rng.uniform(35.0, 50.0)
    texture = 5.0 * smooth_field(rng, shape, zooms, correlation_mm=2.5)
    hu[pancreas.mask] = pancreas_hu + texture[pancreas.mask]
    return pancreas_hu


@dataclass(frozen=True)
class LesionAppearance:
    """What sets the subtypes apart: density, margin, shape, texture and an optional rim or wall."""

    core_hu: float
    heterogeneity_hu: float
    lobulation: float
    margin_sigma_mm: float
    noise_scale: float
    rim_thickness_mm: float
    rim_hu: float | None


def draw_lesion_appearance(rng, subtype, pancreas_hu) -> LesionAppearance:
    """PDAC-like hypodense and ill-defined, cystic water-dense and smooth, or hyper-enhancing and round."""
    if subtype == 0:
        return LesionAppearance(
            core_hu=pancreas_hu - rng.uniform(18.0, 33.0),
            heterogeneity_hu=7.0,
            lobulation=rng.uniform(0.15, 0.28),
            margin_sigma_mm=rng.uniform(0.7, 1.0),
            noise_scale=1.0,
            rim_thickness_mm=0.0,
            rim_hu=None,
        )
    if subtype == 1:
        has_wall = rng.random() < 0.4
        return LesionAppearance(
            core_hu=rng.uniform(0.0, 10.0),
            heterogeneity_hu=1.5,
            lobulation=rng.uniform(0.0, 0.05),
            margin_sigma_mm=0.15,
            noise_scale=rng.uniform(0.45, 0.65),
            rim_thickness_mm=rng.uniform(0.5, 0.8),
            rim_hu=rng.uniform(40.0, 60.0) if has_wall else None,
        )
    core_hu = pancreas_hu + rng.uniform(30.0, 60.0)
    has_rim = rng.random() < 0.5
    return LesionAppearance(
        core_hu=core_hu,
        heterogeneity_hu=4.0,
        lobulation=rng.uniform(0.0, 0.06),
        margin_sigma_mm=0.2,
        noise_scale=1.0,
        rim_thickness_mm=rng.uniform(1.5, 2.5),
        rim_hu=core_hu + rng.uniform(10.0, 25.0) if has_rim else None,
    )


def draw_lesion(geometry_rng, appearance, pancreas, shape, zooms) -> Lesion:
    """One lesion in or at the edge of the pancreas; placement and size never depend on the subtype."""
    grid = mm_grid(shape, zooms)
    along = int(geometry_rng.uniform(0.15, 0.85) * (len(pancreas.radius_mm) - 1))
    direction = geometry_rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    center = (
        pancreas.centerline_mm[along]
        + direction * geometry_rng.uniform(0.0, 0.5) * pancreas.radius_mm[along]
    )
    roi_volume_mm3 = float(np.prod(shape) * np.prod(zooms))
    target_volume_mm3 = geometry_rng.uniform(*LESION_FRACTION_RANGE) * roi_volume_mm3
    equivalent_radius_mm = (3.0 * target_volume_mm3 / (4.0 * np.pi)) ** (1.0 / 3.0)
    aspect = np.exp(geometry_rng.uniform(-0.2, 0.2, size=3))
    semi_axes = equivalent_radius_mm * aspect / np.prod(aspect) ** (1.0 / 3.0)
    angle = geometry_rng.uniform(0.0, np.pi)
    lobulation_field = smooth_field(geometry_rng, shape, zooms, correlation_mm=6.0)
    texture_field = smooth_field(geometry_rng, shape, zooms, correlation_mm=3.0)

    # A bounded shift of the surface keeps lobes attached; the a^2 term keeps the expected volume.
    lobulation = appearance.lobulation
    radius = (
        ellipsoid_radius(grid, center, semi_axes, angle)
        - np.float32(lobulation) * np.clip(lobulation_field, -1.5, 1.5)
        + np.float32(lobulation**2)
    )
    mask = largest_component(radius < 1.0)
    # Blurring the final mask, not the radius, keeps the margin local, so far anatomy is bit-identical.
    weight = ndimage.gaussian_filter(
        mask.astype(np.float32),
        sigma=[appearance.margin_sigma_mm / zoom for zoom in zooms],
    )
    lesion_hu = (
        np.float32(appearance.core_hu)
        + np.float32(appearance.heterogeneity_hu) * texture_field
    )
    if appearance.rim_hu is not None:
        rim = mask & (
            radius
            > np.float32(1.0 - appearance.rim_thickness_mm / equivalent_radius_mm)
        )
        lesion_hu[rim] = appearance.rim_hu
    noise_scale = np.ones(shape, dtype=np.float32)
    noise_scale[mask] = appearance.noise_scale
    return Lesion(mask, weight, lesion_hu.astype(np.float32), noise_scale)


def largest_component(mask) -> np.ndarray:
    """The largest connected part of a mask, so that a lobulated lesion stays one lesion."""
    components, n_components = ndimage.label(mask)
    if n_components <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == np.argmax(sizes)


def add_scanner_blur_and_noise(rng, hu, zooms, noise_scale) -> np.ndarray:
    """Blur by the scanner's point spread, then add slightly correlated quantum noise."""
    in_plane_sigma = 0.45 / zooms[0]
    blurred = ndimage.gaussian_filter(hu, sigma=(in_plane_sigma, in_plane_sigma, 0.35))
    noise = ndimage.gaussian_filter(
        rng.standard_normal(hu.shape, dtype=np.float32), sigma=(0.6, 0.6, 0.3)
    )
    noise *= np.float32(rng.uniform(12.0, 18.0) / noise.std())
    return np.clip(blurred + noise * noise_scale, *HU_RANGE).astype(np.float32)


def draw_case(seed, index, subtype) -> SyntheticCase:
    """Draw one case; everything but the lesion's appearance is the same for every subtype."""
    geometry_rng, anatomy_rng, lesion_geometry_rng, appearance_rng = case_rngs(
        seed, index, subtype
    )
    shape, zooms, affine = draw_geometry(geometry_rng)
    pancreas = draw_pancreas(anatomy_rng, shape, zooms)
    hu = draw_anatomy(anatomy_rng, shape, zooms, pancreas)
    pancreas_hu = paint_pancreas(anatomy_rng, hu, pancreas, shape, zooms)
    appearance = draw_lesion_appearance(appearance_rng, subtype, pancreas_hu)
    lesion = draw_lesion(lesion_geometry_rng, appearance, pancreas, shape, zooms)
    hu += lesion.weight * (lesion.hu - hu)
    hu = add_scanner_blur_and_noise(anatomy_rng, hu, zooms, lesion.noise_scale)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[pancreas.mask] = 1
    labels[lesion.mask] = 2
    return SyntheticCase(hu, labels, zooms, affine)


def nifti_gz_bytes(array, affine) -> bytes:
    """Gzipped NIfTI-1 with sform and qform set (code 1) and gzip mtime 0, so the bytes are reproducible."""
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=GZIP_LEVEL, mtime=0)


def write_case(out_dir, seed, spec) -> dict:
    """Draw and write one case (image, and mask outside test) with its per-case dtype quirks."""
    case = draw_case(seed, spec.index, spec.subtype)
    out_dir = Path(out_dir)
    folder = (
        Path(spec.split)
        if spec.split == "test"
        else Path(spec.split) / f"subtype{spec.subtype}"
    )
    (out_dir / folder).mkdir(parents=True, exist_ok=True)

    if is_selected(
        seed,
        spec.index,
        salt=0,
        probability=FLOAT_IMAGE_PROBABILITY,
        step=_SILVER_FRACTION,
    ):
        image = case.hu
    else:
        image = np.round(case.hu).astype(np.int16)
    image_path = folder / f"{spec.case_id}_0000.nii.gz"
    (out_dir / image_path).write_bytes(nifti_gz_bytes(image, case.affine))

    mask_path, mask_dtype = None, None
    if spec.split != "test":
        if is_selected(
            seed,
            spec.index,
            salt=1,
            probability=FLOAT_MASK_PROBABILITY,
            step=_GOLDEN_FRACTION,
        ):
            mask = case.labels.astype(np.float32)
            mask[case.labels == 1] = FLOAT_LABEL_ONE
        else:
            mask = case.labels
        mask_path = folder / f"{spec.case_id}.nii.gz"
        (out_dir / mask_path).write_bytes(nifti_gz_bytes(mask, case.affine))
        mask_dtype = str(mask.dtype)

    return {
        "case_id": spec.case_id,
        "split": spec.split,
        "subtype": spec.subtype,
        "shape": tuple(int(n) for n in case.hu.shape),
        "spacing": tuple(float(zoom) for zoom in case.zooms),
        "image_dtype": str(image.dtype),
        "mask_dtype": mask_dtype,
        "image": image_path.as_posix(),
        "mask": None if mask_path is None else mask_path.as_posix(),
    }


def write_stray_files(out_dir, seed) -> None:
    """The benign clutter real cohorts carry: a macOS .DS_Store and plain-text notes beside the images."""
    rng = np.random.default_rng([_STRAY_STREAM, seed])
    out_dir = Path(out_dir)
    (out_dir / "train" / ".DS_Store").write_bytes(
        b"\x00\x00\x00\x01Bud1" + rng.bytes(2048)
    )
    (out_dir / "train" / "subtype1" / "notes.txt").write_text(
        "reader 2: re-check lesion margin on slice 14\n"
    )
    (out_dir / "test" / "notes.txt").write_text("held-out cases; subtypes withheld\n")
