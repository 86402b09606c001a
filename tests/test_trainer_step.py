"""The multi-task train step, torch.compile, multi-GPU refusal and cuDNN set-up, on CPU with a
tiny real nnU-Net network (no dataset, no GPU)."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from pancreas_mtl.training import run
from pancreas_mtl.training.heads import LesionPoolingHead, MultiTaskUNet, stage_channels
from pancreas_mtl.training.settings import TrainerSettings
from pancreas_mtl.training.trainer import nnUNetTrainerMultiTask
from test_heads import image, make_unet, masks


def multitask_net() -> MultiTaskUNet:
    unet = make_unet(num_classes=2)  # two sigmoid regions: whole pancreas, lesion
    return MultiTaskUNet(unet, LesionPoolingHead(stage_channels(unet, 1)), 2).train()


def region_loss(seg, target):
    return nn.functional.binary_cross_entropy_with_logits(seg, target)


def make_trainer(network: nn.Module, epoch: int) -> nnUNetTrainerMultiTask:
    """The trainer's step state without nnU-Net's dataset, plans or logger."""
    trainer = nnUNetTrainerMultiTask.__new__(nnUNetTrainerMultiTask)
    trainer.settings = TrainerSettings.from_dict({"cls_warmup_epochs": 2, "cls_ramp_epochs": 3})
    trainer.network = network
    trainer.is_ddp = False
    trainer.device = torch.device("cpu")
    trainer.current_epoch = epoch
    trainer.initial_lr = 0.01
    trainer.weight_decay = 3e-5
    trainer.num_epochs = 10
    trainer.subtype_of = {"a": 0, "b": 2}
    trainer.cls_loss = nn.CrossEntropyLoss()
    trainer.loss = region_loss
    trainer.grad_scaler = None
    trainer.optimizer, _ = trainer.configure_optimizers()
    return trainer


def batch() -> dict:
    whole, lesion = masks()
    return {"data": image(), "target": torch.cat([whole, lesion], 1), "keys": ["a", "b"]}


def backbone(net: MultiTaskUNet) -> dict:
    return {k: v for k, v in net.state_dict().items() if not k.startswith("head.")}


def poison_head(net: MultiTaskUNet, value: float) -> None:
    """Make the head's pooling return a non-finite second moment, as an fp16 overflow did."""
    pool = net.head.pool

    def bad_pool(*args, **kwargs):
        evidence = pool(*args, **kwargs)
        evidence["sum_sq"] = evidence["sum_sq"] + value
        return evidence

    net.head.pool = bad_pool


@pytest.mark.parametrize("epoch", [0, 9])  # warm-up (weight 0) and full classification weight
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_head_never_reaches_segmentation_standardiser_or_optimiser(epoch, value):
    net = multitask_net()
    reference_net = copy.deepcopy(net)
    head_before = copy.deepcopy(net.head.state_dict())
    poison_head(net, value)
    trainer = make_trainer(net, epoch)
    out = trainer.train_step(batch())
    assert torch.isfinite(torch.as_tensor(out["loss"]))

    # segmentation takes exactly the step it takes with a working head (whose gradient stops at
    # the encoder), i.e. stock nnU-Net's step
    reference = make_trainer(reference_net, epoch)
    reference.train_step(batch())
    got, want = backbone(net), backbone(reference_net)
    for key in want:
        assert torch.isfinite(got[key].float()).all(), key
        torch.testing.assert_close(got[key], want[key], msg=key)
    # the head and its running standardiser are left as they were
    for key, value_before in head_before.items():
        torch.testing.assert_close(net.head.state_dict()[key], value_before, msg=key)
    assert int(net.head.standardize.num_updates) == 0
    assert out["head_finite"] is False and (out["pred"] == -1).all()


def test_epoch_end_logs_and_records_non_finite_head_steps(monkeypatch):
    trainer = make_trainer(multitask_net(), 0)
    trainer.num_subtypes = 3
    logged = []
    trainer.print_to_log_file = lambda *args, **kwargs: logged.append(" ".join(map(str, args)))
    monkeypatch.setattr(
        "nnunetv2.training.nnUNetTrainer.nnUNetTrainer.nnUNetTrainer.on_train_epoch_end",
        lambda self, outputs: None,
    )
    outputs = [
        {"loss": 1.0, "cls_loss": 0.5, "pred": torch.tensor([0, 2]).numpy(), "head_finite": True},
        {"loss": 1.0, "cls_loss": float("nan"), "pred": torch.tensor([-1, -1]).numpy(), "head_finite": False},
    ]
    trainer.on_train_epoch_end(outputs)
    assert trainer._epoch_cls["head_nonfinite_steps"] == 1
    assert trainer._epoch_cls["cls_loss"] == 0.5
    assert any("non-finite" in line and "1 of 2" in line for line in logged)


