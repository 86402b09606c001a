"""Whole-case sliding-window pass used for per-epoch validation on preprocessed cases."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .heads import Evidence, add_evidence


def tile_slices(shape: Sequence[int], patch: Sequence[int], step: float = 0.5) -> list[tuple]:
    """Tile origins covering `shape` (already at least `patch` in every axis)."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    steps = compute_steps_for_sliding_window(tuple(shape), tuple(patch), step)
    tiles = []
    for sx in steps[0]:
        for sy in steps[1]:
            for sz in steps[2]:
                tiles.append(
                    tuple(slice(s, s + p) for s, p in zip((sx, sy, sz), patch))
                )
    return tiles


@torch.no_grad()
def sliding_window_case(
    network, data: np.ndarray, patch_size: Sequence[int], device: torch.device, step: float = 0.5
) -> tuple[np.ndarray, Evidence]:
    """Stitched segmentation logits (C, *shape) and summed head evidence for one case."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    padded, slicer = pad_nd_image(np.asarray(data, dtype=np.float32), patch_size, "constant",
                                  {"constant_values": 0}, True, None)
    x = torch.from_numpy(padded)
    logits = None
    counts = torch.zeros((1, *padded.shape[1:]))
    evidence = None
    for tile in tile_slices(padded.shape[1:], patch_size, step):
        inp = x[(slice(None), *tile)][None].to(device)
        seg, ev = network.forward_multitask(inp)
        seg = seg[0] if isinstance(seg, (list, tuple)) else seg
        seg = seg[0].float().cpu()
        if logits is None:
            logits = torch.zeros((seg.shape[0], *padded.shape[1:]))
        logits[(slice(None), *tile)] += seg
        counts[(slice(None), *tile)] += 1
        evidence = add_evidence(evidence, {k: v.float() for k, v in ev.items()})
    logits = (logits / counts)[(slice(None), *slicer[1:])]
    return logits.numpy(), evidence
