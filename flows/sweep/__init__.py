"""Sweeps: many DVC experiments over the GPU pool's workers, and their comparison (``python -m flows.sweep``)."""
