"""Metrics and report plots of the validation predictions."""
