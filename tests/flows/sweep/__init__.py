"""Tests of flows/sweep: sweep files, the comparison table, workspaces, the sweep flows."""
