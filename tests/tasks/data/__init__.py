"""Tests of tasks/data: the archive, the splits, their validation."""
