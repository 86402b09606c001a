"""Segmentation and subtype from one sliding-window pass, on top of nnU-Net's predictor.

`MultiTaskPredictor` keeps nnU-Net's preprocessing, tiling, Gaussian weighting, mirroring and
export; it only replaces the per-tile forward so the same forward passes also yield the head's
evidence. Evidence is summed over tiles and mirrors (weighted like the logits, by the tile's
Gaussian) and turned into subtype probabilities per fold; folds are averaged. After a device
out-of-memory error the mirror batch is halved and the tile redone; nnU-Net's own fallback (the
whole window again, results on the CPU) starts from no evidence.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from nnunetv2.inference.export_prediction import export_prediction_from_logits
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.inference.sliding_window_prediction import compute_gaussian
from nnunetv2.utilities.helpers import empty_cache

from ..layout import (
    find_images,
    model_file_ending,
    prediction_row,
    raw_image,
    split_cases,
    write_prediction_table,
)
from ..nnunet_env import check_prediction_checkpoint, ensure_ext_trainer_path, resolve_device
from ..progress import case_line, eta_seconds
from ..training.descriptors import case_descriptor, ct_to_hu
from ..training.heads import add_evidence
from .model_package import installed_model, model_folds

logger = logging.getLogger(__name__)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is a device running out of memory (torch's own class, or its message)."""
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


