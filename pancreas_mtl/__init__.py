"""Multi-task pancreas CT segmentation and lesion subtyping on nnU-Net v2."""
