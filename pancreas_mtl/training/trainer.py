"""nnU-Net trainer with a lesion subtype head on the shared encoder.

Only nnU-Net's hooks are overridden: the network builder (adds the head), the optimizer (a
separate learning rate for the head), the train step (segmentation loss plus a weighted,
delayed cross-entropy), validation (whole-case segmentation and subtype metrics each epoch),
epoch end (monitor, early stopping) and train end (restore the best weights).
"""

from __future__ import annotations

import json
import os
from os.path import join
from time import time

import numpy as np
import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from sklearn.utils.class_weight import compute_class_weight
from torch import autocast, nn

from ..evaluation.metrics import dice
from ..layout import DEFAULT_NUM_SUBTYPES, NUM_SUBTYPES_KEY, read_num_subtypes, read_subtypes
from ..nnunet_env import HEAD_TRAINERS
from ..progress import epoch_line, eta_seconds
from .case_stage import fit_case_stage
from .early_stopping import stopping_state
from .heads import HEADS, MultiTaskUNet, finite_cases, stage_channels
from .monitor import (
    MONITOR_PNG,
    classification_summary,
    plot_monitor,
    unpredicted_streaks,
    write_monitor,
)
from .settings import TrainerSettings, load_settings

SUBTYPE_TABLE = "subtypes.csv"
MONITOR_KEY = "classification_monitor"
# whole-case validations in a row without a prediction of some class before the log warns
UNPREDICTED_WARNING_PASSES = 5


class GroupPolyLRScheduler(PolyLRScheduler):
    """nnU-Net's poly schedule, applied to each parameter group's own initial learning rate."""

    def __init__(self, optimizer, max_steps: int, exponent: float = 0.9):
        self.group_initial_lrs = [g["lr"] for g in optimizer.param_groups]
        super().__init__(optimizer, self.group_initial_lrs[0], max_steps, exponent)

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        factor = (1 - current_step / self.max_steps) ** self.exponent
        for group, lr in zip(self.optimizer.param_groups, self.group_initial_lrs):
            group["lr"] = lr * factor
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]


def class_weights(labels: list[int], scheme: str, num_classes: int) -> np.ndarray:
    """Cross-entropy class weights from the training split's labels only."""
    if scheme == "none":
        return np.ones(num_classes)
    if scheme != "balanced":
        raise ValueError(f"unknown class weighting {scheme!r} (balanced, none)")
    present = np.unique(labels)
    weights = np.ones(num_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=np.asarray(labels))
    return weights


def standardized_logistic_regression(
    features: np.ndarray, labels: np.ndarray, weights: np.ndarray, c: float
) -> tuple[np.ndarray, np.ndarray]:
    """Class-weighted logistic regression on standardised features, folded back into one linear
    layer on the raw features: (coef (K, F), intercept (K,)).

    Standardising puts the hidden activations and the image statistics on one scale, so the L2
    penalty treats them alike; constant features get unit scale.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(features)
    model = LogisticRegression(C=c, class_weight=dict(enumerate(weights)), max_iter=5000)
    model.fit(scaler.transform(features), labels)
    coef = model.coef_ / scaler.scale_
    intercept = model.intercept_ - coef @ scaler.mean_
    return coef, intercept


def reference_regions(target: torch.Tensor, regions: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(whole pancreas, lesion) masks (B, 1, *s) from nnU-Net's full-resolution target."""
    if regions:
        return target[:, 0:1].float(), target[:, 1:2].float()
    return (target > 0).float(), (target == 2).float()