def test_training_goes_through_the_compiled_module():
    traced = []

    def counting_backend(graph_module, example_inputs):
        traced.append(graph_module)
        return graph_module.forward

    net = multitask_net()
    eager_net = copy.deepcopy(net)
    # what nnU-Net's initialize does when _do_i_compile() is true (CUDA, nnUNet_compile unset)
    compiled = torch.compile(net, backend=counting_backend)
    trainer = make_trainer(compiled, 9)
    torch.manual_seed(0)  # the same dropout mask in both steps
    out = trainer.train_step(batch())
    assert traced, "the train step bypassed the compiled module"
    assert trainer._model is net
    eager = make_trainer(eager_net, 9)
    torch.manual_seed(0)
    eager.train_step(batch())
    for key, value in eager_net.state_dict().items():
        torch.testing.assert_close(net.state_dict()[key], value, msg=key)


def test_distributed_training_is_refused_at_start(monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    with pytest.raises(RuntimeError, match="one GPU only.*-num_gpus 1"):
        nnUNetTrainerMultiTask({}, "3d_fullres", 0, {}, torch.device("cpu"))


def train_fold_with(monkeypatch, trainer, **kwargs) -> Path:
    """`run.train_fold` on CPU with `trainer` in place of the one nnU-Net would build and load."""
    import nnunetv2.run.run_training as run_training

    monkeypatch.setattr(run_training, "get_trainer_from_args", lambda *a, **k: trainer)
    monkeypatch.setattr(run_training, "maybe_load_checkpoint", lambda *a, **k: None)
    monkeypatch.setenv("nnUNet_extTrainer", "")
    monkeypatch.setenv("nnUNet_n_proc_DA", "1")
    threads = torch.get_num_threads()
    try:
        return run.train_fold(501, "3d_fullres", 0, "nnUNetPlans", {"device": "cpu"}, **kwargs)
    finally:
        torch.set_num_threads(threads)


def test_train_fold_turns_on_cudnn_benchmark_like_stock_run_training(monkeypatch, tmp_path):
    seen = {}
    trainer = SimpleNamespace(output_folder=str(tmp_path))
    trainer.run_training = lambda: seen.update(benchmark=torch.backends.cudnn.benchmark)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    final = train_fold_with(monkeypatch, trainer)
    assert seen == {"benchmark": True}
    assert final == Path(tmp_path) / "checkpoint_final.pth"


class OneCase:
    """A preprocessed dataset of one case, as nnU-Net's dataset classes load it."""

    data = np.random.default_rng(3).normal(size=(1, 12, 24, 24)).astype(np.float32)

    def __init__(self, folder, keys):
        pass

    def load_case(self, key):
        return self.data, np.zeros_like(self.data), None, None


def test_refit_pools_each_case_as_deployment_does(monkeypatch):
    """Issue 9, defect 7: the refit's features come from the deployment computation (Gaussian tile
    weights, mirroring as predict.tta), not from a uniform, unmirrored tiling of its own."""
    from pancreas_mtl.inference.predictor import MultiTaskPredictor
    from test_inference import tiny_predictor

    deployed = tiny_predictor(mirror_batch=8)
    deployed.predict_logits_from_preprocessed_data(torch.from_numpy(OneCase.data))
    with torch.no_grad():
        want = deployed.network.hidden_features(deployed._evidence)[0].numpy()
        logits = deployed.predict_sliding_window_return_logits(torch.from_numpy(OneCase.data))
        want_descriptor = deployed.case_descriptor(OneCase.data, logits)[0].numpy()

    trainer = make_trainer(deployed.network, epoch=5)
    trainer.settings = TrainerSettings.from_dict({"refit_tta": True})
    trainer.enable_deep_supervision = False
    trainer.dataset_class, trainer.preprocessed_dataset_folder = OneCase, None
    trainer.plans_manager = SimpleNamespace(
        get_label_manager=lambda dataset_json: SimpleNamespace(num_segmentation_heads=3),
        foreground_intensity_properties_per_channel=deployed.plans_manager.foreground_intensity_properties_per_channel,
    )
    trainer.configuration_manager = deployed.configuration_manager
    trainer.dataset_json = {}
    trainer.inference_allowed_mirroring_axes = deployed.allowed_mirroring_axes
    monkeypatch.setattr(nnUNetTrainerMultiTask, "set_deep_supervision_enabled", lambda self, enabled: None)
    got, descriptor = trainer.case_features(["a"])
    got = got[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # the case stage is fitted on the descriptor prediction computes
    np.testing.assert_allclose(descriptor[0], want_descriptor, rtol=1e-4, atol=1e-4)

    # without mirroring the features differ: the refit would fit what prediction never sees
    trainer.settings = TrainerSettings.from_dict({"refit_tta": False})
    assert not np.allclose(trainer.case_features(["a"])[0][0], want, rtol=1e-4, atol=1e-5)
    assert MultiTaskPredictor.around_network  # the one computation both use


def test_refit_and_case_validation_slide_and_mirror_as_prediction_is_configured(monkeypatch, tmp_path):
    """The trainer's whole-case passes use predict.step_size and predict.mirror_batch: a refit that
    ignored them fitted on other tiles than prediction's, and with 8 mirrored copies of a real-size
    tile took 15 GB where prediction, told 2, took 4 (docs/performance.md)."""
    from test_inference import tiny_predictor

    deployed = tiny_predictor(mirror_batch=8)
    trainer = make_trainer(deployed.network, epoch=5)
    trainer.output_folder = str(tmp_path)
    trainer.run_training = lambda: None
    trainer.plans_manager = SimpleNamespace(
        get_label_manager=lambda dataset_json: SimpleNamespace(num_segmentation_heads=3)
    )
    trainer.configuration_manager = deployed.configuration_manager
    trainer.dataset_json = {}
    trainer.inference_allowed_mirroring_axes = deployed.allowed_mirroring_axes
    # the values a trainer that nnUNetv2_train starts uses: the schema's and config/gpu.yaml's
    gpu = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "gpu.yaml").read_text())["predict"]
    unset = trainer.case_predictor(mirroring=True)
    assert (unset.tile_step_size, unset.mirror_batch) == (gpu["step_size"], gpu["mirror_batch"])

    train_fold_with(monkeypatch, trainer, predict={"step_size": 0.75, "mirror_batch": 2})
    for mirroring in (True, False):
        predictor = trainer.case_predictor(mirroring=mirroring)
        assert (predictor.tile_step_size, predictor.mirror_batch) == (0.75, 2)


