"""Tests of tasks/reporting: classification scores and the report."""