def refuse_distributed_training() -> None:
    """Stop at once under nnU-Net's multi-GPU (DDP) training, which this trainer does not support.

    The head's optimiser group, its running standardiser and the whole-case validation assume one
    process; the workflow trains one fold per GPU instead.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        raise RuntimeError(
            "nnUNetTrainerMultiTask trains on one GPU only: multi-GPU (DDP) training, "
            "nnUNetv2_train -num_gpus > 1, is not supported. Train with -num_gpus 1; to use "
            "several GPUs, train several folds at once (the workflow runs one fold per GPU)."
        )


class nnUNetTrainerMultiTask(nnUNetTrainer):
    """Segmentation plus lesion subtype, with the lesion-pooling head (the default)."""

    head_name = "lesion_pooling"
    # the sliding window of the refit and the case validation, as prediction's predict.step_size and
    # predict.mirror_batch (run.train_fold sets them from the workflow's config; these are the
    # schema's and config/gpu.yaml's values, for a trainer nnUNetv2_train starts)
    case_step_size = 0.5
    case_mirror_batch = 8

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        refuse_distributed_training()
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.settings: TrainerSettings = load_settings()
        s = self.settings
        # the classes come from the cohort; the network builder only sees the plans, which the
        # trainer also saves beside the model, so stock nnU-Net builds the same head from them
        self.num_subtypes = read_num_subtypes(dataset_json)
        self.plans_manager.plans[NUM_SUBTYPES_KEY] = self.num_subtypes
        self.num_epochs = s.epochs
        self.num_iterations_per_epoch = s.iterations_per_epoch
        self.num_val_iterations_per_epoch = s.val_iterations_per_epoch
        self.initial_lr = s.initial_lr
        self.save_every = max(1, s.checkpoint_every)
        self.subtype_of: dict[str, int] = {}
        self.val_keys: list[str] = []
        self.cls_loss = None
        # nnU-Net's logger is checkpointed, so the monitor history survives a resume with it
        self.logger.local_logger.my_fantastic_logging[MONITOR_KEY] = []
        self._stop = False
        self._epoch_cls = {}

    @classmethod
    def build_network_architecture(
        cls,
        plans_manager,
        configuration_manager,
        num_input_channels,
        num_output_channels,
        enable_deep_supervision: bool = True,
    ) -> nn.Module:
        unet = nnUNetTrainer.build_network_architecture(
            plans_manager,
            configuration_manager,
            num_input_channels,
            num_output_channels,
            enable_deep_supervision,
        )
        num_subtypes = plans_manager.plans.get(NUM_SUBTYPES_KEY, DEFAULT_NUM_SUBTYPES)
        head = HEADS[cls.head_name](stage_channels(unet, num_input_channels), num_classes=num_subtypes)
        return MultiTaskUNet(unet, head, num_output_channels)

    def get_training_transforms(self, *args, **kwargs):
        """nnU-Net's augmentation, with intensity transforms applied less often.

        Brightness, contrast, gamma, noise, blur and low-resolution simulation alter exactly what
        tells subtypes apart (lesion density, texture, margin sharpness); their probabilities are
        scaled by `intensity_augmentation` (1 keeps nnU-Net's, 0 drops them).
        """
        from batchgeneratorsv2.transforms.intensity.brightness import (
            MultiplicativeBrightnessTransform,
        )
        from batchgeneratorsv2.transforms.intensity.contrast import ContrastTransform
        from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
        from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
        from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
        from batchgeneratorsv2.transforms.spatial.low_resolution import (
            SimulateLowResolutionTransform,
        )
        from batchgeneratorsv2.transforms.utils.random import RandomTransform

        intensity = (
            MultiplicativeBrightnessTransform,
            ContrastTransform,
            GammaTransform,
            GaussianNoiseTransform,
            GaussianBlurTransform,
            SimulateLowResolutionTransform,
        )
        transforms = nnUNetTrainer.get_training_transforms(*args, **kwargs)
        for t in transforms.transforms:
            if isinstance(t, RandomTransform) and isinstance(t.transform, intensity):
                t.apply_probability *= self.settings.intensity_augmentation
        return transforms

    @property
    def _model(self) -> MultiTaskUNet:
        mod = self.network.module if self.is_ddp else self.network
        return getattr(mod, "_orig_mod", mod)

    def configure_optimizers(self):
        head = list(self._model.head.parameters())
        head_ids = {id(p) for p in head}
        backbone = [p for p in self.network.parameters() if id(p) not in head_ids]
        optimizer = torch.optim.SGD(
            [
                {"params": backbone, "lr": self.initial_lr},
                # plain momentum for the small head: nnU-Net's 0.99 makes its decision boundary swing
                {
                    "params": head,
                    "lr": self.initial_lr * self.settings.head_lr_multiplier,
                    "momentum": self.settings.head_momentum,
                },
            ],
            self.initial_lr,
            weight_decay=self.weight_decay,
            momentum=0.99,
            nesterov=True,
        )
        return optimizer, GroupPolyLRScheduler(optimizer, self.num_epochs)

    def on_train_start(self):
        super().on_train_start()
        table = join(self.preprocessed_dataset_folder_base, SUBTYPE_TABLE)
        self.subtype_of = read_subtypes(table)
        tr_keys, self.val_keys = self.do_split()
        missing = sorted(k for k in [*tr_keys, *self.val_keys] if k not in self.subtype_of)
        if missing:
            raise RuntimeError(
                f"{table} has no subtype for {len(missing)} case(s): {', '.join(missing[:10])}"
            )
        weights = class_weights(
            [self.subtype_of[k] for k in tr_keys], self.settings.class_weighting, self.num_subtypes
        )
        self.print_to_log_file(
            f"subtype class weights (training split, {len(tr_keys)} cases): {np.round(weights, 3).tolist()}"
        )
        self.cls_loss = nn.CrossEntropyLoss(
            weight=torch.tensor(weights, dtype=torch.float32, device=self.device)
        )
        with open(join(self.output_folder, "multitask_settings.json"), "w") as f:
            json.dump({"trainer": self.__class__.__name__, **self.settings.to_dict()}, f, indent=1)

    def _autocast(self):
        if self.device.type == "cuda":
            return autocast(self.device.type, enabled=True)
        return dummy_context()

    def train_step(self, batch: dict) -> dict:
        """nnU-Net's step plus the head's cross-entropy, through `self.network` (the compiled
        module where nnU-Net compiles, so segmentation costs what stock's does).

        A case whose head evidence or logits are not finite never reaches the standardiser, the
        loss or the optimiser: the step's classification term is skipped and counted, and
        segmentation trains exactly as it would without the head.
        """
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = (
            [t.to(self.device, non_blocking=True) for t in target]
            if isinstance(target, list)
            else target.to(self.device, non_blocking=True)
        )
        full_target = target[0] if isinstance(target, list) else target
        labels = torch.tensor(
            [self.subtype_of[k] for k in batch["keys"]], device=self.device
        )
        whole, lesion = reference_regions(full_target, self._model.regions)
        cls_weight = self.settings.cls_weight_at(self.current_epoch)
        head = self._model.head

        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            seg, evidence = self.network(
                data, whole, lesion, encoder_gradient=self.settings.head_encoder_gradient
            )
            seg_loss = self.loss(seg, target)
        head_finite = bool(finite_cases(evidence).all())
        if head_finite:
            logits = head.classify(evidence)
            head_finite = bool(logits.isfinite().all())
        if head_finite:
            has_lesion = head.lesion_voxels(evidence) >= 1
            if has_lesion.any():
                cls_loss = self.cls_loss(logits[has_lesion], labels[has_lesion])
            else:
                cls_loss = logits.sum() * 0.0
            loss = seg_loss + cls_weight * cls_loss
            pred = torch.where(has_lesion, logits.argmax(1), torch.full_like(labels, -1))
        else:
            # 0 * NaN is NaN: the term is left out, not weighted down
            cls_loss = torch.tensor(float("nan"))
            loss = seg_loss
            pred = torch.full_like(labels, -1)

        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            self.clip_gradients()
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            self.clip_gradients()
            self.optimizer.step()
        return {
            "loss": loss.detach().cpu().numpy(),
            "cls_loss": cls_loss.detach().cpu().numpy(),
            "pred": pred.cpu().numpy(),
            "head_finite": head_finite,
        }

    def clip_gradients(self) -> None:
        """Clip the backbone's and the head's gradient norms separately.

        One joint norm would let a large classification gradient shrink the segmentation update;
        apart, the backbone is clipped exactly as stock nnU-Net clips its network.
        """
        for group in self.optimizer.param_groups:
            torch.nn.utils.clip_grad_norm_(group["params"], self.settings.grad_clip)

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        preds = np.concatenate([o["pred"] for o in train_outputs])
        nonfinite = sum(not o.get("head_finite", True) for o in train_outputs)
        if nonfinite:
            self.print_to_log_file(
                f"WARNING: the subtype head gave non-finite values in {nonfinite} of "
                f"{len(train_outputs)} training steps; their classification term was skipped "
                "(segmentation trained as usual)"
            )
        cls_losses = [o["cls_loss"] for o in train_outputs if o.get("head_finite", True)]
        self._epoch_cls = {
            "cls_loss": float(np.mean(cls_losses)) if cls_losses else float("nan"),
            "head_nonfinite_steps": nonfinite,
            "cls_weight": self.settings.cls_weight_at(self.current_epoch),
            "train_pred_counts": np.bincount(preds[preds >= 0], minlength=self.num_subtypes).tolist(),
        }

    def on_validation_epoch_end(self, val_outputs: list[dict]):
        super().on_validation_epoch_end(val_outputs)
        every = max(1, self.settings.case_validation_every)
        if self.current_epoch % every == 0 or self.current_epoch == self.num_epochs - 1:
            self._epoch_cls.update(self.evaluate_validation_cases())

    def case_predictor(self, mirroring: bool):
        """Whole preprocessed cases through the deployment computation (`MultiTaskPredictor`:
        Gaussian tiles, autocast on CUDA), with the uncompiled network as it stands; mirrored over
        the trainer's inference axes if asked; prediction's sliding-window step and mirror batch."""
        from ..inference.predictor import MultiTaskPredictor

        return MultiTaskPredictor.around_network(
            self._model, self.plans_manager, self.configuration_manager, self.dataset_json, self.device,
            self.inference_allowed_mirroring_axes if mirroring else None,
            step_size=self.case_step_size, mirror_batch=self.case_mirror_batch,
        )  # fmt: skip

    def evaluate_validation_cases(self) -> dict:
        """Whole-case DSC and subtype metrics on the validation split, computed as at inference
        (without mirroring: this runs every `case_validation_every` epochs)."""
        dataset = self.dataset_class(self.preprocessed_dataset_folder, self.val_keys)
        self.set_deep_supervision_enabled(False)
        predictor = self.case_predictor(mirroring=False)
        whole_dsc, lesion_dsc, logits, labels = [], [], [], []
        try:
            for key in self.val_keys:
                data, seg, _, _ = dataset.load_case(key)
                seg_logits, evidence = predictor.case_logits_and_evidence(data)
                whole, lesion = self._model.region_probabilities(seg_logits[None])
                ref = np.asarray(seg)[0]
                whole_dsc.append(dice(whole[0, 0].numpy() > 0.5, ref > 0))
                lesion_dsc.append(dice(lesion[0, 0].numpy() > 0.5, ref == 2))
                descriptor = None
                if self._model.case_stage.is_fitted:
                    descriptor = predictor.case_descriptor(data, seg_logits)
                with torch.no_grad():
                    logits.append(self._model.classify(evidence, descriptor).cpu().numpy()[0])
                labels.append(self.subtype_of[key])
        finally:
            self.set_deep_supervision_enabled(self.enable_deep_supervision)
        summary = classification_summary(labels, np.array(logits), self.num_subtypes)
        summary["whole_dsc"] = float(np.mean(whole_dsc))
        summary["lesion_dsc"] = float(np.mean(lesion_dsc))
        w = self.settings.early_stopping.seg_weight
        summary["score"] = w * (summary["whole_dsc"] + summary["lesion_dsc"]) / 2 + (1 - w) * summary[
            "macro_f1"
        ]
        return summary

    def on_epoch_end(self):
        row = {"epoch": self.current_epoch, **self._epoch_cls}
        self.logger.log(MONITOR_KEY, row, self.current_epoch)
        s = self.settings
        state = stopping_state(
            [r.get("score") for r in self.monitor_history],
            s.early_stopping.patience,
            s.early_stopping.min_delta,
            min_epochs=s.cls_warmup_epochs + s.cls_ramp_epochs,
        )
        if "score" in row:
            self.print_to_log_file(
                f"case validation: whole DSC {row['whole_dsc']:.4f}, lesion DSC {row['lesion_dsc']:.4f}, "
                f"macro-F1 {row['macro_f1']:.4f}, predictions per subtype {row['pred_counts']}, "
                f"score {row['score']:.4f}"
            )
            for c, n in unpredicted_streaks(self.monitor_history, self.num_subtypes).items():
                if n >= UNPREDICTED_WARNING_PASSES and self.current_epoch >= s.cls_warmup_epochs:
                    self.print_to_log_file(
                        f"WARNING: subtype {c} has not been predicted on the validation cases in the "
                        f"last {n} whole-case validations (every {s.case_validation_every} epochs)"
                    )
        draw = self.progress_png_due() or state.should_stop
        if self.local_rank == 0:
            write_monitor(self.monitor_history, self.output_folder)
            if draw:
                plot_monitor(self.monitor_history, join(self.output_folder, MONITOR_PNG), self.num_subtypes)
        if state.is_best:
            self.print_to_log_file(f"New best early-stopping score: {state.best_score:.4f}")
            self.save_checkpoint(join(self.output_folder, "checkpoint_best_score.pth"))
        if state.should_stop:
            self.print_to_log_file(
                f"Early stopping: no improvement for {s.early_stopping.patience} epochs "
                f"(best epoch {state.best_epoch}, score {state.best_score:.4f})"
            )
            self._stop = True
        self.print_to_log_file(self.progress_line(row))
        self._epoch_cls = {}
        if draw:
            super().on_epoch_end()
        else:
            # nnU-Net redraws progress.png every epoch; the values are logged all the same
            self.logger.plot_progress_png = lambda output_folder: None
            try:
                super().on_epoch_end()
            finally:
                del self.logger.plot_progress_png

    def progress_png_due(self) -> bool:
        """Whether this epoch redraws the progress plots: every `progress_png_every` epochs and
        at the last epoch (early stopping included)."""
        epoch = self.current_epoch + 1
        return self._stop or epoch >= self.num_epochs or epoch % self.settings.progress_png_every == 0

    def progress_line(self, row: dict) -> str:
        """This epoch in one line: losses, pseudo Dice, case-level DSC and macro-F1, time, ETA.

        Reads nnU-Net's logger only; the ETA assumes every configured epoch runs (early stopping
        may end sooner).
        """
        logged = self.logger.local_logger.my_fantastic_logging

        def last(key):
            values = logged.get(key) or []
            return values[-1] if values else None

        starts, ends = logged.get("epoch_start_timestamps", []), logged.get("epoch_end_timestamps", [])
        durations = [end - start for start, end in zip(starts, ends)]
        if starts:
            durations = durations[: len(starts) - 1] + [time() - starts[-1]]
        dice = last("dice_per_class_or_region")
        return epoch_line(
            self.current_epoch,
            self.num_epochs,
            last("train_losses"),
            last("val_losses"),
            row.get("cls_loss") if row.get("cls_weight") else None,
            None if dice is None else [float(d) for d in dice],
            row.get("whole_dsc"),
            row.get("lesion_dsc"),
            row.get("macro_f1"),
            durations[-1] if durations else None,
            eta_seconds(durations, self.num_epochs - self.current_epoch - 1),
        )

    @property
    def monitor_history(self) -> list[dict]:
        return self.logger.get_value(MONITOR_KEY, step=None)

    def run_training(self):
        self.on_train_start()
        for _ in range(self.current_epoch, self.num_epochs):
            self.on_epoch_start()
            self.on_train_epoch_start()
            train_outputs = [
                self.train_step(next(self.dataloader_train))
                for _ in range(self.num_iterations_per_epoch)
            ]
            self.on_train_epoch_end(train_outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = [
                    self.validation_step(next(self.dataloader_val))
                    for _ in range(self.num_val_iterations_per_epoch)
                ]
                self.on_validation_epoch_end(val_outputs)
            self.on_epoch_end()
            if self._stop:
                break
        self.on_train_end()

    def on_train_end(self):
        best = join(self.output_folder, "checkpoint_best_score.pth")
        if self.settings.early_stopping.restore_best and os.path.isfile(best):
            weights = torch.load(best, map_location=self.device, weights_only=False)["network_weights"]
            self._model.load_state_dict(weights)
            self.print_to_log_file("Final checkpoint holds the weights of the best-scoring epoch")
        if self.settings.case_level_refit:
            self.refit_output_layer()
        super().on_train_end()

    def case_features(self, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per whole case, with the network's own predicted regions as at deployment (mirrored when
        `refit_tta`): the output layer's inputs (N, F) and the case descriptor (N, D)."""
        dataset = self.dataset_class(self.preprocessed_dataset_folder, keys)
        self.network.eval()
        self.set_deep_supervision_enabled(False)
        predictor = self.case_predictor(mirroring=self.settings.refit_tta)
        features, descriptors = [], []
        try:
            with torch.no_grad():
                for key in keys:
                    data = dataset.load_case(key)[0]
                    seg_logits, evidence = predictor.case_logits_and_evidence(data)
                    features.append(self._model.hidden_features(evidence)[0].float().cpu().numpy())
                    descriptors.append(predictor.case_descriptor(data, seg_logits)[0].numpy())
        finally:
            self.set_deep_supervision_enabled(self.enable_deep_supervision)
        return np.stack(features), np.stack(descriptors)

    def refit_output_layer(self) -> None:
        """Refit the head's output layer, and fit the case stage, on whole training cases as they
        are seen at inference.

        Patches are classified during training; inference pools whole volumes over predicted
        regions. A class-weighted logistic regression on the standardised case-level inputs of
        the output layer (training split only), folded back into its weights, aligns the two.
        The case stage (`train.case_stage`) then adds the case descriptor, with its inputs and
        penalty chosen by cross-validation on the same training cases (`case_stage.py`).
        """
        tr_keys = [k for k in self.do_split()[0] if k in self.subtype_of]
        labels = np.array([self.subtype_of[k] for k in tr_keys])
        if len(np.unique(labels)) < self.num_subtypes:
            self.print_to_log_file("case-level refit skipped: a subtype is missing from training")
            return
        before = self.evaluate_validation_cases()
        weights = class_weights(list(labels), self.settings.class_weighting, self.num_subtypes)
        features, descriptors = self.case_features(tr_keys)
        coef, intercept = standardized_logistic_regression(
            features, labels, weights, self.settings.refit_c
        )
        output = self._model.head.classifier[-1]
        with torch.no_grad():
            output.weight.copy_(torch.as_tensor(coef, dtype=output.weight.dtype))
            output.bias.copy_(torch.as_tensor(intercept, dtype=output.bias.dtype))
        report = {"n_train": len(tr_keys), "before": before}
        if self.settings.case_stage != "off":
            report["after_output_layer"] = self.evaluate_validation_cases()
            # the output layer's inputs: the hidden layer, then any image statistics
            n_hidden = self._model.head.classifier[0].out_features
            fit = fit_case_stage(
                features, descriptors, labels, weights, n_hidden,
                choice=self.settings.case_stage, c_grid=self.settings.case_stage_c,
            )  # fmt: skip
            self._model.case_stage.set(fit.mean, fit.scale, fit.weight, fit.bias)
            report["case_stage"] = fit.report()
            how = (
                f"chosen by cross-validation on {len(tr_keys)} training cases: {fit.cv}"
                if any(v is not None for v in fit.cv.values())
                else "the first candidate: too few training cases of some subtype to cross-validate"
            )
            self.print_to_log_file(f"case stage: {fit.feature_set}, C={fit.c:g}, {how}")
        after = self.evaluate_validation_cases()
        report["after"] = after
        self.print_to_log_file(
            f"case-level refit on {len(tr_keys)} training cases: "
            f"validation macro-F1 {before['macro_f1']:.4f} -> {after['macro_f1']:.4f}, "
            f"predictions per subtype {before['pred_counts']} -> {after['pred_counts']}"
        )
        with open(join(self.output_folder, "case_level_refit.json"), "w") as f:
            json.dump(report, f, indent=1)


def _trainer_for(head: str, name: str) -> type:
    """The trainer nnU-Net loads by `name` for a registered head."""
    if head == nnUNetTrainerMultiTask.head_name:
        return nnUNetTrainerMultiTask
    doc = f"The multi-task trainer with the {head} head."
    return type(name, (nnUNetTrainerMultiTask,), {"head_name": head, "__doc__": doc, "__module__": __name__})


# one trainer per registered head, named as nnunet_env.HEAD_TRAINERS says
TRAINERS = {name: _trainer_for(head, name) for head, name in HEAD_TRAINERS.items()}
globals().update(TRAINERS)
