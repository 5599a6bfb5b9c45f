"""Segmentation with calibrated uncertainty, and particle characterization."""
