"""Tests of flows/nightly: the nightly flow, its workspace clone and its summary."""
