"""Tests of the benchmark scripts that other machines run (bench/)."""
