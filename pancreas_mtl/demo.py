"""Deterministic synthetic pancreas CT cohort in the assessment layout.

Each case is a cropped abdominal ROI (nibabel axes X, Y, Z; RAS: +x right, +y anterior, +z superior)
holding fat, organs, vessels, bowel, a curved lobulated pancreas and exactly one lesion. A cohort has
K = `n_subtypes` subtypes (2 to 5), the first K of these archetypes.

The quick demo (the default) encodes the subtype in the lesion's appearance and nothing else:

- subtype 0, PDAC-like: hypo-attenuating, ill-defined margin, lobulated, mildly heterogeneous;
- subtype 1, cystic: water density, sharp edge, homogeneous, round, sometimes a thin bright wall;
- subtype 2, hyper-enhancing (neuroendocrine-like): brighter than pancreas, round, sometimes a bright rim;
- subtype 3, calcified mixed solid-cystic: iso-dense solid part, a fluid part, coarse calcifications;
- subtype 4, septated cyst: water density, lobulated contour, several thin enhancing septa.

Every quick case depends only on (seed, case index, subtype), and the anatomy only on (seed, case
index), so image statistics outside the lesion carry no subtype information.

The hard demo (`difficulty="hard"`) makes the subtypes overlap in first-order statistics of the true
lesion, as real ones do, and sets them apart by structure and context instead: a per-case contrast
phase scales every enhancing tissue; the gland has a main duct (label 1); a fifth of the lesions are
under 5 mm, mostly partial volume. PDAC-like lesions are hypo-enhancing to a varying degree with an
infiltrative margin, and usually a dilated duct and an atrophic gland upstream (towards the tail);
cysts are fluid or dense (mucinous), sharp and smooth, unilocular or with a few thin septa;
neuroendocrine-like lesions are round and well defined, hyper-, iso-enhancing or with a necrotic
core, sometimes calcified, with a normal duct. Each case depends only on (seed, case index, subtype).

In both modes parallel generation is byte-identical to serial. The files reproduce the real cohort's
quirks: float masks storing label 1 as 1.0000152587890625, int16 and float32 images, anisotropic
spacing, stray non-image files.
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

ARCHETYPES = (
    "PDAC-like",
    "cystic",
    "neuroendocrine-like",
    "calcified mixed solid-cystic",
    "septated cyst",
)
MAX_SUBTYPES = len(ARCHETYPES)
DEFAULT_N_SUBTYPES = 3
DIFFICULTIES = ("quick", "hard")
LABELLED_SPLITS = ("train", "validation")
SPLITS = (*LABELLED_SPLITS, "test")
# The real cohort's mix (about 25/42/33 %); other subtype counts default to a uniform mix.
DEFAULT_CLASS_FRACTIONS = (62 / 252, 106 / 252, 84 / 252)
TEST_SUBTYPE_TABLE = "subtypes.csv"

FLOAT_LABEL_ONE = np.float32(1.0000152587890625)
FLOAT_MASK_PROBABILITY = 214 / 288
FLOAT_IMAGE_PROBABILITY = 0.5

SHAPE_RANGE_XYZ = ((84, 112), (64, 88), (32, 44))
# demo.size: "quick" is CPU scale; "real" is the real cohort's size (median about 180 x 117 x 59
# voxels in nibabel's X, Y, Z at 0.73 x 0.73 x 2.0 mm), for proving the GPU recipe at full scale
SHAPE_RANGES_XYZ = {"quick": SHAPE_RANGE_XYZ, "real": ((160, 200), (104, 130), (52, 66))}
SIZES = tuple(SHAPE_RANGES_XYZ)
FIELD_OF_VIEW_RANGE_MM = (359, 409)
CT_MATRIX_SIZE = 512
SLICE_SPACING_MM = 2.0
LESION_FRACTION_RANGE = (0.009, 0.024)
HU_RANGE = (-1024.0, 3071.0)
GZIP_LEVEL = 1
CENTERLINE_SAMPLES = 240

# Hard mode: a tissue with enhancement ratio r shows UNENHANCED_HU + r * E, E the parenchyma's
# enhancement, which the per-case contrast phase scales (as it scales every enhancing organ).
UNENHANCED_HU = 40.0
CONTRAST_PHASE_RANGE = (0.5, 1.5)
PARENCHYMA_ENHANCEMENT_HU = (35.0, 60.0)
SMALL_LESION_FRACTION = 0.2
SMALL_LESION_DIAMETER_MM = 5.0
SMALL_LESION_DRAW_MM = (3.0, 4.2)
HARD_LESION_DIAMETER_MM = (9.0, 30.0)

# Leading stream ids keep every random stream distinct: SeedSequence pads short entropy lists with zeros.
_ASSIGNMENT_STREAM = 101
_DTYPE_STREAM = 102
_STRAY_STREAM = 103
_GEOMETRY_STREAM = 1
_ANATOMY_STREAM = 2
_LESION_GEOMETRY_STREAM = 3
_LESION_APPEARANCE_STREAM = 4
_SMALL_LESION_SALT = 2

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
    """Centerline and voxel mask of the gland; radius_mm is the local radius along the centerline.

    distance_mm and nearest give, per voxel, the distance to the centerline and its nearest sample.
    """

    centerline_mm: np.ndarray
    radius_mm: np.ndarray
    mask: np.ndarray
    distance_mm: np.ndarray
    nearest: np.ndarray


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
    class_fractions=None,
    workers=1,
    n_subtypes=DEFAULT_N_SUBTYPES,
    difficulty="quick",
    test_labels_dir=None,
    size="quick",
) -> dict:
    """Write a synthetic cohort in the assessment layout under out_dir and return its summary.

    `n_subtypes` (2 to 5) sets the subtype folders `subtype0..subtype{K-1}`; `class_fractions` (one
    positive number per subtype) defaults to `default_class_fractions(n_subtypes)`. `difficulty` is
    "quick" or "hard" (see the module docstring); `size` "quick" (CPU scale) or "real" (the real
    cohort's size and spacing, about 180 x 117 x 59 voxels at 0.73 x 0.73 x 2.0 mm). With `test_labels_dir` (a folder outside out_dir)
    the test split's reference masks `<case>.nii.gz` (with the same dtype quirks as the training masks)
    and `subtypes.csv` (header `Names,Subtype`, Names = `<case>.nii.gz`) are written there, so the
    test split can be scored; the cohort's test/ folder always holds images only.

    The summary holds `seed`, `n_subtypes`, `difficulty`, `test_labels_dir` (None when not written),
    `counts` ({split: {subtype: n}}, test included) and `cases`: one record per case with `case_id`,
    `split`, `subtype`, `shape` and `spacing` (nibabel X, Y, Z order, mm), `image_dtype`, `mask_dtype`
    and the `image`/`mask` paths relative to out_dir (`mask` None for test). The same arguments give
    byte-identical files, whatever `workers` is.
    """
    out_dir = Path(out_dir)
    if not isinstance(n_subtypes, (int, np.integer)) or not 2 <= n_subtypes <= MAX_SUBTYPES:
        raise ValueError(
            f"n_subtypes must be an integer from 2 to {MAX_SUBTYPES}, got {n_subtypes!r}"
        )
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    if n_train < n_subtypes or n_validation < n_subtypes or n_test < 0:
        raise ValueError(
            f"need n_train and n_validation >= {n_subtypes} (one case per subtype) and n_test >= 0, "
            f"got n_train={n_train}, n_validation={n_validation}, n_test={n_test}"
        )
    if seed < 0 or workers < 1:
        raise ValueError(
            f"need seed >= 0 and workers >= 1, got seed={seed}, workers={workers}"
        )
    if class_fractions is None:
        class_fractions = default_class_fractions(n_subtypes)
    if len(class_fractions) != n_subtypes:
        raise ValueError(
            f"class_fractions needs {n_subtypes} positive numbers (one per subtype), got {class_fractions}"
        )
    if test_labels_dir is not None:
        test_labels_dir = Path(test_labels_dir)
        if test_labels_dir.resolve().is_relative_to(out_dir.resolve()):
            raise ValueError(
                f"test_labels_dir must lie outside the cohort folder {out_dir}, got {test_labels_dir}"
            )
    # A stale case from an earlier, larger cohort would silently join this one.
    for folder in (out_dir, test_labels_dir):
        if folder is not None and folder.exists() and any(folder.iterdir()):
            raise FileExistsError(f"demo cohort directory is not empty: {folder}")

    specs = plan_cases(n_train, n_validation, n_test, seed, class_fractions)
    for split in LABELLED_SPLITS:
        for subtype in range(n_subtypes):
            (out_dir / split / f"subtype{subtype}").mkdir(parents=True, exist_ok=True)
    (out_dir / "test").mkdir(parents=True, exist_ok=True)
    if test_labels_dir is not None:
        test_labels_dir.mkdir(parents=True, exist_ok=True)

    write = partial(
        write_case,
        out_dir,
        seed,
        difficulty=difficulty,
        test_labels_dir=test_labels_dir,
        size=size,
    )
    if workers == 1:
        records = [write(spec) for spec in specs]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            records = list(pool.map(write, specs))
    write_stray_files(out_dir, seed)
    if test_labels_dir is not None:
        write_test_subtypes(test_labels_dir, specs)

    counts = {split: {subtype: 0 for subtype in range(n_subtypes)} for split in SPLITS}
    for spec in specs:
        counts[spec.split][spec.subtype] += 1
    logger.info(
        "%s demo cohort (seed %d, %d subtypes) in %s, cases per split and subtype: %s",
        difficulty,
        seed,
        n_subtypes,
        out_dir,
        counts,
    )
    return {
        "out_dir": str(out_dir),
        "seed": seed,
        "n_subtypes": n_subtypes,
        "difficulty": difficulty,
        "size": size,
        "test_labels_dir": None if test_labels_dir is None else str(test_labels_dir),
        "counts": counts,
        "cases": records,
    }


def default_class_fractions(n_subtypes) -> tuple[float, ...]:
    """The real cohort's mix for three subtypes, a uniform mix otherwise."""
    if n_subtypes == len(DEFAULT_CLASS_FRACTIONS):
        return DEFAULT_CLASS_FRACTIONS
    return (1.0 / n_subtypes,) * n_subtypes


def subtype_counts(n_cases, class_fractions, at_least_one) -> list[int]:
    """Split n_cases over the subtypes (one per fraction) by largest remainder, optionally one case each."""
    fractions = np.asarray(class_fractions, dtype=float)
    if fractions.ndim != 1 or fractions.size < 2 or np.any(fractions <= 0):
        raise ValueError(
            f"class_fractions needs one positive number per subtype (at least 2), got {class_fractions}"
        )
    quotas = n_cases * fractions / fractions.sum()
    counts = np.floor(quotas).astype(int)
    # Stable sort so that ties go to the lower subtype, independent of platform.
    by_remainder = np.argsort(-(quotas - counts), kind="stable")
    counts[by_remainder[: n_cases - counts.sum()]] += 1
    if at_least_one:
        for subtype in range(fractions.size):
            if counts[subtype] == 0:
                counts[np.argmax(counts)] -= 1
                counts[subtype] = 1
    return counts.tolist()


def plan_cases(n_train, n_validation, n_test, seed, class_fractions) -> list[CaseSpec]:
    """Give every case an index, id, split and subtype (0..len(class_fractions)-1), shuffled within each split."""
    rng = np.random.default_rng([_ASSIGNMENT_STREAM, seed])
    n_total = n_train + n_validation + n_test
    id_width = max(3, len(str(n_total - 1)))
    specs = []
    for split, n_cases in zip(SPLITS, (n_train, n_validation, n_test)):
        counts = subtype_counts(
            n_cases, class_fractions, at_least_one=split in LABELLED_SPLITS
        )
        subtypes = rng.permutation(np.repeat(np.arange(len(counts)), counts))
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
    rng, size="quick"
) -> tuple[tuple[int, int, int], tuple[float, float, float], np.ndarray]:
    """ROI shape, voxel zooms and affine; in-plane spacing is FOV/512 as on a real scanner (exact in float32)."""
    if size not in SHAPE_RANGES_XYZ:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    shape = tuple(int(rng.integers(low, high + 1)) for low, high in SHAPE_RANGES_XYZ[size])
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


