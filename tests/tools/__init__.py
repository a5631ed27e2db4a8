"""Tests of tools/: the developer tools."""
