"""Trainer settings and the pure helpers of the multi-task trainer."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from sklearn.utils.class_weight import compute_class_weight

from pancreas_mtl.layout import read_subtypes
from pancreas_mtl.nnunet_env import SETTINGS_VARIABLE, handed_settings, trainer_settings
from pancreas_mtl.training.settings import (
    SCHEMA,
    TrainerSettings,
    gpu_recipe,
    load_settings,
    schema_defaults,
    settings_from_config,
    train_section,
)
from pancreas_mtl.training.trainer import (
    GroupPolyLRScheduler,
    class_weights,
    nnUNetTrainerMultiTask,
    reference_regions,
    standardized_logistic_regression,
)

ROOT = Path(__file__).resolve().parents[1]


def config_train(name: str) -> dict:
    with open(ROOT / "config" / name) as f:
        return yaml.safe_load(f)["train"]


def settings(**values) -> TrainerSettings:
    return TrainerSettings.from_dict(values)


def test_cls_weight_at_warmup_ramp_then_constant():
    s = settings(cls_loss_weight=0.3, cls_warmup_epochs=15, cls_ramp_epochs=15)
    assert [s.cls_weight_at(e) for e in (0, 14)] == [0.0, 0.0]
    for k in range(15):
        assert s.cls_weight_at(15 + k) == pytest.approx(0.3 * (k + 1) / 15)
    assert s.cls_weight_at(29) == pytest.approx(0.3)
    assert s.cls_weight_at(30) == pytest.approx(0.3)
    assert s.cls_weight_at(499) == pytest.approx(0.3)


def test_cls_weight_at_without_ramp_jumps_after_warmup():
    s = settings(cls_loss_weight=0.5, cls_warmup_epochs=2, cls_ramp_epochs=0)
    assert [s.cls_weight_at(e) for e in range(4)] == [0.0, 0.0, 0.5, 0.5]


def test_cls_weight_at_without_warmup_ramps_from_the_first_epoch():
    s = settings(cls_loss_weight=0.3, cls_warmup_epochs=0, cls_ramp_epochs=3)
    assert [s.cls_weight_at(e) for e in range(4)] == pytest.approx([0.1, 0.2, 0.3, 0.3])


def test_defaults_are_the_schemas():
    schema = yaml.safe_load(SCHEMA.read_text())["properties"]["train"]["properties"]
    s = TrainerSettings.from_dict({})
    for key, value in s.to_dict().items():
        if key == "early_stopping":
            for sub, v in value.items():
                assert v == schema[key]["properties"][sub]["default"], sub
        else:
            assert value == schema[key]["default"], key
    assert schema_defaults() == settings_from_config(train_section({}))


def test_from_dict_sets_values_and_rejects_unknown_keys_by_name():
    s = TrainerSettings.from_dict({"epochs": 7, "head_lr_multiplier": 2.0, "early_stopping": {"patience": 3}})
    assert s.epochs == 7 and s.head_lr_multiplier == 2.0 and s.early_stopping.patience == 3
    assert s.grad_clip == TrainerSettings.from_dict({}).grad_clip
    assert s.early_stopping.seg_weight == schema_defaults()["early_stopping"]["seg_weight"]
    with pytest.raises(ValueError, match="epochz") as err:
        TrainerSettings.from_dict({"epochs": 7, "epochz": 3, "num_epochs": 1})
    assert "num_epochs" in str(err.value)
    with pytest.raises(ValueError, match="patienze"):
        TrainerSettings.from_dict({"early_stopping": {"patienze": 1}})


def test_to_dict_round_trip():
    s = settings(epochs=3, early_stopping={"restore_best": True})
    assert TrainerSettings.from_dict(s.to_dict()) == s


def test_load_settings_defaults_to_the_gpu_recipe(monkeypatch):
    monkeypatch.delenv(SETTINGS_VARIABLE, raising=False)
    s = load_settings()
    gpu = config_train("gpu.yaml")
    assert s.epochs == gpu["epochs"] == 500
    assert s.early_stopping.patience == gpu["early_stopping"]["patience"] == 100
    assert s.cls_warmup_epochs == 15
    assert s == TrainerSettings.from_dict(gpu_recipe())


def test_settings_handed_over_reach_the_trainer_and_are_withdrawn(monkeypatch):
    monkeypatch.delenv(SETTINGS_VARIABLE, raising=False)
    with trainer_settings({"epochs": 3, "early_stopping": {"patience": 2}}):
        s = load_settings()
        assert handed_settings() == {"epochs": 3, "early_stopping": {"patience": 2}}
    assert s.epochs == 3 and s.early_stopping.patience == 2
    assert s.grad_clip == schema_defaults()["grad_clip"]
    assert SETTINGS_VARIABLE not in __import__("os").environ
    with trainer_settings({"num_epoch": 3}):
        with pytest.raises(ValueError, match="num_epoch"):
            load_settings()


def test_settings_from_config_is_a_filter_of_the_train_section():
    train = config_train("config.yaml")
    values = settings_from_config(train)
    run_level = {"folds", "head", "device", "data_augmentation_workers", "torch_threads"}
    assert set(values) == set(train) - run_level
    assert all(values[k] == train[k] for k in values)
    s = TrainerSettings.from_dict(json.loads(json.dumps(values)))
    assert s.epochs == 30 and s.early_stopping.patience == 15
    assert s.cls_warmup_epochs == 2 and s.cls_ramp_epochs == 3


def test_train_section_fills_schema_defaults_under_partial_values():
    full = train_section({"epochs": 4, "early_stopping": {"patience": 0}})
    assert full["epochs"] == 4 and full["early_stopping"]["patience"] == 0
    assert full["early_stopping"]["seg_weight"] == schema_defaults()["early_stopping"]["seg_weight"]
    assert full["head"] == "lesion_pooling" and full["device"] == "auto"


def test_read_subtypes_keeps_string_ids_and_skips_unlabelled_rows(tmp_path):
    path = tmp_path / "subtypes.csv"
    path.write_text("case_id,split,subtype\n007,train,1\n010,validation,2\n011,train,0\n012,test,\n")
    subtypes = read_subtypes(str(path))
    assert subtypes == {"007": 1, "010": 2, "011": 0}
    assert all(isinstance(v, int) for v in subtypes.values())


def test_class_weights_balanced_equals_sklearn_on_the_training_labels():
    train = [0, 0, 1, 2, 2, 2]
    expected = compute_class_weight("balanced", classes=np.array([0, 1, 2]), y=np.array(train))
    np.testing.assert_allclose(class_weights(train, "balanced", 3), expected)
    np.testing.assert_allclose(class_weights(train, "balanced", 3), [1.0, 2.0, 2 / 3])


def test_class_weights_absent_class_gets_one():
    weights = class_weights([0, 0, 0, 2], "balanced", 3)
    np.testing.assert_allclose(weights, [4 / 6, 1.0, 2.0])


def test_class_weights_none_and_unknown_scheme():
    np.testing.assert_array_equal(class_weights([0, 0, 1], "none", 3), np.ones(3))
    with pytest.raises(ValueError, match="inverse"):
        class_weights([0, 1, 2], "inverse", 3)


def test_reference_regions_from_region_target():
    target = torch.zeros((2, 2, 2, 3, 3), dtype=torch.bool)
    target[:, 0, 0] = True
    target[:, 1, 0, 0] = True
    whole, lesion = reference_regions(target, regions=True)
    assert whole.shape == lesion.shape == (2, 1, 2, 3, 3)
    assert whole.dtype == torch.float32
    assert whole.sum().item() == 2 * 9 and lesion.sum().item() == 2 * 3
    torch.testing.assert_close(whole, target[:, 0:1].float())
    torch.testing.assert_close(lesion, target[:, 1:2].float())


def test_reference_regions_from_label_target():
    target = torch.tensor([0.0, 1.0, 2.0, 1.0, 0.0, 2.0]).reshape(1, 1, 1, 2, 3)
    whole, lesion = reference_regions(target, regions=False)
    assert whole.shape == lesion.shape == (1, 1, 1, 2, 3)
    assert whole.flatten().tolist() == [0, 1, 1, 1, 0, 1]
    assert lesion.flatten().tolist() == [0, 0, 1, 0, 0, 1]


def test_group_poly_lr_keeps_the_head_ratio_at_every_step():
    backbone, head = nn_param(), nn_param()
    optimizer = torch.optim.SGD([{"params": [backbone], "lr": 0.01}, {"params": [head], "lr": 0.04}], lr=0.01)
    scheduler = GroupPolyLRScheduler(optimizer, max_steps=10)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01, 0.04])
    for epoch in range(10):
        scheduler.step(epoch)  # nnU-Net passes the epoch
        factor = (1 - epoch / 10) ** 0.9
        lrs = [g["lr"] for g in optimizer.param_groups]
        assert lrs == pytest.approx([0.01 * factor, 0.04 * factor])
        assert lrs[1] / lrs[0] == pytest.approx(4.0)
        assert scheduler.get_last_lr() == lrs


def test_group_poly_lr_counts_steps_itself():
    optimizer = torch.optim.SGD([{"params": [nn_param()], "lr": 1.0}, {"params": [nn_param()], "lr": 3.0}], lr=1.0)
    scheduler = GroupPolyLRScheduler(optimizer, max_steps=4, exponent=1.0)
    seen = []
    for _ in range(3):
        optimizer.step()
        scheduler.step()
        seen.append([g["lr"] for g in optimizer.param_groups])
    np.testing.assert_allclose(seen, [[0.75, 2.25], [0.5, 1.5], [0.25, 0.75]])


def nn_param() -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.zeros(1))


def test_backbone_and_head_gradients_are_clipped_apart():
    backbone, head = torch.zeros(4, requires_grad=True), torch.zeros(2, requires_grad=True)
    trainer = nnUNetTrainerMultiTask.__new__(nnUNetTrainerMultiTask)
    trainer.settings = settings(grad_clip=1.0)
    trainer.optimizer = torch.optim.SGD([{"params": [backbone]}, {"params": [head]}], lr=0.1)
    backbone.grad = torch.full((4,), 0.3)  # norm 0.6: under the limit, untouched
    head.grad = torch.tensor([30.0, 40.0])  # norm 50: clipped to 1 without touching the backbone
    trainer.clip_gradients()
    torch.testing.assert_close(backbone.grad, torch.full((4,), 0.3))
    torch.testing.assert_close(head.grad, torch.tensor([0.6, 0.8]), rtol=1e-4, atol=1e-6)


def test_standardized_logistic_regression_folds_the_scaler_into_one_linear_layer():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 10)
    # features on very different scales, one of them constant
    features = np.column_stack(
        [labels * 100.0 + rng.normal(0, 30, 30), labels * 0.01 + rng.normal(0, 0.02, 30), np.full(30, 5.0)]
    )
    weights = np.array([1.0, 2.0, 0.5])
    coef, intercept = standardized_logistic_regression(features, labels, weights, 1.0)
    scaler = StandardScaler().fit(features)
    reference = LogisticRegression(C=1.0, class_weight={0: 1.0, 1: 2.0, 2: 0.5}, max_iter=5000)
    reference.fit(scaler.transform(features), labels)
    np.testing.assert_allclose(
        features @ coef.T + intercept, reference.decision_function(scaler.transform(features)), atol=1e-8
    )
    assert np.isfinite(coef).all()


@pytest.mark.parametrize(
    "epoch, stop, due",
    [(0, False, False), (8, False, False), (9, False, True), (19, False, True),
     (24, False, True), (12, True, True)],
)  # fmt: skip
def test_progress_plots_are_drawn_every_n_epochs_and_at_the_end(epoch, stop, due):
    trainer = SimpleNamespace(
        current_epoch=epoch, num_epochs=25, _stop=stop,
        settings=TrainerSettings.from_dict({"progress_png_every": 10}),
    )  # fmt: skip
    assert nnUNetTrainerMultiTask.progress_png_due(trainer) is due


def test_progress_line_reads_the_epoch_from_nnunets_logger(monkeypatch):
    import pancreas_mtl.training.trainer as trainer_module

    logged = {
        "train_losses": [-0.1, -0.25], "val_losses": [-0.2, -0.3],
        "dice_per_class_or_region": [[0.5, 0.1], [np.float32(0.75), np.float32(0.5)]],
        # epochs 0 and 1 started at 100 and 110; epoch 0 took 10 s, epoch 1 runs until now (124)
        "epoch_start_timestamps": [100.0, 110.0], "epoch_end_timestamps": [110.0],
    }
    monkeypatch.setattr(trainer_module, "time", lambda: 124.0)
    fake = SimpleNamespace(logger=SimpleNamespace(local_logger=SimpleNamespace(my_fantastic_logging=logged)),
                           current_epoch=1, num_epochs=4)
    row = {"epoch": 1, "cls_loss": 0.9, "cls_weight": 0.3, "whole_dsc": 0.8, "lesion_dsc": 0.4, "macro_f1": 0.5}
    line = nnUNetTrainerMultiTask.progress_line(fake, row)
    # two epochs left at the mean of 10 s and 14 s
    assert line == ("epoch 2/4 | loss train -0.2500 val -0.3000 cls 0.9000 | pseudo Dice 0.7500 0.5000 | "
                    "case DSC whole 0.8000 lesion 0.4000 | macro-F1 0.5000 | 14s/epoch | ETA 24s")
    # before the head's loss is switched on, and on epochs without case validation
    line = nnUNetTrainerMultiTask.progress_line(fake, {"epoch": 1, "cls_loss": 1.1, "cls_weight": 0.0})
    assert "cls n/a" in line and "whole n/a" in line and "macro-F1 n/a" in line
