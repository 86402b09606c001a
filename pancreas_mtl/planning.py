"""Experiment planning and preprocessing through nnU-Net's own API.

The GPU setting uses a stock planner and configuration unchanged. The CPU-scale default adds one
derived configuration to the plans (coarser spacing, small patch, few features) so that the demo
trains in minutes on two cores; its topology still comes from nnU-Net's planner rules.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

STOCK_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres")


def derive_configuration(
    plans: dict,
    name: str,
    base: str,
    spacing: list[float],
    patch_size: list[int],
    features_per_stage: list[int],
    batch_size: int,
) -> dict:
    """Return plans with configuration `name` added, derived from `base`.

    As nnU-Net's own planner does, the patch is first clipped to the median image size at the new
    spacing (a larger patch only adds padding to every sample), then pooling and kernel sizes follow
    nnU-Net's topology rules (at most len(features_per_stage) stages) and the patch may grow again
    to stay divisible.
    """
    from nnunetv2.experiment_planning.experiment_planners.network_topology import (
        get_pool_and_conv_props,
    )

    if base not in plans["configurations"]:
        raise ValueError(
            f"custom configuration {name!r}: base {base!r} is not in the plans "
            f"(available: {sorted(plans['configurations'])})"
        )
    if len(spacing) != 3 or len(patch_size) != 3:
        raise ValueError(
            f"custom configuration {name!r}: spacing and patch_size need 3 values"
        )
    base_conf = plans["configurations"][base]
    median_shape = _resampled_median_shape(plans, base_conf, spacing)
    clipped = [max(1, min(int(p), round(m))) for p, m in zip(patch_size, median_shape)]
    if clipped != [int(p) for p in patch_size]:
        logger.info(
            "configuration %s: patch %s clipped to the median image size %s at %s mm",
            name,
            [int(p) for p in patch_size],
            median_shape,
            [float(s) for s in spacing],
        )
    _, strides, kernels, patch, _ = get_pool_and_conv_props(
        [float(s) for s in spacing],
        clipped,
        4,
        len(features_per_stage) - 1,
    )
    n_stages = len(strides)
    arch = copy.deepcopy(base_conf["architecture"])
    kwargs = arch["arch_kwargs"]
    kwargs["n_stages"] = n_stages
    kwargs["features_per_stage"] = [int(f) for f in features_per_stage[:n_stages]]
    kwargs["kernel_sizes"] = [list(map(int, k)) for k in kernels]
    kwargs["strides"] = [list(map(int, s)) for s in strides]
    for key in ("n_conv_per_stage", "n_blocks_per_stage"):
        if key in kwargs:
            kwargs[key] = _resize(kwargs[key], n_stages)
    kwargs["n_conv_per_stage_decoder"] = _resize(
        kwargs["n_conv_per_stage_decoder"], n_stages - 1
    )

    conf = copy.deepcopy(base_conf)
    conf.update(
        {
            "data_identifier": f"{plans['plans_name']}_{name}",
            "spacing": [float(s) for s in spacing],
            "patch_size": [int(p) for p in patch],
            "batch_size": int(batch_size),
            "architecture": arch,
        }
    )
    conf["median_image_size_in_voxels"] = median_shape
    out = copy.deepcopy(plans)
    out["configurations"][name] = conf
    return out


def _resize(values: list[int], n: int) -> list[int]:
    """Truncate or extend (repeating the last entry) a per-stage list to n entries."""
    values = list(values)
    return (values + [values[-1]] * n)[:n]


def _resampled_median_shape(plans: dict, base_conf: dict, spacing) -> list[float]:
    shape = np.array(base_conf["median_image_size_in_voxels"], dtype=float)
    factor = np.array(base_conf["spacing"], dtype=float) / np.array(spacing, dtype=float)
    return [float(round(v, 1)) for v in shape * factor]


def plan_and_preprocess(
    dataset_id: int,
    planner: str,
    configuration: str,
    custom_configuration: dict | None,
    num_processes: int,
    splits_file: str | os.PathLike | None = None,
    subtype_table: str | os.PathLike | None = None,
) -> Path:
    """Fingerprint, plan and preprocess one configuration; return the plans file.

    nnUNet_raw and nnUNet_preprocessed must be set in the environment. A splits file, when
    given, becomes splits_final.json so that nnU-Net trains on our folds; the subtype table is
    copied beside it, where the multi-task trainer looks for labels.
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
        preprocess_dataset,
    )
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    import nnunetv2

    dataset_name = convert_id_to_dataset_name(dataset_id)
    extract_fingerprint_dataset(
        dataset_id,
        num_processes=num_processes,
        check_dataset_integrity=True,
        clean=True,
        show_progress_bar=False,
    )
    planner_class = recursive_find_python_class(
        os.path.join(nnunetv2.__path__[0], "experiment_planning"),
        planner,
        current_module="nnunetv2.experiment_planning",
    )
    if planner_class is None:
        raise ValueError(f"nnU-Net has no experiment planner called {planner!r}")
    _, plans_identifier = plan_experiment_dataset(dataset_id, planner_class)
    plans_file = Path(nnUNet_preprocessed.require()) / dataset_name / f"{plans_identifier}.json"

    if configuration not in STOCK_CONFIGURATIONS:
        if not custom_configuration:
            raise ValueError(
                f"configuration {configuration!r} is not a stock nnU-Net configuration and "
                "plan.custom_configuration is empty"
            )
        plans = json.loads(plans_file.read_text())
        plans = derive_configuration(plans, configuration, **custom_configuration)
        tmp = plans_file.with_name(plans_file.name + ".tmp")
        tmp.write_text(json.dumps(plans, indent=2))
        os.replace(tmp, plans_file)
        logger.info(
            "added configuration %s: %s",
            configuration,
            json.dumps(
                {
                    k: plans["configurations"][configuration][k]
                    for k in ("spacing", "patch_size", "batch_size")
                }
            ),
        )

    preprocess_dataset(
        dataset_id,
        plans_identifier,
        [configuration],
        [num_processes],
        show_progress_bar=False,
    )
    for source, name in ((splits_file, "splits_final.json"), (subtype_table, "subtypes.csv")):
        if source is not None:
            _copy_atomic(Path(source), plans_file.parent / name)
    return plans_file


def _copy_atomic(source: Path, target: Path) -> None:
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(source.read_bytes())
    os.replace(tmp, target)
