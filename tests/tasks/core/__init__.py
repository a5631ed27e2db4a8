"""Tests of tasks/core: params, paths, devices, precision."""