def draw_pancreas(rng, shape, zooms, radius_factor=None) -> Pancreas:
    """A curved, lobulated tube from the head (right, +x) to the tail (left, superior, posterior).

    radius_factor (one number per centerline sample, e.g. an atrophic tail) scales the local radius.
    """
    extent = np.asarray(shape) * np.asarray(zooms)
    t = np.linspace(0.0, 1.0, CENTERLINE_SAMPLES)
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

    if radius_factor is not None:
        radius = radius * radius_factor

    distance, nearest = distance_to_curve(centerline, shape, zooms)
    lobulation = 1.0 + 0.12 * smooth_field(rng, shape, zooms, correlation_mm=5.0)
    mask = distance < radius[nearest].astype(np.float32) * lobulation
    return Pancreas(centerline, radius, mask, distance, nearest)


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
    """What sets the subtypes apart: density, margin, shape, texture, an optional rim or wall, and
    internal structure (a fluid part beyond a plane, thin septa, calcifications)."""

    core_hu: float
    heterogeneity_hu: float
    lobulation: float
    margin_sigma_mm: float
    noise_scale: float
    rim_thickness_mm: float
    rim_hu: float | None
    cystic_fraction: float = 0.0
    cystic_hu: float = 0.0
    n_septa: int = 0
    septum_hu: float = 0.0
    n_calcifications: int = 0


