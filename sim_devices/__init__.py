"""Simulated imaging beamline: phantoms with ground truth behind real ophyd devices."""