@pytest.mark.parametrize("case_stage", ["auto", "off"])
def test_refit_fits_the_case_stage_on_training_cases_only(monkeypatch, tmp_path, case_stage):
    """Issue 11: the refit fits the case stage on the training split alone (its inputs chosen by
    cross-validation there), records the choice, and leaves it unfitted when switched off."""
    import json

    from pancreas_mtl.training.descriptors import NAMES

    net = multitask_net().eval()
    trainer = make_trainer(net, epoch=9)
    trainer.settings = TrainerSettings.from_dict({"case_stage": case_stage})
    train_keys = [f"t{i}" for i in range(30)]
    trainer.subtype_of = {k: i % 3 for i, k in enumerate(train_keys)} | {"v0": 0, "v1": 1}
    trainer.num_subtypes = 3
    trainer.output_folder = str(tmp_path)
    trainer.print_to_log_file = lambda *args: None
    monkeypatch.setattr(nnUNetTrainerMultiTask, "do_split", lambda self: (train_keys, ["v0", "v1"]))
    monkeypatch.setattr(nnUNetTrainerMultiTask, "evaluate_validation_cases",
                        lambda self: {"macro_f1": 0.5, "pred_counts": [1, 1, 0]})  # fmt: skip
    seen = []

    def case_features(self, keys):
        seen.append(list(keys))
        rng = np.random.default_rng(0)
        y = np.array([self.subtype_of[k] for k in keys])
        n_head = self._model.case_stage.n_head
        descriptor = rng.normal(size=(len(keys), len(NAMES)))
        descriptor[:, NAMES.index("duct_to_gland")] += 6.0 * y
        return rng.normal(size=(len(keys), n_head)), descriptor

    monkeypatch.setattr(nnUNetTrainerMultiTask, "case_features", case_features)
    trainer.refit_output_layer()
    assert seen == [train_keys]  # no validation case is pooled for the fit
    report = json.loads((tmp_path / "case_level_refit.json").read_text())
    if case_stage == "off":
        assert not net.case_stage.is_fitted and "case_stage" not in report
        return
    assert net.case_stage.is_fitted
    assert report["case_stage"]["feature_set"] in ("descriptor", "descriptor_and_image_statistics")
    assert len(report["case_stage"]["cv_macro_f1"]) == 6
