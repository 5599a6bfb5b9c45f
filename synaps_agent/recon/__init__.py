"""Reconstruction engines (pure math in torch): ptychography and tomography."""
