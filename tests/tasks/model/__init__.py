"""Tests of tasks/model: layers and models, the recipe, the training loop, progress, the epoch log."""