class MultiTaskPredictor(nnUNetPredictor):
    """nnUNetPredictor whose forward passes also feed the subtype head."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._evidence = None
        self.classify = True
        self.mirror_batch = 8
        self.channels_last = False
        self.last_subtype_probabilities: np.ndarray | None = None

    @property
    def num_subtypes(self) -> int:
        return int(self.network.head.classifier[-1].out_features)

    def _gaussian(self, device) -> torch.Tensor:
        if not self.use_gaussian:
            return None
        return compute_gaussian(
            tuple(self.configuration_manager.patch_size),
            sigma_scale=1.0 / 8,
            value_scaling_factor=10,
            device=device,
        )

    def _internal_predict_sliding_window_return_logits(self, data, slicers, do_on_device: bool = True):
        # nnU-Net reruns the whole window after an out-of-memory error (results on the CPU):
        # every attempt starts from no evidence, so no tile is counted twice
        self._evidence = None
        return super()._internal_predict_sliding_window_return_logits(data, slicers, do_on_device)

    def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        if not self.classify:
            return super()._internal_maybe_mirror_and_predict(x)
        while True:
            try:
                prediction, evidence = self._mirror_and_predict(x)
            except RuntimeError as error:
                if not is_out_of_memory(error) or self.mirror_batch <= 1:
                    raise
                # fewer mirrored copies per forward pass: slower, same result
                self.mirror_batch = max(1, self.mirror_batch // 2)
                logger.warning("out of memory: mirror_batch lowered to %d", self.mirror_batch)
                empty_cache(x.device)
                continue
            self._evidence = add_evidence(self._evidence, evidence)
            return prediction

    def _mirror_and_predict(self, x: torch.Tensor):
        """One tile's mirror-averaged logits and its evidence, summed over the mirrored copies."""
        mirror_axes = self.allowed_mirroring_axes if self.use_mirroring else None
        gaussian = self._gaussian(x.device)
        weight = None if gaussian is None else gaussian[None, None].float()
        flips = [()]
        if mirror_axes is not None:
            axes = [m + 2 for m in mirror_axes]
            flips += [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
        prediction = evidence = None
        # mirrored copies go through the network as one batch: same result, far fewer calls
        for start in range(0, len(flips), self.mirror_batch):
            group = flips[start : start + self.mirror_batch]
            batch = torch.cat([torch.flip(x, f) if f else x for f in group])
            if self.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last_3d)
            seg, ev = self.network(batch, voxel_weight=weight, multitask=True)
            for i, f in enumerate(group):
                s = torch.flip(seg[i : i + 1], f) if f else seg[i : i + 1]
                prediction = s if prediction is None else prediction + s
            evidence = add_evidence(evidence, {k: v.float().sum(0, keepdim=True) for k, v in ev.items()})
        return prediction / len(flips), evidence

    @classmethod
    def around_network(
        cls, network, plans_manager, configuration_manager, dataset_json: dict, device: torch.device,
        mirror_axes: Sequence[int] | None, step_size: float = 0.5, mirror_batch: int = 8,
    ) -> "MultiTaskPredictor":
        """A predictor around a network in memory (a trainer's), computing as deployment does:
        nnU-Net's tiling and Gaussian tile weights, autocast on CUDA, mirroring over `mirror_axes`
        (None: none) with `mirror_batch` mirrored copies per forward pass."""
        predictor = cls(
            tile_step_size=step_size, use_gaussian=True, use_mirroring=mirror_axes is not None,
            perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
            verbose_preprocessing=False, allow_tqdm=False,
        )  # fmt: skip
        predictor.manual_initialization(
            network, plans_manager, configuration_manager, None, dataset_json, "", mirror_axes
        )
        # the network as given: nnU-Net would compile it here when nnUNet_compile is set
        predictor.network = network
        predictor.mirror_batch = max(1, mirror_batch)
        return predictor

    def case_descriptor(self, data, logits: torch.Tensor) -> torch.Tensor:
        """The case descriptor (1, len(descriptors.NAMES)) of one preprocessed case (C, *shape)
        from its segmentation logits on the same grid: image in HU where the configuration uses
        CT normalisation, the network's region probabilities, the configuration's spacing."""
        scheme = self.configuration_manager.normalization_schemes[0]
        properties = None
        if scheme == "CTNormalization":
            properties = self.plans_manager.foreground_intensity_properties_per_channel["0"]
        hu = ct_to_hu(np.asarray(data[0], dtype=np.float32), properties)
        whole, lesion = self.network.region_probabilities(logits.float()[None].cpu())
        values = case_descriptor(
            hu, whole[0, 0].numpy(), lesion[0, 0].numpy(), self.configuration_manager.spacing
        )
        return torch.as_tensor(values, dtype=torch.float32)[None]

    def case_logits_and_evidence(self, data) -> tuple[torch.Tensor, dict]:
        """Segmentation logits (C, *shape, float, CPU) and summed head evidence of one
        preprocessed case (C, *shape), one fold: the network as it stands (each sliding-window
        attempt starts from no evidence)."""
        logits = self.predict_sliding_window_return_logits(torch.as_tensor(np.asarray(data)))
        return logits.float().cpu(), self._evidence

    @torch.inference_mode()
    def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
        """Fold-averaged logits; subtype probabilities land in `last_subtype_probabilities`."""
        prediction = None
        probabilities = []
        for params in self.list_of_parameters:
            # one fold is already loaded by initialize_from_trained_model_folder
            if len(self.list_of_parameters) > 1:
                self.network.load_state_dict(params)
            self._evidence = None
            logits = self.predict_sliding_window_return_logits(data).to("cpu")
            prediction = logits if prediction is None else prediction + logits
            if self.classify:
                descriptor = None
                if self.network.case_stage.is_fitted:
                    descriptor = self.case_descriptor(data, logits)
                cls_logits = self.network.classify(self._evidence, descriptor)
                probabilities.append(torch.softmax(cls_logits.float(), -1)[0].cpu().numpy())
        if len(self.list_of_parameters) > 1:
            prediction /= len(self.list_of_parameters)
        self.last_subtype_probabilities = np.mean(probabilities, 0) if probabilities else None
        return prediction

    def predict_case(self, image_file: str | os.PathLike, output_truncated: str | None):
        """Preprocess, predict, export one case in this process; return subtype probabilities."""
        preprocessor = self.configuration_manager.preprocessor_class(verbose=False)
        data, _, properties = preprocessor.run_case(
            [os.fspath(image_file)], None, self.plans_manager, self.configuration_manager,
            self.dataset_json,
        )
        logits = self.predict_logits_from_preprocessed_data(torch.from_numpy(data))
        if output_truncated is not None:
            export_prediction_from_logits(
                logits, properties, self.configuration_manager, self.plans_manager,
                self.dataset_json, output_truncated, False, torch.get_num_threads(),
            )
        return self.last_subtype_probabilities


