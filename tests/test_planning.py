"""Derived nnU-Net configuration for CPU-scale runs."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from pancreas_mtl.planning import derive_configuration


def minimal_plans() -> dict:
    """The parts of an nnU-Net plans file (ExperimentPlanner, PlainConvUNet) that matter here."""
    return {
        "dataset_name": "Dataset999_Toy",
        "plans_name": "nnUNetPlans",
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": [40, 80, 96],
                "median_image_size_in_voxels": [38.0, 76.0, 96.0],
                "spacing": [2.0, 0.75, 0.75],
                "normalization_schemes": ["CTNormalization"],
                "architecture": {
                    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                    "arch_kwargs": {
                        "n_stages": 5,
                        "features_per_stage": [32, 64, 128, 256, 320],
                        "conv_op": "torch.nn.modules.conv.Conv3d",
                        "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                        "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
                        "n_conv_per_stage": [2, 2, 2, 2, 2],
                        "n_conv_per_stage_decoder": [2, 2, 2, 2],
                        "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                        "dropout_op": None,
                        "dropout_op_kwargs": None,
                        "nonlin": "torch.nn.LeakyReLU",
                        "nonlin_kwargs": {"inplace": True},
                    },
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
                "batch_dice": False,
            }
        },
    }


def derive(plans=None, **overrides) -> dict:
    args = dict(
        name="3d_cpu",
        base="3d_fullres",
        spacing=[2.5, 1.5, 1.5],
        patch_size=[32, 48, 64],
        features_per_stage=[16, 32, 64, 128],
        batch_size=3,
    )
    args.update(overrides)
    return derive_configuration(minimal_plans() if plans is None else plans, **args)


def test_new_configuration_has_the_given_spacing_batch_and_identifier():
    conf = derive()["configurations"]["3d_cpu"]
    assert conf["spacing"] == [2.5, 1.5, 1.5]
    assert conf["batch_size"] == 3
    assert conf["data_identifier"] == "nnUNetPlans_3d_cpu"
    # inherited settings stay, resampled median shape follows the new spacing
    assert conf["normalization_schemes"] == ["CTNormalization"]
    assert conf["median_image_size_in_voxels"] == [30.4, 38.0, 48.0]


def test_patch_is_clipped_to_the_median_image_as_nnunet_plans_it():
    # 32 x 48 x 64 against a median image of 30.4 x 38 x 48 voxels at 2.5 x 1.5 x 1.5 mm: clipped to
    # 30 x 38 x 48, then padded to what three poolings need, as nnU-Net's ExperimentPlanner does
    assert derive()["configurations"]["3d_cpu"]["patch_size"] == [32, 40, 48]
    # images larger than the patch keep it
    plans = minimal_plans()
    plans["configurations"]["3d_fullres"]["median_image_size_in_voxels"] = [60.0, 160.0, 200.0]
    assert derive(plans)["configurations"]["3d_cpu"]["patch_size"] == [32, 48, 64]


def test_topology_is_consistent():
    arch = derive()["configurations"]["3d_cpu"]["architecture"]
    kwargs = arch["arch_kwargs"]
    n = kwargs["n_stages"]
    assert n == 4
    assert kwargs["features_per_stage"] == [16, 32, 64, 128]
    assert len(kwargs["strides"]) == len(kwargs["kernel_sizes"]) == len(kwargs["n_conv_per_stage"]) == n
    assert len(kwargs["n_conv_per_stage_decoder"]) == n - 1
    assert kwargs["strides"][0] == [1, 1, 1]
    assert all(isinstance(v, int) for s in kwargs["strides"] for v in s)
    assert arch["network_class_name"].endswith("PlainConvUNet")


@pytest.mark.parametrize(
    "spacing,patch,features",
    [
        ([2.5, 1.5, 1.5], [32, 48, 64], [16, 32, 64, 128]),
        ([1.0, 1.0, 1.0], [20, 30, 30], [8, 16, 32, 64, 128]),
        ([3.0, 0.8, 0.8], [16, 40, 40], [8, 16, 32]),
        ([2.5, 1.5, 1.5], [20, 30, 30], [8, 16]),
    ],
)
def test_stages_are_capped_and_the_patch_is_divisible(spacing, patch, features):
    conf = derive(spacing=spacing, patch_size=patch, features_per_stage=features)["configurations"]["3d_cpu"]
    kwargs = conf["architecture"]["arch_kwargs"]
    n = kwargs["n_stages"]
    assert 1 <= n <= len(features)
    assert kwargs["features_per_stage"] == features[:n]
    assert len(kwargs["strides"]) == len(kwargs["kernel_sizes"]) == n
    assert len(kwargs["n_conv_per_stage"]) == n and len(kwargs["n_conv_per_stage_decoder"]) == n - 1
    total_stride = np.prod(np.array(kwargs["strides"]), axis=0)
    patch_out = np.array(conf["patch_size"])
    assert np.all(patch_out % total_stride == 0), (conf["patch_size"], total_stride.tolist())
    # at least the given patch, or the median image where that is smaller
    median = np.array(conf["median_image_size_in_voxels"])
    assert np.all(patch_out >= np.minimum(np.array(patch), np.round(median)))
    assert all(isinstance(p, int) for p in conf["patch_size"])


def test_base_configuration_and_input_plans_are_untouched():
    plans = minimal_plans()
    before = copy.deepcopy(plans)
    out = derive(plans)
    assert plans == before
    assert out["configurations"]["3d_fullres"] == before["configurations"]["3d_fullres"]
    assert set(out["configurations"]) == {"3d_fullres", "3d_cpu"}
    out["configurations"]["3d_cpu"]["architecture"]["arch_kwargs"]["strides"][0][0] = 99
    assert out["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["strides"][0][0] == 1


def test_resenc_blocks_per_stage_follow_the_stage_count():
    plans = minimal_plans()
    kwargs = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    del kwargs["n_conv_per_stage"]
    kwargs["n_blocks_per_stage"] = [1, 3, 4, 6, 6]
    out = derive(plans, features_per_stage=[16, 32, 64])["configurations"]["3d_cpu"]
    assert out["architecture"]["arch_kwargs"]["n_blocks_per_stage"] == [1, 3, 4]
    assert "n_conv_per_stage" not in out["architecture"]["arch_kwargs"]


def test_unknown_base_raises_naming_it():
    with pytest.raises(ValueError, match="3d_midres"):
        derive(base="3d_midres")


def test_spacing_and_patch_need_three_values():
    with pytest.raises(ValueError, match="3 values"):
        derive(spacing=[1.5, 1.5])
    with pytest.raises(ValueError, match="3 values"):
        derive(patch_size=[32, 32])
