"""Folder for nnU-Net's `nnUNet_extTrainer` variable: nnU-Net imports each module here by name."""