def load_predictor(
    model_folder: str | os.PathLike,
    folds: Sequence[int],
    checkpoint: str = "checkpoint_final.pth",
    device: str = "auto",
    tta: bool = True,
    step_size: float = 0.5,
    mirror_batch: int = 8,
) -> MultiTaskPredictor:
    check_prediction_checkpoint(checkpoint)
    ensure_ext_trainer_path()
    torch_device = resolve_device(device)
    predictor = MultiTaskPredictor(
        tile_step_size=step_size,
        use_gaussian=True,
        use_mirroring=tta,
        perform_everything_on_device=torch_device.type == "cuda",
        device=torch_device,
        verbose=False,
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(
        os.fspath(model_folder), [int(f) for f in folds], checkpoint
    )
    if not hasattr(predictor.network, "forward_multitask"):
        raise ValueError(
            f"{model_folder} holds a {predictor.trainer_name} model without a subtype head"
        )
    predictor.mirror_batch = max(1, mirror_batch)
    # channels-last 3-D convolutions are markedly faster on CPU (measured: docs/performance.md)
    predictor.channels_last = torch_device.type == "cpu"
    if predictor.channels_last:
        predictor.network.to(memory_format=torch.channels_last_3d)
    return predictor


def predict_cases(
    predictor: MultiTaskPredictor,
    images: Iterable[tuple[str, str | os.PathLike]],
    output_dir: str | os.PathLike,
    write_masks: bool = True,
) -> pd.DataFrame:
    """Masks `<case>.nii.gz` and `subtype_results.csv` in output_dir for (case_id, image) pairs.

    Without `write_masks` only the CSV is written (a classification-only pass). Each case logs one
    line with its subtype, time and ETA; on a terminal a progress bar shows the same ETA.
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    images = list(images)
    rows, durations = [], []
    file_ending = predictor.dataset_json["file_ending"]
    # disable=None: a bar only on a terminal, so a rule's log holds the per-case lines alone
    with logging_redirect_tqdm(), tqdm(images, desc="predicting", unit="case", disable=None) as bar:
        for index, (case_id, image) in enumerate(bar):
            start = time.perf_counter()
            try:
                probs = predictor.predict_case(
                    image, os.fspath(output_dir / case_id) if write_masks else None
                )
            except Exception as error:
                raise RuntimeError(
                    f"{image}: prediction of case {case_id} failed ({type(error).__name__}: {error})"
                ) from error
            durations.append(time.perf_counter() - start)
            rows.append(prediction_row(case_id, probs, file_ending))
            logger.info(case_line(index, len(images), case_id, rows[-1]["Subtype"], probs, durations[-1],
                                  eta_seconds(durations, len(images) - index - 1)))
    table = pd.DataFrame(rows)
    write_prediction_table(rows, output_dir, predictor.num_subtypes)
    return table


def split_images(raw_dataset_dir: str | os.PathLike, subtype_table: str | os.PathLike, split: str):
    """(case_id, image file) pairs of one split, from the raw dataset written by `dataset`."""
    cases = [case_id for case_id, _ in split_cases(subtype_table, split)]
    if not cases:
        raise ValueError(f"{subtype_table} lists no {split} cases")
    return [(c, raw_image(raw_dataset_dir, c, split)) for c in cases]


def predict_split(
    model_folder: str | os.PathLike,
    folds: Sequence[int],
    raw_dataset_dir: str | os.PathLike,
    subtype_table: str | os.PathLike,
    split: str,
    output_dir: str | os.PathLike,
    checkpoint: str = "checkpoint_final.pth",
    device: str = "auto",
    tta: bool = True,
    step_size: float = 0.5,
    threads: int = 1,
    mirror_batch: int = 8,
) -> pd.DataFrame:
    """Masks and subtypes for every case of a split (validation or test)."""
    torch.set_num_threads(max(1, threads))
    predictor = load_predictor(model_folder, folds, checkpoint, device, tta, step_size, mirror_batch)
    return predict_cases(predictor, split_images(raw_dataset_dir, subtype_table, split), output_dir)


def check_images(images: Iterable[tuple[str, str | os.PathLike]]) -> None:
    """ValueError naming every image whose header does not load or that is not one 3-D volume."""
    import nibabel as nib

    problems = []
    for _, image in images:
        try:
            shape = nib.load(image).shape
        except Exception as error:  # nibabel raises many types for damaged files
            problems.append(f"{image}: does not load as an image ({type(error).__name__}: {error})")
            continue
        if len(shape) != 3:
            problems.append(
                f"{image}: shape {tuple(shape)} is not one 3-D volume (one CT channel per file)"
            )
    if problems:
        raise ValueError("\n".join(problems))


def predict_images(
    model_root: str | os.PathLike,
    data_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    checkpoint: str = "checkpoint_final.pth",
    device: str = "auto",
    tta: bool = True,
    step_size: float = 0.5,
    threads: int = 1,
    mirror_batch: int = 8,
) -> pd.DataFrame:
    """Masks and subtypes for every `<case>_0000` image in a folder tree, with an imported model.

    `model_root` is where `import_model` put the model; every fold it holds is ensembled. Images
    are checked before the model is loaded.
    """
    model_folder = installed_model(model_root)
    folds = model_folds(model_folder, checkpoint)
    images = find_images(data_dir, model_file_ending(model_folder), recursive=True)
    check_images(images)
    logger.info("%d images from %s, model %s, folds %s", len(images), data_dir, model_folder, folds)
    torch.set_num_threads(max(1, threads))
    predictor = load_predictor(model_folder, folds, checkpoint, device, tta, step_size, mirror_batch)
    return predict_cases(predictor, images, output_dir)
