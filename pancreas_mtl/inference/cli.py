"""`pancreas-mtl-predict`: masks and subtypes for a folder of images, flags after nnUNetv2_predict.

    pancreas-mtl-predict -i IMAGES -o OUT -m MODEL_FOLDER [-f 0 1 ...] [-chk checkpoint_final.pth]
                         [-device auto|cpu|cuda] [--disable_tta] [--step_size 0.5]
                         [--classify_only] [--threads N]

MODEL_FOLDER is an nnU-Net results folder of one trainer/plans/configuration
(`.../DatasetXXX_Name/nnUNetTrainerMultiTask__nnUNetPlans__3d_fullres`). OUT receives
`<case>.nii.gz` masks and `subtype_results.csv`; with --classify_only only the CSV.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from ..layout import check_model_folder, find_images, model_file_ending
from ..nnunet_env import check_prediction_checkpoint

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pancreas-mtl-predict",
        description="Segmentation masks and lesion subtype from one sliding-window pass of a "
        "multi-task nnU-Net model.",
    )
    parser.add_argument("-i", required=True, help="input folder of <case>_0000.nii.gz images")
    parser.add_argument("-o", required=True, help="output folder (created if missing)")
    parser.add_argument("-m", required=True,
                        help="nnU-Net results folder of one trainer/plans/configuration")
    parser.add_argument("-f", nargs="+", type=int, default=[0],
                        help="folds to use; several are ensembled (default: 0)")
    parser.add_argument("-chk", default="checkpoint_final.pth",
                        help="checkpoint file name in each fold folder; only checkpoint_final.pth carries the "
                        "subtype head's case-level refit (default: checkpoint_final.pth)")
    parser.add_argument("-device", default="auto",
                        help="auto (CUDA when present), cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--disable_tta", action="store_true",
                        help="no test-time mirroring (faster, slightly less accurate)")
    parser.add_argument("--mirror_batch", type=int, default=8,
                        help="mirrored copies of a tile per forward pass (lower on small GPUs)")
    parser.add_argument("--step_size", "-step_size", type=float, default=0.5,
                        help="sliding-window step as a fraction of the patch (default: 0.5)")
    parser.add_argument("--classify_only", action="store_true",
                        help="write subtype_results.csv only, no masks")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: as nnUNetv2_predict, all CPUs on CPU, 1 on GPU)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 < args.step_size <= 1:
        parser.error(f"--step_size must be in (0, 1], got {args.step_size}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    try:
        check_prediction_checkpoint(args.chk)
    except ValueError as error:
        parser.error(str(error))
    try:
        check_model_folder(args.m, args.f, args.chk)
        images = find_images(args.i, model_file_ending(args.m))
    except FileNotFoundError as error:
        raise SystemExit(f"pancreas-mtl-predict: {error}") from None

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # torch is imported only after the arguments are known good: errors come back in a blink
    import torch

    from ..nnunet_env import default_threads, resolve_device
    from .predictor import load_predictor, predict_cases

    device = resolve_device(args.device)
    threads = args.threads if args.threads is not None else default_threads(device.type)
    torch.set_num_threads(max(1, threads))
    if device.type == "cuda" and torch.get_num_interop_threads() != 1:
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass  # settable once per process, before any parallel work; main() ran here before
    predictor = load_predictor(
        args.m, args.f, args.chk, str(device), tta=not args.disable_tta, step_size=args.step_size,
        mirror_batch=max(1, args.mirror_batch),
    )
    logger.info("%d cases from %s on %s, %d threads", len(images), args.i, device, threads)
    predict_cases(predictor, images, args.o, write_masks=not args.classify_only)


if __name__ == "__main__":
    sys.exit(main())
