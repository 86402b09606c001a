"""Classification heads that read the shared nnU-Net encoder.

Every head works in two steps so that a case can be classified from many tiles:
`pool` turns one tile into additive evidence (weighted feature sums and weight totals), and
`classify` turns evidence summed over tiles and mirrors into logits. Summing evidence before
dividing pools over the whole volume: exactly so for input-resolution statistics of the lesion
and parenchyma; rims and deeper stages see each tile's own context, and overlapping tiles are
weighted by nnU-Net's Gaussian, as the logits are.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..layout import DEFAULT_NUM_SUBTYPES
from .descriptors import NAMES as DESCRIPTOR_NAMES

Evidence = dict[str, torch.Tensor]


def add_evidence(a: Evidence | None, b: Evidence) -> Evidence:
    """Sum two evidence dicts (None is the empty evidence)."""
    if a is None:
        return {k: v.clone() for k, v in b.items()}
    return {k: a[k] + b[k] for k in a}


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity forward; the backward gradient is multiplied by `factor` (0 detaches)."""
    if factor == 1:
        return x
    if factor == 0:
        return x.detach()
    return x * factor + x.detach() * (1 - factor)


def resize_weights(weights: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Average a (B, R, *spatial) weight map down to a feature map's spatial size."""
    if tuple(weights.shape[2:]) == tuple(size):
        return weights
    return F.adaptive_avg_pool3d(weights, tuple(size))


def full_precision(device_type: str):
    """A block where autocast is off, so the head's sums stay in fp32 inside an autocast region."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def weighted_moments(
    features: torch.Tensor, weights: torch.Tensor, spread_regions: Sequence[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per region: sum of w*x, sum of w*x^2 and sum of w, in fp32 whatever the autocast.

    features (B, C, *s), weights (B, R, *s) -> (B, R, C), (B, R', C), (B, R, 1), where the
    squares are summed for `spread_regions` only (R' of them; default all R). Under CUDA autocast
    a bmm runs in fp16, whose 65,504 sums of w*x^2 over a lesion's voxels easily pass.
    """
    with full_precision(features.device.type):
        f = features.flatten(2).float()
        w = weights.flatten(2).float().transpose(1, 2)
        s1 = torch.bmm(f, w).transpose(1, 2)
        w2 = w if spread_regions is None else w[:, :, list(spread_regions)]
        s2 = torch.bmm(f * f, w2).transpose(1, 2)
    return s1, s2, w.sum(1).unsqueeze(-1)


def finite_cases(evidence: Evidence) -> torch.Tensor:
    """(B,) True where every evidence value of the case is finite."""
    flags = [v.flatten(1).isfinite().all(1) for v in evidence.values()]
    return torch.stack(flags).all(0)


def region_weights(
    whole: torch.Tensor, lesion: torch.Tensor, width: int = 1
) -> torch.Tensor:
    """Lesion, lesion core, rim just outside its margin, and pancreatic parenchyma weights.

    Inputs (B, 1, *s) in [0, 1]; output (B, 4, *s). The core is the lesion eroded by `width`
    voxels: its spread is texture without the partial-volume margin.
    """
    k = 2 * width + 1
    dilated = F.max_pool3d(lesion, k, stride=1, padding=width)
    core = 1 - F.max_pool3d(1 - lesion, k, stride=1, padding=width)
    rim = (dilated - lesion).clamp_min(0)
    parenchyma = (whole - lesion).clamp_min(0)
    return torch.cat([lesion, core, rim, parenchyma], 1)


class RunningStandardizer(nn.Module):
    """Standardise features with running statistics, in training as in evaluation.

    Batch statistics of two patches are useless, yet descriptor entries differ by orders of
    magnitude (a lesion's intensity spread against its mean); the running mean and variance are
    buffers, so a checkpoint carries them to inference.
    """

    def __init__(self, n_features: int, momentum: float = 0.01, eps: float = 1e-5):
        super().__init__()
        self.momentum = momentum
        self.eps = eps
        self.register_buffer("running_mean", torch.zeros(n_features))
        self.register_buffer("running_var", torch.ones(n_features))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold a batch (B, F) into the running statistics (a plain average for the first batches).

        Rows with a non-finite value are left out: one NaN would stay in the statistics for good.
        """
        x = x[x.isfinite().all(1)].float()
        if not len(x):
            return
        self.num_updates += 1
        rate = max(1.0 / float(self.num_updates), self.momentum)
        self.running_mean.lerp_(x.mean(0), rate)
        # the unit prior keeps a weight of 1/(n+1): one case alone has no spread to divide by
        var_rate = max(1.0 / float(self.num_updates + 1), self.momentum)
        self.running_var.lerp_(((x - self.running_mean) ** 2).mean(0), var_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.running_mean) / (self.running_var + self.eps).sqrt()


class LesionPoolingHead(nn.Module):
    """Subtype from lesion-restricted statistics of the input and shallow encoder stages.

    For each chosen stage (-1 is the input image) the head pools the feature mean and spread
    inside the lesion and inside its core, the mean in a thin rim around it (margin), and the
    mean and spread in the pancreatic parenchyma (contrast, and the case's own noise level).
    Shallow stages keep the density, margin and texture that tell subtypes apart; deep stages
    mostly know where the organ is.
    """

    regions = ("lesion", "core", "rim", "parenchyma")
    # spread of the lesion, its core and the parenchyma: the lesion's texture against the case's own
    # noise level, which varies between scanners as much as it does between subtypes
    spread_regions = (0, 1, 3)
    stats_per_channel = 11

    def __init__(
        self,
        stage_channels: Sequence[int],
        stages: Sequence[int] = (-1, 0, 1),
        hidden: int = 64,
        dropout: float = 0.2,
        num_classes: int = DEFAULT_NUM_SUBTYPES,
    ):
        super().__init__()
        self.stages = tuple(int(s) for s in stages)
        self.channels = [int(stage_channels[s + 1]) for s in self.stages]
        n_in = self.stats_per_channel * sum(self.channels)
        # the image's own statistics (stage -1) also reach the output layer directly: a handful of
        # radiometric features that a few dozen cases can fit, beside the hidden layer's mix
        self.direct = slice(0, 0)
        if -1 in self.stages:
            i = self.stages.index(-1)
            start = sum(self.channels[:i])
            self.direct = slice(start, start + self.channels[i])
        n_direct = self.stats_per_channel * (self.direct.stop - self.direct.start)
        self.standardize = RunningStandardizer(n_in)
        self.classifier = nn.Sequential(
            nn.Linear(n_in, hidden),
            nn.LeakyReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden + n_direct, num_classes),
        )

    def pool(
        self,
        image: torch.Tensor,
        skips: Sequence[torch.Tensor],
        whole: torch.Tensor,
        lesion: torch.Tensor,
        voxel_weight: torch.Tensor | None = None,
    ) -> Evidence:
        """Evidence from one tile. whole/lesion: (B, 1, *s) region weights at input resolution.

        Computed in fp32 whatever the autocast (weights and sums alike).
        """
        maps = [image, *skips]
        s1, s2, totals = [], [], []
        with full_precision(image.device.type):
            weights = region_weights(whole.float(), lesion.float())
            if voxel_weight is not None:
                weights = weights * voxel_weight.float()
            for stage in self.stages:
                feats = maps[stage + 1].float()
                a, b, t = weighted_moments(
                    feats, resize_weights(weights, feats.shape[2:]), self.spread_regions
                )
                s1.append(a)
                s2.append(b)
                totals.append(t)
        return {
            "sum": torch.cat(s1, -1),
            "sum_sq": torch.cat(s2, -1),
            "weight": torch.cat(totals, -1),
        }

    def describe(self, evidence: Evidence, eps: float = 1e-3) -> torch.Tensor:
        """Fixed-length case descriptor from evidence: (B, 11 * sum(channels))."""
        widths = torch.tensor(self.channels, device=evidence["weight"].device)
        weight = torch.repeat_interleave(evidence["weight"], widths, dim=-1)
        mean = evidence["sum"] / (weight + eps)
        spread_idx = list(self.spread_regions)
        spread = evidence["sum_sq"] / (weight[:, spread_idx] + eps) - mean[:, spread_idx] ** 2
        lesion_std, core_std, parenchyma_std = (spread.clamp_min(0) + 1e-6).sqrt().unbind(1)
        lesion, core, rim, parenchyma = mean.unbind(1)
        return torch.cat(
            [
                lesion,
                lesion_std,
                core,
                core_std,
                rim,
                parenchyma,
                lesion - parenchyma,
                core - lesion,
                rim - lesion,
                parenchyma_std,
                lesion_std - parenchyma_std,
            ],
            -1,
        )

    def hidden_features(self, evidence: Evidence) -> torch.Tensor:
        """Activations feeding the output layer: (B, hidden + direct image statistics)."""
        descriptor = self.describe(evidence)
        if self.training:
            with_lesion = self.lesion_voxels(evidence) >= 1
            if with_lesion.any():
                self.standardize.update(descriptor[with_lesion].detach())
        standardized = self.standardize(descriptor)
        # the descriptor is statistic-major: (B, statistics, channels of all stages) flattened
        per_statistic = standardized.unflatten(1, (self.stats_per_channel, -1))
        direct = per_statistic[:, :, self.direct].flatten(1)
        return torch.cat([self.classifier[:-1](standardized), direct], 1)

    def classify(self, evidence: Evidence) -> torch.Tensor:
        return self.classifier[-1](self.hidden_features(evidence))

    @staticmethod
    def lesion_voxels(evidence: Evidence) -> torch.Tensor:
        """Lesion weight total per case (B,), at input resolution."""
        return evidence["weight"][:, 0, 0]


class AttentionFusionHead(nn.Module):
    """The public seed design: attention-weighted pooling of the last three encoder stages.

    Kept as an option for comparison. It looks at the whole tile, not at the lesion.
    """

    def __init__(
        self,
        stage_channels: Sequence[int],
        n_stages: int = 3,
        hidden: int = 128,
        dropout: float = 0.3,
        num_classes: int = DEFAULT_NUM_SUBTYPES,
    ):
        super().__init__()
        encoder_channels = list(stage_channels[1:])
        self.stages = tuple(range(len(encoder_channels) - n_stages, len(encoder_channels)))
        self.channels = [encoder_channels[s] for s in self.stages]
        self.attention = nn.ModuleList(nn.Conv3d(c, 1, kernel_size=1) for c in self.channels)
        n_in = sum(self.channels)
        self.classifier = nn.Sequential(
            nn.Linear(n_in, hidden),
            nn.LeakyReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def pool(self, image, skips, whole, lesion, voxel_weight=None) -> Evidence:
        sums, totals = [], []
        for conv, stage in zip(self.attention, self.stages):
            feats = skips[stage]
            att = torch.sigmoid(conv(feats))
            if voxel_weight is not None:
                att = att * resize_weights(voxel_weight, feats.shape[2:])
            a, _, t = weighted_moments(feats, att)
            sums.append(a[:, 0])
            totals.append(t[:, 0])
        # lesion voxels still count, so training can skip lesion-free patches like the other head
        lesion_total = lesion.float().flatten(1).sum(-1, keepdim=True)
        return {"sum": torch.cat(sums, -1), "weight": torch.cat([lesion_total, *totals], -1)}

    def hidden_features(self, evidence: Evidence, eps: float = 1e-3) -> torch.Tensor:
        widths = torch.tensor(self.channels, device=evidence["weight"].device)
        weight = torch.repeat_interleave(evidence["weight"][:, 1:], widths, dim=-1)
        return self.classifier[:-1](evidence["sum"] / (weight + eps))

    def classify(self, evidence: Evidence) -> torch.Tensor:
        return self.classifier[-1](self.hidden_features(evidence))

    @staticmethod
    def lesion_voxels(evidence: Evidence) -> torch.Tensor:
        return evidence["weight"][:, 0]


class CaseClassifier(nn.Module):
    """The subtype stage over the whole case: one linear layer on standardised inputs.

    Its inputs are the head's output-layer inputs (pooled over the case) followed by the case
    descriptor (`descriptors.NAMES`). It has no trainable parameters: the case-level refit fits it
    on the training cases as predicted (a class-weighted logistic regression, with the feature
    set and strength chosen by cross-validation on those cases) and stores the result in buffers,
    so checkpoints carry it and stock nnU-Net loads them unchanged. Until then it is not `fitted`
    and the head's own output layer classifies.
    """

    def __init__(self, n_head: int, n_descriptor: int, num_classes: int):
        super().__init__()
        self.n_head, self.n_descriptor = int(n_head), int(n_descriptor)
        n = self.n_head + self.n_descriptor
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("scale", torch.ones(n))
        self.register_buffer("weight", torch.zeros(num_classes, n))
        self.register_buffer("bias", torch.zeros(num_classes))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)

    def set(self, mean, scale, weight, bias) -> None:
        """Store a fitted stage (numpy or tensors; unused inputs have zero weight)."""
        for name, value in (("mean", mean), ("scale", scale), ("weight", weight), ("bias", bias)):
            buffer = getattr(self, name)
            buffer.copy_(torch.as_tensor(np.asarray(value), dtype=buffer.dtype))
        self.fitted.fill_(True)

    def forward(self, head_features: torch.Tensor, descriptor: torch.Tensor) -> torch.Tensor:
        x = torch.cat([head_features.float(), descriptor.to(head_features.device).float()], -1)
        return ((x - self.mean) / self.scale) @ self.weight.T + self.bias

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):  # fmt: skip
        # models trained before the stage existed load as not fitted: the head classifies
        if prefix + "fitted" not in state_dict:
            return
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


HEADS = {"lesion_pooling": LesionPoolingHead, "attention_fusion": AttentionFusionHead}


class MultiTaskUNet(nn.Module):
    """An nnU-Net encoder-decoder plus a subtype head on the same encoder.

    `forward(x)` returns segmentation logits only, so stock nnU-Net training loss, validation and
    `nnUNetv2_predict` work unchanged; the head is reached through `forward_multitask`, or through
    `forward` with regions or `multitask=True` (the way through a compiled module).
    """

    def __init__(self, unet: nn.Module, head: nn.Module, num_seg_outputs: int):
        super().__init__()
        self.encoder = unet.encoder
        self.decoder = unet.decoder
        self.head = head
        # part of the head: its state dict keys are the head's, beside the plain U-Net's
        head.add_module("case_stage", CaseClassifier(
            head.classifier[-1].in_features, len(DESCRIPTOR_NAMES), head.classifier[-1].out_features
        ))  # fmt: skip
        # two outputs are nnU-Net regions (whole, lesion) with sigmoid; three are softmax labels
        self.regions = num_seg_outputs == 2

    def forward(
        self,
        x: torch.Tensor,
        whole: torch.Tensor | None = None,
        lesion: torch.Tensor | None = None,
        voxel_weight: torch.Tensor | None = None,
        encoder_gradient: float = 1.0,
        multitask: bool = False,
    ):
        """Segmentation logits; with regions (or `multitask`), `forward_multitask`'s pair.

        Calling the module rather than `forward_multitask` lets the multi-task pass go through
        whatever wraps the network (torch.compile's OptimizedModule), as stock training does.
        """
        if whole is None and lesion is None and not multitask:
            return self.decoder(self.encoder(x))
        return self.forward_multitask(x, whole, lesion, voxel_weight, encoder_gradient)

    @property
    def case_stage(self) -> CaseClassifier:
        return self.head.case_stage

    def region_probabilities(self, seg_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(whole pancreas, lesion) probabilities, each (B, 1, *s), from full-resolution logits."""
        if self.regions:
            p = torch.sigmoid(seg_logits.float())
            return p[:, 0:1], p[:, 1:2]
        p = torch.softmax(seg_logits.float(), 1)
        return p[:, 1:3].sum(1, keepdim=True), p[:, 2:3]

    def forward_multitask(
        self,
        x: torch.Tensor,
        whole: torch.Tensor | None = None,
        lesion: torch.Tensor | None = None,
        voxel_weight: torch.Tensor | None = None,
        encoder_gradient: float = 1.0,
    ):
        """Segmentation logits and head evidence from one forward pass.

        Training passes the reference regions; `encoder_gradient` scales the classification
        gradient that reaches the shared encoder through them (0: the encoder learns from the
        segmentation loss alone, exactly as in stock nnU-Net). Without them the network's own
        prediction is used twice: binarised at 0.5 (as the reference masks are) and soft, the soft
        evidence (keys prefixed `soft_`) only serving cases where nothing passes 0.5.
        """
        skips = self.encoder(x)
        seg = self.decoder(skips)
        if whole is not None and lesion is not None:
            head_skips = [scale_gradient(s, encoder_gradient) for s in skips]
            return seg, self.head.pool(x, head_skips, whole, lesion, voxel_weight)
        full = seg[0] if isinstance(seg, (list, tuple)) else seg
        p_whole, p_lesion = self.region_probabilities(full.detach())
        evidence = self.head.pool(
            x, skips, (p_whole > 0.5).float(), (p_lesion > 0.5).float(), voxel_weight
        )
        soft = self.head.pool(x, skips, p_whole, p_lesion, voxel_weight)
        evidence.update({f"soft_{k}": v for k, v in soft.items()})
        return seg, evidence

    def hidden_features(self, evidence: Evidence) -> torch.Tensor:
        """The head's last hidden layer from (summed) evidence, soft regions where nothing is hard."""
        hard = {k: v for k, v in evidence.items() if not k.startswith("soft_")}
        features = self.head.hidden_features(hard)
        soft = {k[5:]: v for k, v in evidence.items() if k.startswith("soft_")}
        if soft:
            use_hard = self.head.lesion_voxels(hard) >= 1
            features = torch.where(use_hard[:, None], features, self.head.hidden_features(soft))
        return features

    def classify(self, evidence: Evidence, descriptor: torch.Tensor | None = None) -> torch.Tensor:
        """Subtype logits from (summed) evidence and, once the case stage is fitted, the case
        descriptor (B, len(descriptors.NAMES)), which it then requires."""
        features = self.hidden_features(evidence)
        if self.case_stage.is_fitted:
            if descriptor is None:
                raise ValueError("the fitted case stage needs the case descriptor")
            return self.case_stage(features, descriptor)
        return self.head.classifier[-1](features)


def stage_channels(unet: nn.Module, num_input_channels: int) -> list[int]:
    """Channels of the input followed by each encoder stage's output."""
    return [num_input_channels, *[int(c) for c in unet.encoder.output_channels]]
