"""Scoring the trained models and writing the results: classification scores, figures, the report, page templates."""