def draw_lesion_appearance(rng, subtype, pancreas_hu) -> LesionAppearance:
    """PDAC-like hypodense and ill-defined, cystic water-dense and smooth, hyper-enhancing and round,
    calcified mixed solid-cystic, or a lobulated septated cyst."""
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
    if subtype == 3:
        return LesionAppearance(
            core_hu=pancreas_hu + rng.uniform(-10.0, 10.0),
            heterogeneity_hu=6.0,
            lobulation=rng.uniform(0.05, 0.15),
            margin_sigma_mm=0.4,
            noise_scale=1.0,
            rim_thickness_mm=0.0,
            rim_hu=None,
            cystic_fraction=rng.uniform(0.3, 0.5),
            cystic_hu=rng.uniform(5.0, 20.0),
            n_calcifications=int(rng.integers(1, 4)),
        )
    if subtype == 4:
        return LesionAppearance(
            core_hu=rng.uniform(5.0, 15.0),
            heterogeneity_hu=1.5,
            lobulation=rng.uniform(0.08, 0.14),
            margin_sigma_mm=0.15,
            noise_scale=rng.uniform(0.45, 0.65),
            rim_thickness_mm=0.0,
            rim_hu=None,
            n_septa=int(rng.integers(2, 5)),
            septum_hu=rng.uniform(45.0, 65.0),
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


def draw_lesion(
    geometry_rng, appearance, pancreas, shape, zooms, structure_rng=None
) -> Lesion:
    """One lesion in or at the edge of the pancreas; placement and size never depend on the subtype.

    structure_rng places the appearance's internal structure (fluid part, septa, calcifications).
    """
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
    paint_internal_structure(
        structure_rng,
        lesion_hu,
        mask,
        grid,
        center,
        equivalent_radius_mm,
        cystic_fraction=appearance.cystic_fraction,
        cystic_hu=appearance.cystic_hu,
        n_septa=appearance.n_septa,
        septum_hu=appearance.septum_hu,
        n_calcifications=appearance.n_calcifications,
    )
    noise_scale = np.ones(shape, dtype=np.float32)
    noise_scale[mask] = appearance.noise_scale
    return Lesion(mask, weight, lesion_hu.astype(np.float32), noise_scale)


def paint_internal_structure(
    rng,
    lesion_hu,
    mask,
    grid,
    center_mm,
    radius_mm,
    cystic_fraction=0.0,
    cystic_hu=0.0,
    n_septa=0,
    septum_hu=0.0,
    septum_thickness_mm=0.9,
    n_calcifications=0,
    calcification_hu=(350.0, 700.0),
) -> None:
    """Paint a fluid part beyond a random plane, thin septa and calcified nodules into lesion_hu in place.

    Draws nothing from rng when there is nothing to paint, so plain lesions keep their random streams.
    """
    offsets = [axis - np.float32(c) for axis, c in zip(grid, center_mm)]

    def projection():
        normal = rng.standard_normal(3)
        normal /= np.linalg.norm(normal)
        return sum(np.float32(n) * o for n, o in zip(normal, offsets))

    if cystic_fraction > 0:
        along = projection()
        cut = np.quantile(along[mask], 1.0 - cystic_fraction)
        lesion_hu[mask & (along > cut)] = cystic_hu
    for _ in range(n_septa):
        along = projection()
        offset = np.float32(rng.uniform(-0.55, 0.55) * radius_mm)
        lesion_hu[mask & (np.abs(along - offset) < np.float32(septum_thickness_mm / 2))] = septum_hu
    for _ in range(n_calcifications):
        direction = rng.standard_normal(3)
        direction *= rng.uniform(0.0, 0.6) * radius_mm / np.linalg.norm(direction)
        nodule_mm = rng.uniform(1.2, 2.2)
        squared = sum((o - np.float32(d)) ** 2 for o, d in zip(offsets, direction))
        lesion_hu[mask & (squared < np.float32(nodule_mm**2))] = rng.uniform(*calcification_hu)


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


def draw_case(seed, index, subtype, difficulty="quick", size="quick") -> SyntheticCase:
    """Draw one case; in the quick mode everything but the lesion's appearance is the same for every subtype.

    `size` "real" draws the ROI at the real cohort's size; organs and lesion scale with it as they
    do between the quick demo's cases, and the random draws are the same as at "quick".
    """
    if difficulty == "hard":
        return draw_hard_case(seed, index, subtype, size)
    if difficulty != "quick":
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    geometry_rng, anatomy_rng, lesion_geometry_rng, appearance_rng = case_rngs(
        seed, index, subtype
    )
    shape, zooms, affine = draw_geometry(geometry_rng, size)
    pancreas = draw_pancreas(anatomy_rng, shape, zooms)
    hu = draw_anatomy(anatomy_rng, shape, zooms, pancreas)
    pancreas_hu = paint_pancreas(anatomy_rng, hu, pancreas, shape, zooms)
    appearance = draw_lesion_appearance(appearance_rng, subtype, pancreas_hu)
    lesion = draw_lesion(
        lesion_geometry_rng, appearance, pancreas, shape, zooms, appearance_rng
    )
    hu += lesion.weight * (lesion.hu - hu)
    hu = add_scanner_blur_and_noise(anatomy_rng, hu, zooms, lesion.noise_scale)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[pancreas.mask] = 1
    labels[lesion.mask] = 2
    return SyntheticCase(hu, labels, zooms, affine)


@dataclass(frozen=True)
class HardAppearance:
    """A hard-mode lesion relative to the parenchyma's enhancement (ratios) and its context.

    enhancement_ratio None is a fluid lesion at fluid_hu; fluid_hu also fills a necrotic core (a
    fraction of the lesion radius) or a cystic part (a fraction of the volume beyond a plane).
    duct_radius_mm > 0 dilates the main duct upstream (towards the tail), atrophy < 1 thins the gland there.
    """

    enhancement_ratio: float | None
    fluid_hu: float
    heterogeneity_hu: float
    aspect_log: float
    lobulation: float
    lobulation_correlation_mm: float
    margin_sigma_mm: float
    necrotic_fraction: float = 0.0
    cystic_fraction: float = 0.0
    rim_ratio: float | None = None
    rim_thickness_mm: float = 0.0
    n_septa: int = 0
    septum_ratio: float = 0.0
    n_calcifications: int = 0
    duct_radius_mm: float = 0.0
    atrophy: float = 1.0


def draw_hard_appearance(rng, subtype) -> HardAppearance:
    """Overlapping densities; margin, shape, internal structure and the duct tell the subtypes apart."""

    def uniform(low, high):
        return float(rng.uniform(low, high))

    if subtype == 0:
        # Desmoplastic, hypo-enhancing to a varying degree (some iso-attenuating), infiltrative;
        # usually obstructs the duct.
        dilated, atrophic, necrotic, isoattenuating = rng.random(4) < (0.8, 0.7, 0.15, 0.2)
        return HardAppearance(
            enhancement_ratio=uniform(0.8, 1.0) if isoattenuating else uniform(0.1, 0.8),
            fluid_hu=uniform(10.0, 30.0),
            heterogeneity_hu=uniform(3.0, 8.0),
            aspect_log=0.35,
            lobulation=uniform(0.2, 0.35),
            lobulation_correlation_mm=3.5,
            margin_sigma_mm=uniform(0.8, 1.5),
            necrotic_fraction=uniform(0.3, 0.5) if necrotic else 0.0,
            duct_radius_mm=uniform(1.8, 3.5) if dilated else 0.0,
            atrophy=uniform(0.5, 0.7) if atrophic else 1.0,
        )
    if subtype == 1:
        # Serous-like water, or mucinous and dense; sharp and smooth; a few septa or a thin wall.
        mucinous, septated, walled, communicating = rng.random(4) < (0.5, 0.5, 0.4, 0.15)
        return HardAppearance(
            enhancement_ratio=None,
            fluid_hu=uniform(20.0, 60.0) if mucinous else uniform(5.0, 25.0),
            heterogeneity_hu=uniform(3.0, 8.0) if mucinous else 2.0,
            aspect_log=0.15,
            lobulation=uniform(0.0, 0.06),
            lobulation_correlation_mm=6.0,
            margin_sigma_mm=uniform(0.1, 0.25),
            rim_ratio=uniform(0.8, 1.0) if walled else None,
            rim_thickness_mm=uniform(0.6, 0.9),
            n_septa=int(rng.integers(1, 3)) if septated else 0,
            septum_ratio=uniform(0.6, 1.0),
            duct_radius_mm=uniform(1.5, 2.3) if communicating else 0.0,
        )
    if subtype == 2:
        # Well-defined and round; hyper-, iso-enhancing or with a necrotic (cystic) core; a normal duct.
        kind = rng.choice(3, p=(0.35, 0.4, 0.25))
        ratio = uniform(*((1.05, 1.5), (0.8, 1.05), (1.0, 1.5))[kind])
        has_rim, calcified = rng.random(2) < (0.35, 0.15)
        return HardAppearance(
            enhancement_ratio=ratio,
            fluid_hu=uniform(10.0, 35.0),
            heterogeneity_hu=uniform(4.0, 10.0),
            aspect_log=0.12,
            lobulation=uniform(0.0, 0.05),
            lobulation_correlation_mm=6.0,
            margin_sigma_mm=uniform(0.25, 0.45),
            necrotic_fraction=uniform(0.5, 0.75) if kind == 2 else 0.0,
            rim_ratio=ratio + uniform(0.2, 0.5) if has_rim and kind != 2 else None,
            rim_thickness_mm=uniform(1.5, 2.5),
            n_calcifications=int(rng.integers(1, 3)) if calcified else 0,
        )
    if subtype == 3:
        # Encapsulated solid part with a fluid part and coarse calcifications.
        calcified = rng.random() < 0.7
        return HardAppearance(
            enhancement_ratio=uniform(0.6, 1.1),
            fluid_hu=uniform(10.0, 35.0),
            heterogeneity_hu=uniform(5.0, 9.0),
            aspect_log=0.15,
            lobulation=uniform(0.05, 0.12),
            lobulation_correlation_mm=6.0,
            margin_sigma_mm=uniform(0.3, 0.5),
            cystic_fraction=uniform(0.3, 0.6),
            n_calcifications=int(rng.integers(1, 4)) if calcified else 0,
        )
    # Multilocular: lobulated contour, many thin septa, sometimes a calcified central scar.
    return HardAppearance(
        enhancement_ratio=None,
        fluid_hu=uniform(5.0, 30.0),
        heterogeneity_hu=2.0,
        aspect_log=0.2,
        lobulation=uniform(0.08, 0.16),
        lobulation_correlation_mm=6.0,
        margin_sigma_mm=uniform(0.15, 0.3),
        n_septa=int(rng.integers(3, 7)),
        septum_ratio=uniform(0.7, 1.1),
        n_calcifications=int(rng.random() < 0.2),
    )


def is_small_lesion(seed, index) -> bool:
    """Whether a hard-mode case gets a lesion under 5 mm; a fifth of the cases, evenly spread."""
    return is_selected(
        seed,
        index,
        salt=_SMALL_LESION_SALT,
        probability=SMALL_LESION_FRACTION,
        step=_GOLDEN_FRACTION,
    )


def upstream_weight(along_fraction) -> np.ndarray:
    """0 at and downstream of the lesion (head side), rising to 1 over a short stretch towards the tail."""
    t = np.linspace(0.0, 1.0, CENTERLINE_SAMPLES)
    return np.clip((t - along_fraction - 0.03) / 0.08, 0.0, 1.0)


def draw_duct(rng, pancreas, upstream, dilated_radius_mm) -> np.ndarray:
    """The main duct along the centerline: thin, tapering to the tail, dilated upstream if asked."""
    t = np.linspace(0.0, 1.0, CENTERLINE_SAMPLES)
    radius = rng.uniform(0.6, 0.9) * (1.0 - 0.35 * t)
    if dilated_radius_mm > 0:
        dilated = dilated_radius_mm * (1.0 - 0.3 * t)
        radius = radius + (dilated - radius) * upstream
    radius = np.minimum(radius, 0.55 * pancreas.radius_mm).astype(np.float32)
    return pancreas.mask & (pancreas.distance_mm < radius[pancreas.nearest])


def draw_hard_lesion(
    geometry_rng, structure_rng, appearance, pancreas, along_fraction, small, enhancement_hu, shape, zooms
) -> Lesion:
    """A hard-mode lesion: size from the case (a fifth under 5 mm), shape and content from the subtype."""
    grid = mm_grid(shape, zooms)
    along = int(along_fraction * (len(pancreas.radius_mm) - 1))
    direction = geometry_rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    center = (
        pancreas.centerline_mm[along]
        + direction * geometry_rng.uniform(0.0, 0.5) * pancreas.radius_mm[along]
    )
    if small:
        diameter_mm = geometry_rng.uniform(*SMALL_LESION_DRAW_MM)
    else:
        diameter_mm = math.exp(geometry_rng.uniform(*np.log(HARD_LESION_DIAMETER_MM)))
    radius_mm = diameter_mm / 2

    aspect = np.exp(structure_rng.uniform(-appearance.aspect_log, appearance.aspect_log, size=3))
    semi_axes = radius_mm * aspect / np.prod(aspect) ** (1.0 / 3.0)
    angle = structure_rng.uniform(0.0, np.pi)
    lobulation = min(appearance.lobulation, 0.08) if small else appearance.lobulation
    lobulation_field = smooth_field(
        structure_rng, shape, zooms, correlation_mm=appearance.lobulation_correlation_mm
    )
    texture_field = smooth_field(structure_rng, shape, zooms, correlation_mm=3.0)
    radius = (
        ellipsoid_radius(grid, center, semi_axes, angle)
        - np.float32(lobulation) * np.clip(lobulation_field, -1.5, 1.5)
        + np.float32(lobulation**2)
    )
    mask = largest_component(radius < 1.0)
    if not mask.any():
        voxel = np.clip(np.round(center / np.asarray(zooms)).astype(int), 0, np.asarray(shape) - 1)
        mask[tuple(voxel)] = True

    def tissue_hu(ratio):
        return UNENHANCED_HU + ratio * enhancement_hu

    if appearance.enhancement_ratio is None:
        core_hu = appearance.fluid_hu
    else:
        core_hu = tissue_hu(appearance.enhancement_ratio)
    lesion_hu = np.float32(core_hu) + np.float32(appearance.heterogeneity_hu) * texture_field
    # Under 5 mm there is no room for septa, cores or rims: such lesions are mostly partial volume.
    if not small:
        if appearance.necrotic_fraction > 0:
            necrotic = mask & (radius < np.float32(appearance.necrotic_fraction))
            lesion_hu[necrotic] = appearance.fluid_hu + 2.0 * texture_field[necrotic]
        if appearance.rim_ratio is not None:
            rim = mask & (radius > np.float32(1.0 - appearance.rim_thickness_mm / radius_mm))
            lesion_hu[rim] = tissue_hu(appearance.rim_ratio)
        paint_internal_structure(
            structure_rng,
            lesion_hu,
            mask,
            grid,
            center,
            radius_mm,
            cystic_fraction=appearance.cystic_fraction,
            cystic_hu=appearance.fluid_hu,
            n_septa=appearance.n_septa,
            septum_hu=tissue_hu(appearance.septum_ratio),
            septum_thickness_mm=0.8,
            n_calcifications=appearance.n_calcifications,
        )
    weight = ndimage.gaussian_filter(
        mask.astype(np.float32),
        sigma=[appearance.margin_sigma_mm / zoom for zoom in zooms],
    )
    return Lesion(mask, weight, lesion_hu.astype(np.float32), np.ones(shape, dtype=np.float32))


def draw_hard_case(seed, index, subtype, size="quick") -> SyntheticCase:
    """Draw one hard-mode case: contrast phase, duct and gland shaped by the lesion, overlapping densities."""
    geometry_rng, anatomy_rng, lesion_geometry_rng, appearance_rng = case_rngs(
        seed, index, subtype
    )
    shape, zooms, affine = draw_geometry(geometry_rng, size)
    appearance = draw_hard_appearance(appearance_rng, subtype)
    along_fraction = lesion_geometry_rng.uniform(0.15, 0.85)
    upstream = upstream_weight(along_fraction)
    pancreas = draw_pancreas(
        anatomy_rng, shape, zooms, radius_factor=1.0 - (1.0 - appearance.atrophy) * upstream
    )
    hu = draw_anatomy(anatomy_rng, shape, zooms, pancreas)
    # The contrast phase scales the enhancement of every enhancing organ and vessel, and the gland's.
    phase = anatomy_rng.uniform(*CONTRAST_PHASE_RANGE)
    enhancing = (hu > UNENHANCED_HU + 20.0) & (hu < 400.0)
    hu[enhancing] = UNENHANCED_HU + (hu[enhancing] - UNENHANCED_HU) * np.float32(phase)
    enhancement_hu = phase * anatomy_rng.uniform(*PARENCHYMA_ENHANCEMENT_HU)
    texture = 5.0 * smooth_field(anatomy_rng, shape, zooms, correlation_mm=2.5)
    hu[pancreas.mask] = UNENHANCED_HU + enhancement_hu + texture[pancreas.mask]
    duct = draw_duct(anatomy_rng, pancreas, upstream, appearance.duct_radius_mm)
    hu[duct] = anatomy_rng.uniform(5.0, 20.0)

    lesion = draw_hard_lesion(
        lesion_geometry_rng,
        appearance_rng,
        appearance,
        pancreas,
        along_fraction,
        is_small_lesion(seed, index),
        enhancement_hu,
        shape,
        zooms,
    )
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


def write_case(out_dir, seed, spec, difficulty="quick", test_labels_dir=None, size="quick") -> dict:
    """Draw and write one case (image, and mask outside test) with its per-case dtype quirks.

    A test case's mask goes to test_labels_dir when given, never into out_dir.
    """
    case = draw_case(seed, spec.index, spec.subtype, difficulty, size)
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
    if spec.split != "test" or test_labels_dir is not None:
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
        mask_bytes = nifti_gz_bytes(mask, case.affine)
        if spec.split == "test":
            (Path(test_labels_dir) / f"{spec.case_id}.nii.gz").write_bytes(mask_bytes)
        else:
            mask_path = folder / f"{spec.case_id}.nii.gz"
            (out_dir / mask_path).write_bytes(mask_bytes)
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


def write_test_subtypes(test_labels_dir, specs) -> None:
    """The test split's subtypes as `Names,Subtype` rows (Names = `<case>.nii.gz`), sorted by case."""
    rows = sorted(
        (f"{spec.case_id}.nii.gz", spec.subtype) for spec in specs if spec.split == "test"
    )
    lines = ["Names,Subtype", *(f"{name},{subtype}" for name, subtype in rows)]
    (Path(test_labels_dir) / TEST_SUBTYPE_TABLE).write_text("\n".join(lines) + "\n")


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
